import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { assertClose } from './fixtures.js';
import { batchNormMoments, batchNormTrain } from './norm.js';

before(async () => {
  await initEngine('wasm');
});

/** TF.js's own BatchNorm and its autograd: the independent reference. */
function reference(x: tf.Tensor, g: tf.Tensor1D, b: tf.Tensor1D, eps: number) {
  const axes = x.shape.slice(0, -1).map((_, i) => i);
  const { mean, variance } = tf.moments(x, axes);
  return tf.batchNorm(x, mean, variance, b, g, eps);
}

test('training BatchNorm: values and gradients (x, gamma, beta) match TF.js autograd, 4-D and 2-D', () => {
  // The last two are large enough for the depthwise-convolution form of channelAffine (channel.ts).
  for (const shape of [[4, 6, 5, 8], [16, 12], [8, 16, 16, 32], [2048, 40]]) {
    tf.tidy(() => {
      const c = shape[shape.length - 1];
      const x = tf.add(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 1), 3), 1.5);
      const g = tf.randomUniform([c], 0.5, 2, 'float32', 2) as tf.Tensor1D;
      const b = tf.randomNormal([c], 0, 1, 'float32', 3) as tf.Tensor1D;
      const r = tf.randomNormal(shape, 0, 1, 'float32', 4);
      const loss = (f: typeof reference) => (xi: tf.Tensor, gi: tf.Tensor, bi: tf.Tensor) =>
        tf.sum(tf.mul(f(xi, gi as tf.Tensor1D, bi as tf.Tensor1D, 1e-5), r));
      assertClose(batchNormTrain(x, g, b, 1e-5), reference(x, g, b, 1e-5));
      const ours = tf.grads(loss(batchNormTrain))([x, g, b]);
      const theirs = tf.grads(loss(reference))([x, g, b]);
      ours.forEach((t, i) => assertClose(t, theirs[i], 1e-3));
      const m = batchNormMoments(x, g, b, 1e-5);
      const axes = shape.slice(0, -1).map((_, i) => i);
      const ref = tf.moments(x, axes);
      assertClose(tf.tensor1d(m.mean), ref.mean);
      assertClose(tf.tensor1d(m.variance), ref.variance);
      assertClose(m.y, reference(x, g, b, 1e-5));
    });
  }
});

test('training BatchNorm of one sample (a part of one row): variance exactly 0, the output beta, no gradient for gamma', () => {
  tf.tidy(() => {
    const g = tf.tensor1d([1.5, 2, 0.5]);
    const b = tf.tensor1d([0.25, -1, 3]);
    for (const x of [tf.tensor2d([[100, -3.7, 0.1]]), tf.tensor4d([[[[37.3, -2, 1e3]]]])]) {
      const m = batchNormMoments(x, g, b, 1e-5);
      assert.deepEqual(Array.from(m.variance), [0, 0, 0]);
      assertClose(m.y, tf.broadcastTo(b, x.shape), 1e-6);
      const [, dg] = tf.grads((xi: tf.Tensor, gi: tf.Tensor) => tf.sum(tf.mul(batchNormTrain(xi, gi as tf.Tensor1D, b, 1e-5), tf.randomNormal(x.shape, 0, 1, 'float32', 6))))([x, g]);
      assert.deepEqual(Array.from(dg.dataSync()), [0, 0, 0]);
    }
  });
});

test('training BatchNorm leaves no tensor behind, forward and backward', () => {
  const x = tf.randomNormal([6, 5, 5, 4], 0, 1, 'float32', 5);
  const g = tf.ones([4]) as tf.Tensor1D;
  const b = tf.zeros([4]) as tf.Tensor1D;
  const before = tf.memory().numTensors;
  batchNormTrain(x, g, b, 1e-5).dispose();
  const gs = tf.grads((xi: tf.Tensor, gi: tf.Tensor, bi: tf.Tensor) => tf.sum(tf.square(batchNormTrain(xi, gi as tf.Tensor1D, bi as tf.Tensor1D, 1e-5))))([x, g, b]);
  tf.dispose(gs);
  assert.equal(tf.memory().numTensors, before);
  tf.dispose([x, g, b]);
});
