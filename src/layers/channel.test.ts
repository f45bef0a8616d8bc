import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { assertClose } from './fixtures.js';
import { addChannelBias, channelAffine, channelMean, scaleChannels } from './channel.js';
import { onesWithGradient } from '../route/gates.js';

before(async () => {
  await initEngine('wasm');
});

// Below, at and above the size from which the depthwise-convolution form runs (1 << 16 elements).
const SHAPES = [[2, 3, 3, 4], [8, 16, 16, 32], [4096, 24]];

test('channelAffine: x * scale + shift per channel, as one depthwise convolution from its size threshold on', async () => {
  for (const shape of SHAPES) {
    const c = shape[shape.length - 1];
    const x = tf.randomNormal(shape, 0, 2, 'float32', 5);
    const scale = tf.randomNormal([c], 0, 1, 'float32', 6) as tf.Tensor1D;
    const shift = tf.randomNormal([c], 0, 1, 'float32', 7) as tf.Tensor1D;
    const before = tf.memory().numTensors;
    const info = await tf.profile(() => {
      const y = channelAffine(x, scale, shift);
      const z = channelAffine(x, scale);
      assert.deepEqual(y.shape, shape);
      tf.tidy(() => {
        assertClose(y, tf.add(tf.mul(x, scale), shift), 1e-6);
        assertClose(z, tf.mul(x, scale), 1e-6);
      });
      tf.dispose([y, z]);
    });
    assert.equal(tf.memory().numTensors, before);
    const large = x.size >= 1 << 16;
    assert.equal(info.kernelNames.includes('FusedDepthwiseConv2D'), large, `shape ${shape}: kernels ${info.kernelNames}`);
    tf.dispose([x, scale, shift]);
  }
});

test('addChannelBias: values and gradients of x and the bias equal the broadcasting add, with no leak', async () => {
  for (const shape of SHAPES) {
    const c = shape[shape.length - 1];
    const x = tf.randomNormal(shape, 0, 2, 'float32', 8);
    const bias = tf.randomNormal([c], 0, 1, 'float32', 9) as tf.Tensor1D;
    const r = tf.randomNormal(shape, 0, 1, 'float32', 10);
    const before = tf.memory().numTensors;
    const loss = (f: (a: tf.Tensor, b: tf.Tensor1D) => tf.Tensor) => (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a, b as tf.Tensor1D), r));
    const info = await tf.profile(() => {
      tf.tidy(() => {
        assertClose(addChannelBias(x, bias), tf.add(x, bias), 1e-6);
        const ours = tf.grads(loss(addChannelBias))([x, bias]);
        const theirs = tf.grads(loss((a, b) => tf.add(a, b)))([x, bias]);
        assertClose(ours[0], theirs[0], 1e-6);
        assertClose(ours[1], theirs[1], 1e-4);
      });
    });
    assert.equal(tf.memory().numTensors, before);
    const large = shape.length === 4 && x.size >= 1 << 16;
    assert.equal(info.kernelNames.includes('FusedDepthwiseConv2D'), large, `shape ${shape}: kernels ${info.kernelNames}`);
    // The bias gradient of an NHWC tensor is an average pool, never wasm's Sum over the leading axes.
    assert.equal(info.kernelNames.includes('AvgPool'), shape.length === 4, `shape ${shape}: kernels ${info.kernelNames}`);
    tf.dispose([x, bias, r]);
  }
});

test('channelMean: the mean over every axis but the last, 4-D and 2-D', () => {
  for (const shape of [[3, 5, 7, 6], [9, 6]]) {
    tf.tidy(() => {
      const x = tf.randomNormal(shape, 1, 2, 'float32', 11);
      assertClose(channelMean(x), tf.mean(x, shape.slice(0, -1).map((_, i) => i)), 1e-5);
    });
  }
});

test('scaleChannels: a straight-through factor is h in value, with the gradients of h times the factor as a tensor; a tensor factor multiplies', () => {
  const [rows, k, width, G] = [5, 3, 2, 4];
  const h = tf.randomNormal([rows, 4, 3, k * width], 0, 1, 'float32', 12);
  const q = tf.randomUniform([rows, G], 0.1, 0.9, 'float32', 13) as tf.Tensor2D;
  const r = tf.randomNormal(h.shape, 0, 1, 'float32', 14);
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    // The factor as a tensor: ones with q's gradient for the first k groups, each repeated over its channels.
    const asTensor = (a: tf.Tensor, p: tf.Tensor) =>
      tf.mul(a, tf.reshape(tf.tile(tf.reshape(onesWithGradient(tf.slice(p, [0, 0], [rows, k])), [rows, k, 1]), [1, 1, width]), [rows, 1, 1, k * width]));
    const through = (a: tf.Tensor, p: tf.Tensor) => scaleChannels(a, { q: p as tf.Tensor2D, k, width });
    assertClose(through(h, q), h, 1e-7);
    const loss = (f: (a: tf.Tensor, p: tf.Tensor) => tf.Tensor) => (a: tf.Tensor, p: tf.Tensor) => tf.sum(tf.mul(f(a, p), r));
    const ours = tf.grads(loss(through))([h, q]);
    const theirs = tf.grads(loss(asTensor))([h, q]);
    assertClose(ours[0], theirs[0], 1e-6);
    assertClose(ours[1], theirs[1], 1e-4);
    assert.ok(tf.max(tf.abs(ours[1])).dataSync()[0] > 0.1, 'q gets a gradient');
    const mask = tf.tensor4d(Float32Array.from({ length: rows * k * width }, (_, i) => i % 3 === 0 ? 0 : 1), [rows, 1, 1, k * width]);
    assertClose(scaleChannels(h, mask), tf.mul(h, mask), 1e-7);
    assert.equal(scaleChannels(h), h);
    assert.throws(() => scaleChannels(h, { q, k: 2, width }), /2 groups of 2 channels/);
  });
  assert.equal(tf.memory().numTensors, before);
  tf.dispose([h, q, r]);
});
