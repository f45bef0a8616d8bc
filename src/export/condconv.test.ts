import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { exportOnnx } from './export.js';
import { randomizeStatistics, relErr } from './fixtures.js';
import { loadWebModel } from '../runtime/web.js';

await initEngine('wasm');

// Dynamic parameters export as one batch-dynamic graph: the scores of ONNX Runtime (node and web) against TF.js's.
const CASES: [string, Record<string, unknown>][] = [
  ['vgg-condconv', { widths: [8, 8, 16, 16], hidden: 32, experts: 3 }],
  ['resnet-condconv', { width: 8, blocksPerStage: 1, experts: 2, routing: 'softmax', temperature: 4 }],
];

for (const [name, args] of CASES) {
  test(`${name}: ONNX Runtime (node and web) matches TF.js at batch 1 and 5; the checker accepts the graph`, async () => {
    const model = createModel(name, args);
    randomizeStatistics(model, 5);
    // Router weights large enough that the samples mix their kernels differently.
    for (const w of model.weights().filter((w) => w.name.endsWith('route.kernel'))) tf.tidy(() => w.variable.assign(tf.mul(w.variable, 8)));
    const before = tf.memory().numTensors;
    const { bytes } = exportOnnx(model);
    assert.equal(tf.memory().numTensors, before, 'export must not leak tensors');
    const s = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
    const web = await loadWebModel(bytes);
    const [h, w, c] = model.inputShape;
    for (const n of [1, 5]) {
      const x = tf.randomNormal([n, h, w, c], 0, 1, 'float32', n);
      const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
      const ref = tf.tidy(() => model.predict(x, 1).dataSync() as Float32Array);
      const out = await s.run({ images: new ort.Tensor('float32', nchw, [n, c, h, w]), u: new ort.Tensor('float32', Float32Array.of(1), []) });
      const got = out.scores.data as Float32Array;
      assert.ok(relErr(ref, got) < 1e-4, `${name} batch ${n}: error ${relErr(ref, got)}`);
      const fromWeb = await web.run(nchw, 1);
      assert.ok(relErr(ref, fromWeb.scores) < 1e-4, `${name} batch ${n} web: error ${relErr(ref, fromWeb.scores)}`);
      x.dispose();
    }
    await s.release();
    await web.release();
    if (spawnSync('/usr/bin/python3', ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0) {
      const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'dynn-condconv-')), `${name}.onnx`);
      writeFileSync(file, bytes);
      const ok = execFileSync('/usr/bin/python3', ['-c', 'import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print("ok")', file], { encoding: 'utf8' });
      assert.equal(ok.trim(), 'ok');
    }
    model.dispose();
  });
}
