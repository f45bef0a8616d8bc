import * as tf from '@tensorflow/tfjs-core';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { SplitNetwork } from './bottleneck.js';

/**
 * Eigen-decomposition of a symmetric n x n matrix (row-major) by cyclic Jacobi rotations: eigenvalues
 * descending, eigenvectors as the columns of an n x n matrix. n is a layer's channel count (tens to hundreds).
 */
export function symmetricEigen(a: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const m = Float64Array.from(a);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += m[p * n + q] ** 2;
    if (off < 1e-22) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = m[p * n + q];
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (m[q * n + q] - m[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const mkp = m[k * n + p];
          const mkq = m[k * n + q];
          m[k * n + p] = c * mkp - s * mkq;
          m[k * n + q] = s * mkp + c * mkq;
        }
        for (let k = 0; k < n; k++) {
          const mpk = m[p * n + k];
          const mqk = m[q * n + k];
          m[p * n + k] = c * mpk - s * mqk;
          m[q * n + k] = s * mpk + c * mqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => m[j * n + j] - m[i * n + i]);
  const values = Float64Array.from(order, (i) => m[i * n + i]);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => {
    for (let k = 0; k < n; k++) vectors[k * n + dst] = v[k * n + src];
  });
  return { values, vectors };
}

/**
 * Starts the bottleneck at PCA of the split point's features over `samples` training images: the encoder
 * projects onto the top K principal directions of the channels (centred), the decoder maps back. PCA's
 * components are nested (the first c are the best c-dimensional linear code), which is exactly what a slimmable
 * encoder's first c channels need, so every width starts near its best linear bottleneck and distillation
 * only has to fine-tune through the quantizer and the tail.
 */
export function pcaInit(split: SplitNetwork, data: ImageSet, samples = 256): void {
  const b = split.bottleneck;
  const n = b.featureChannels;
  const k = b.maxChannels;
  const count = Math.min(samples, data.count);
  const { mean, cov } = tf.tidy(() => {
    const x = tf.tensor4d(toFloat(data, 0, count), [count, data.height, data.width, data.channels]);
    const f = tf.reshape(split.head(x), [-1, n]) as tf.Tensor2D;
    const mu = tf.mean(f, 0);
    const centred = tf.sub(f, mu);
    return { mean: mu.dataSync(), cov: tf.div(tf.matMul(centred, centred, true, false), f.shape[0]).dataSync() };
  });
  const { vectors } = symmetricEigen(Float64Array.from(cov), n);
  const enc = new Float32Array(n * k);
  for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) enc[i * k + j] = vectors[i * n + j];
  const encBias = new Float32Array(k);
  for (let j = 0; j < k; j++) for (let i = 0; i < n; i++) encBias[j] -= mean[i] * enc[i * k + j];
  const dec = new Float32Array(k * n);
  for (let j = 0; j < k; j++) for (let i = 0; i < n; i++) dec[j * n + i] = enc[i * k + j];
  b.setWeights([
    { name: 'bottleneck.encoder.kernel', shape: [1, 1, n, k], data: enc },
    { name: 'bottleneck.encoder.bias', shape: [k], data: encBias },
    { name: 'bottleneck.decoder.kernel', shape: [1, 1, k, n], data: dec },
    { name: 'bottleneck.decoder.bias', shape: [n], data: Float32Array.from(mean) },
  ]);
}
