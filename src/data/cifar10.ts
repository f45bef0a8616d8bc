import { promises as fsp } from 'node:fs';
import { DynnError } from '../util/errors.js';
import { applyLimits, checkLimits, dataDirSource, findFiles, searchDirs } from './common.js';
import type { Dataset, ImageSet, LoadOptions } from './types.js';

/** CIFAR-10 class names, by label. */
export const CIFAR10_CLASSES = [
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
];

const SIDE = 32;
const PIXELS = SIDE * SIDE;
const RECORD = 1 + 3 * PIXELS;
const TRAIN_FILES = [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`);
const TEST_FILE = 'test_batch.bin';

/** Reads one binary batch file (records of 1 label byte + 3072 CHW bytes) and converts it to HWC. */
async function readBatch(file: string): Promise<{ images: Uint8Array; labels: Uint8Array }> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(file);
  } catch (err) {
    throw new DynnError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (raw.length === 0 || raw.length % RECORD !== 0) {
    throw new DynnError(
      `${file}: ${raw.length} bytes is not a positive multiple of the ${RECORD}-byte CIFAR-10 record ` +
        '(truncated, or not a CIFAR-10 binary batch)',
    );
  }
  const count = raw.length / RECORD;
  const images = new Uint8Array(count * 3 * PIXELS);
  const labels = new Uint8Array(count);
  for (let r = 0; r < count; r++) {
    const base = r * RECORD;
    const label = raw[base];
    if (label >= CIFAR10_CLASSES.length) {
      throw new DynnError(`${file}: record ${r} has label ${label}, out of range (10 classes)`);
    }
    labels[r] = label;
    const out = r * 3 * PIXELS;
    for (let c = 0; c < 3; c++) {
      const plane = base + 1 + c * PIXELS;
      for (let p = 0; p < PIXELS; p++) images[out + p * 3 + c] = raw[plane + p];
    }
  }
  return { images, labels };
}

/** Concatenates batches into one 32x32x3 ImageSet. */
function concat(batches: { images: Uint8Array; labels: Uint8Array }[]): ImageSet {
  const count = batches.reduce((n, b) => n + b.labels.length, 0);
  const images = new Uint8Array(count * 3 * PIXELS);
  const labels = new Uint8Array(count);
  let at = 0;
  for (const b of batches) {
    images.set(b.images, at * 3 * PIXELS);
    labels.set(b.labels, at);
    at += b.labels.length;
  }
  return { images, labels, count, height: SIDE, width: SIDE, channels: 3 };
}

/**
 * Loads CIFAR-10, binary version (50,000 train / 10,000 test, 32x32x3, converted from CHW to HWC), from
 * `data_batch_1.bin`..`data_batch_5.bin` and `test_batch.bin` in `opts.dataDir` or `DYNN_DATA`, or their
 * `cifar-10-batches-bin` subfolder.
 */
export async function loadCifar10(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  const dirs = searchDirs(opts, 'cifar-10-batches-bin');
  const found = await findFiles(dirs, [...TRAIN_FILES, TEST_FILE].map((f) => [f]));
  if ('report' in found) {
    const looked =
      found.report.length > 0
        ? [`Looked in (from ${dataDirSource(opts)}):`, ...found.report.map((line) => `  ${line}`)]
        : ['No data directory given (neither --data-dir nor DYNN_DATA is set).'];
    throw new DynnError(
      [
        'cifar10 data not found.',
        ...looked,
        'Download the binary version from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, extract it, and',
        'pass --data-dir DIR or set DYNN_DATA=DIR (DIR holding the .bin files or their cifar-10-batches-bin folder).',
      ].join('\n'),
    );
  }
  const batches = await Promise.all(found.files.map(readBatch));
  const ds: Dataset = {
    name: 'cifar10',
    numClasses: CIFAR10_CLASSES.length,
    classNames: [...CIFAR10_CLASSES],
    train: concat(batches.slice(0, TRAIN_FILES.length)),
    test: concat(batches.slice(TRAIN_FILES.length)),
  };
  return applyLimits(ds, opts);
}
