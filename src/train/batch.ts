import type { ImageSet } from '../data/types.js';

/** Gathers the samples `indices` of a set as floats in [0, 1] (NHWC) and their labels. */
export function gatherBatch(set: ImageSet, indices: ArrayLike<number>, out: Float32Array, labels: Int32Array): number {
  const per = set.height * set.width * set.channels;
  const n = indices.length;
  for (let i = 0; i < n; i++) {
    const s = indices[i];
    const src = s * per;
    const dst = i * per;
    for (let j = 0; j < per; j++) out[dst + j] = set.images[src + j] / 255;
    labels[i] = set.labels[s];
  }
  return n;
}
