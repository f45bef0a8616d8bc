import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { checkLimit, checkLimits } from './common.js';
import type { Dataset, ImageSet, LoadOptions } from './types.js';

/** Shape and seed of a generated set; see {@link makeSynthetic}. */
export interface SyntheticOptions {
  count: number;
  height?: number;
  width?: number;
  channels?: number;
  numClasses?: number;
  seed?: number;
}

/** Default sizes of the `synthetic` data set's splits. */
export const SYNTHETIC_DEFAULTS = { train: 2000, test: 500 };

const BLOBS = 3;
const MAX_SHIFT = 2;
const NOISE = 0.1;

/**
 * One smooth pattern per class: a few Gaussian blobs with per-channel strengths, values in [0, 1], HWC.
 * Drawn from a fixed seed so that every set of a given shape shares the same classes, whatever its seed.
 */
function prototypes(height: number, width: number, channels: number, numClasses: number): Float32Array[] {
  const rng = new Rng(0x5e7);
  const side = Math.min(height, width);
  const out: Float32Array[] = [];
  for (let k = 0; k < numClasses; k++) {
    const p = new Float32Array(height * width * channels);
    for (let b = 0; b < BLOBS; b++) {
      const cy = (0.2 + 0.6 * rng.next()) * height;
      const cx = (0.2 + 0.6 * rng.next()) * width;
      const sigma = (0.07 + 0.08 * rng.next()) * side;
      const amp = Array.from({ length: channels }, () => 0.4 + 0.6 * rng.next());
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const g = Math.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma * sigma));
          for (let c = 0; c < channels; c++) p[(y * width + x) * channels + c] += amp[c] * g;
        }
      }
    }
    for (let i = 0; i < p.length; i++) p[i] = Math.min(1, p[i]);
    out.push(p);
  }
  return out;
}

/** A standard normal deviate (Box-Muller). */
function gaussian(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
}

/**
 * Generates `count` labelled images (default 28x28x1, 10 classes): each is its class's blurred blob pattern,
 * shifted by up to 2 pixels, scaled in brightness and with Gaussian noise added. Classes are balanced and
 * shuffled. The same options give the same bytes; the class patterns depend only on the shape.
 */
export function makeSynthetic(opts: SyntheticOptions): ImageSet {
  const { height = 28, width = 28, channels = 1, numClasses = 10, seed = 0 } = opts;
  checkLimit(opts.count, 'count');
  checkLimit(height, 'height');
  checkLimit(width, 'width');
  checkLimit(channels, 'channels');
  checkLimit(numClasses, 'numClasses');
  if (numClasses > 256) throw new DynnError(`numClasses must be at most 256, got ${numClasses}`);
  const { count } = opts;
  const protos = prototypes(height, width, channels, numClasses);
  const rng = new Rng(seed);
  const order = rng.permutation(count);
  const size = height * width * channels;
  const images = new Uint8Array(count * size);
  const labels = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const label = order[i] % numClasses;
    labels[i] = label;
    const proto = protos[label];
    const dy = rng.int(2 * MAX_SHIFT + 1) - MAX_SHIFT;
    const dx = rng.int(2 * MAX_SHIFT + 1) - MAX_SHIFT;
    const gain = 0.8 + 0.3 * rng.next();
    for (let y = 0; y < height; y++) {
      const sy = y - dy;
      for (let x = 0; x < width; x++) {
        const sx = x - dx;
        const inside = sy >= 0 && sy < height && sx >= 0 && sx < width;
        for (let c = 0; c < channels; c++) {
          const v = (inside ? gain * proto[(sy * width + sx) * channels + c] : 0) + NOISE * gaussian(rng);
          images[i * size + (y * width + x) * channels + c] = Math.round(255 * Math.min(1, Math.max(0, v)));
        }
      }
    }
  }
  return { images, labels, count, height, width, channels };
}

/**
 * The `synthetic` data set: 10 classes of 28x28x1 {@link makeSynthetic} images, `trainLimit` (default 2000)
 * train and `testLimit` (default 500) test samples, all determined by `seed` (default 0).
 */
export async function loadSynthetic(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new DynnError(`seed must be an integer, got ${String(seed)}`);
  const numClasses = 10;
  return {
    name: 'synthetic',
    numClasses,
    classNames: Array.from({ length: numClasses }, (_, k) => `pattern ${k}`),
    train: makeSynthetic({ count: opts.trainLimit ?? SYNTHETIC_DEFAULTS.train, numClasses, seed }),
    // A different stream from the train set's so test samples are new draws of the same classes.
    test: makeSynthetic({ count: opts.testLimit ?? SYNTHETIC_DEFAULTS.test, numClasses, seed: seed ^ 0x7e57 }),
  };
}
