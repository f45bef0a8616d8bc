import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { initEngine } from '../engine/backend.js';
import { SqueezeExcite } from './se.js';
import { layerClasses, layerFromConfig } from './layer.js';
import { fullSel } from './select.js';
import { runOps, fuseOps } from '../models/subnet.js';

before(async () => {
  await initEngine('wasm');
});

/** Squeeze-and-excitation in plain loops over the channels `idx` of the layer's full-width weights. */
function reference(x: number[][][][], idx: number[], w: Record<string, number[] | number[][]>): number[][][][] {
  const w1 = w['se.reduce.kernel'] as number[][];
  const b1 = w['se.reduce.bias'] as number[];
  const w2 = w['se.expand.kernel'] as number[][];
  const b2 = w['se.expand.bias'] as number[];
  return x.map((img) => {
    const hw = img.length * img[0].length;
    const pooled = idx.map((_, i) => img.flat().reduce((a, px) => a + px[i], 0) / hw);
    const hidden = b1.map((b, j) => Math.max(0, b + idx.reduce((a, c, i) => a + pooled[i] * w1[c][j], 0)));
    const gate = idx.map((c) => 1 / (1 + Math.exp(-(b2[c] + hidden.reduce((a, h, j) => a + h * w2[j][c], 0)))));
    return img.map((row) => row.map((px) => px.map((v, i) => v * gate[i])));
  });
}

test('SqueezeExcite on the channels present equals a loop reference; freeze equals call; cost; registered', () => {
  const layer = new SqueezeExcite('se', { ratio: 4 });
  layer.build([4, 5, 8], 2);
  assert.equal(layer.hidden, 2);
  for (const w of layer.weights()) if (w.name.endsWith('bias')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 0.5, 'float32', 3));
  const weights = Object.fromEntries(layer.weights().map((w) => [w.name, w.variable.arraySync() as number[]]));
  for (const sel of [fullSel(8), { full: 8, count: 3, index: Int32Array.from([1, 4, 6]) }]) {
    const idx = sel.index ? Array.from(sel.index) : Array.from({ length: 8 }, (_, i) => i);
    const x = tf.randomNormal([2, 4, 5, sel.count], 0, 1, 'float32', 5);
    tf.tidy(() => {
      const { y, sel: out } = layer.call(x, sel);
      assert.equal(out, sel);
      const ref = tf.tensor(reference(x.arraySync() as number[][][][], idx, weights));
      assert.ok(tf.max(tf.abs(tf.sub(y, ref))).dataSync()[0] < 1e-5);
      const frozen = runOps(fuseOps(layer.freeze(sel)), x);
      assert.ok(tf.max(tf.abs(tf.sub(frozen, y))).dataSync()[0] < 1e-5);
    });
    assert.deepEqual(layer.cost(sel), [{ name: 'se', kind: 'SqueezeExcite', macs: 2 * sel.count * 2 + 20 * sel.count, params: 2 * sel.count * 2 + 2 + sel.count }]);
    x.dispose();
  }
  assert.ok(layerClasses.has('SqueezeExcite'));
  assert.deepEqual(layerFromConfig(layer.getConfig()).getConfig(), layer.getConfig());
  layer.weights().forEach((w) => w.variable.dispose());
});
