import type { ImageSet } from './types.js';

const BYTE_TO_UNIT = new Float32Array(256).map((_, i) => i / 255);

/** Bytes per sample (height * width * channels). */
export function sampleSize(set: ImageSet): number {
  return set.height * set.width * set.channels;
}

/**
 * Scales samples [start, start + count) to floats in [0, 1], NHWC. Writes into `out` when given (it must hold
 * at least count * sampleSize values) and returns a view of exactly that many values.
 */
export function toFloat(set: ImageSet, start: number, count: number, out?: Float32Array): Float32Array {
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > set.count) {
    throw new RangeError(`toFloat: samples [${start}, ${start + count}) out of range for a set of ${set.count}`);
  }
  const size = sampleSize(set);
  const n = count * size;
  if (out !== undefined && out.length < n) {
    throw new RangeError(`toFloat: output holds ${out.length} values, ${n} needed`);
  }
  const dst = out === undefined ? new Float32Array(n) : out.subarray(0, n);
  const src = set.images.subarray(start * size, start * size + n);
  for (let i = 0; i < n; i++) dst[i] = BYTE_TO_UNIT[src[i]];
  return dst;
}

/** A new set holding copies of the samples at `indices`, in that order. */
export function subset(set: ImageSet, indices: Int32Array | number[]): ImageSet {
  const size = sampleSize(set);
  const images = new Uint8Array(indices.length * size);
  const labels = new Uint8Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (!Number.isInteger(i) || i < 0 || i >= set.count) {
      throw new RangeError(`subset: index ${i} out of range for a set of ${set.count}`);
    }
    images.set(set.images.subarray(i * size, (i + 1) * size), k * size);
    labels[k] = set.labels[i];
  }
  return { images, labels, count: indices.length, height: set.height, width: set.width, channels: set.channels };
}

/** A copy of `set` whose images and labels live in SharedArrayBuffers, for sharing with worker threads. */
export function allocShared(set: ImageSet): ImageSet {
  const size = sampleSize(set) * set.count;
  const images = new Uint8Array(new SharedArrayBuffer(size));
  images.set(set.images.subarray(0, size));
  const labels = new Uint8Array(new SharedArrayBuffer(set.count));
  labels.set(set.labels.subarray(0, set.count));
  return { ...set, images, labels };
}

/** A stream's per-frame fields for samples [start, end) (views); none for other sets. */
function frameFields(set: ImageSet, start: number, end: number): Pick<ImageSet, 'sequence' | 'difficulty'> {
  return {
    ...(set.sequence && { sequence: set.sequence.subarray(start, end) }),
    ...(set.difficulty && { difficulty: set.difficulty.subarray(start, end) }),
  };
}

/** The last n samples (a view, no copy): a validation split held out from training. */
export function tail(set: ImageSet, n: number): ImageSet {
  const start = Math.max(0, set.count - n);
  const per = sampleSize(set);
  return { ...set, ...frameFields(set, start, set.count), images: set.images.subarray(start * per), labels: set.labels.subarray(start), count: set.count - start };
}

/** The first `n` samples of `set` as views (no copy); the whole set when it has no more than `n`. */
export function head(set: ImageSet, n: number): ImageSet {
  if (n >= set.count) return set;
  return { ...set, ...frameFields(set, 0, n), images: set.images.subarray(0, n * sampleSize(set)), labels: set.labels.subarray(0, n), count: n };
}
