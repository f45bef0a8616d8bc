import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { exportOnnx } from './export.js';
import { randomizeStatistics } from './fixtures.js';

await initEngine('wasm');

// Narrow versions of the DenseNet and ResNet-38 families: the structure the export must handle, small sizes.
const CASES: [string, Record<string, unknown>][] = [
  ['densenet-w', { growth: 8, units: 2, groups: 4, inputShape: [12, 12, 1] }],
  ['densenet41', { growth: 4, groups: 2, inputShape: [8, 8, 3] }],
  ['resnet38', { widths: [8, 8, 16], groups: 4, inputShape: [12, 12, 3] }],
];

for (const [name, args] of CASES) {
  test(`${name}: ONNX Runtime matches TF.js at every level within 1e-4 (index-list channel selections as constant Gathers)`, async () => {
    const model = createModel(name, args);
    randomizeStatistics(model, 5);
    const { bytes, metadata } = exportOnnx(model);
    const s = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
    const [h, w, c] = model.inputShape;
    const x = tf.randomNormal([3, h, w, c], 0, 1, 'float32', 3) as tf.Tensor4D;
    const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
    const seen = new Set<string>();
    for (const lv of metadata.levels) {
      const y = model.predict(x, lv.u);
      const ref = y.dataSync() as Float32Array;
      y.dispose();
      const out = await s.run({ images: new ort.Tensor('float32', nchw, [3, c, h, w]), u: new ort.Tensor('float32', Float32Array.of(lv.u), []) });
      const got = out.scores.data as Float32Array;
      const scale = Math.max(1, ...Array.from(ref, Math.abs));
      const err = Math.max(...Array.from(ref, (v, i) => Math.abs(v - got[i]))) / scale;
      assert.ok(err < 1e-4, `${name} level ${lv.level}: error ${err}`);
      seen.add(Array.from(ref.slice(0, 4), (v) => v.toFixed(3)).join());
    }
    assert.ok(seen.size > 1, 'levels give different scores');
    await s.release();
    x.dispose();
    model.dispose();
  });
}

test('densenet-dw does not export: its depth plan changes within a width level', () => {
  const model = createModel('densenet-dw', { growth: 4, units: 2, groups: 2, inputShape: [8, 8, 1] });
  assert.throws(() => exportOnnx(model), /cannot export level \d+: its plan changes/);
  model.dispose();
});
