import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { assertClose } from './fixtures.js';
import { addChannelBias, channelAffine, channelMean } from './channel.js';

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
