import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { measureLatencies, median } from './latency.js';

before(async () => {
  await initEngine('wasm');
});

test('median of odd and even lists', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});

test('measureLatencies: one median per operating point, every subnet and input freed', () => {
  const model = createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32 });
  const before = tf.memory().numTensors;
  const ms = measureLatencies(model, [0.25, 0.5, 1], 4, { reps: 3, warmup: 1 });
  assert.equal(ms.length, 3);
  assert.ok(ms.every((m) => Number.isFinite(m) && m > 0), String(ms));
  assert.equal(tf.memory().numTensors, before);
  model.dispose();
});
