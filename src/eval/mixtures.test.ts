import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { hasMixtures, mixtureStats } from './mixtures.js';

before(async () => {
  await initEngine('wasm');
});

test('mixtureStats: per layer, entropies within [0, log E], class-by-expert means that agree with the overall mean', () => {
  const data = makeSynthetic({ count: 37, seed: 1 });
  const small = { widths: [4, 4, 8, 8], hidden: 8 };
  const model = createModel('vgg-condconv', { ...small, experts: 3, routing: 'softmax', temperature: 0.2 });
  const plain = createModel('vgg-w', { ...small, groups: 2 });
  const before = tf.memory().numTensors;
  const s = mixtureStats(model, data, { batchSize: 10 });
  assert.equal(tf.memory().numTensors, before);
  assert.ok(hasMixtures(model) && !hasMixtures(plain));
  assert.deepEqual(s.layers.map((l) => l.layer), ['c2.conv', 'c3.conv', 'c4.conv']);
  const counts = Array.from({ length: 10 }, (_, c) => data.labels.filter((y) => y === c).length);
  for (const l of s.layers) {
    assert.ok(l.meanEntropy > 0 && l.meanEntropy <= Math.log(3) + 1e-9, `${l.layer}: ${l.meanEntropy}`);
    assert.equal(l.maxEntropy, Math.log(3));
    // Softmax weights sum to 1 for every sample, so every class row does.
    for (const row of l.perClass) assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-5);
    l.meanWeights.forEach((m, j) => {
      const fromClasses = l.perClass.reduce((a, row, c) => a + row[j] * counts[c], 0) / data.count;
      assert.ok(Math.abs(fromClasses - m) < 1e-6);
    });
  }
  assert.equal(s.count, 37);
  model.dispose();
  plain.dispose();
  // One expert: every sample puts all its weight on it.
  const one = createModel('vgg-condconv', { ...small, experts: 1, routing: 'softmax' });
  for (const l of mixtureStats(one, data).layers) assert.equal(l.meanEntropy, 0);
  one.dispose();
});
