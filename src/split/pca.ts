import * as tf from '@tensorflow/tfjs-core';
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { SplitNetwork } from './bottleneck.js';

/**
 * Eigen-decomposition of a symmetric n x n matrix (row-major), by ml-matrix (Householder tridiagonalization
 * and QL): eigenvalues descending, eigenvectors as the columns of an n x n matrix.
 */
export function symmetricEigen(a: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const rows = Array.from({ length: n }, (_, i) => Array.from(a.subarray(i * n, (i + 1) * n)));
  const evd = new EigenvalueDecomposition(new Matrix(rows), { assumeSymmetric: true });
  const v = evd.eigenvectorMatrix;
  const order = evd.realEigenvalues.map((value, i) => ({ value, i })).sort((x, y) => y.value - x.value);
  const values = Float64Array.from(order, (o) => o.value);
  const vectors = new Float64Array(n * n);
  order.forEach(({ i: src }, dst) => {
    for (let k = 0; k < n; k++) vectors[k * n + dst] = v.get(k, src);
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
