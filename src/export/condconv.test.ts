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
import { DynnServer } from '../serve/server.js';

await initEngine('wasm');

// Dynamic parameters export as one batch-dynamic graph: the scores of ONNX Runtime (node and web) against TF.js's.
const CASES: [string, Record<string, unknown>][] = [
  ['vgg-condconv', { widths: [8, 8, 16, 16], hidden: 32, experts: 3 }],
  ['resnet-condconv', { width: 8, blocksPerStage: 1, experts: 2, routing: 'softmax', temperature: 4 }],
];

for (const [name, args] of CASES) {
  test(`${name}: ONNX Runtime (node and web) and dynn serve match TF.js at batch 1 and 5; the checker accepts the graph`, async () => {
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
    const scored: { n: number; nchw: Float32Array; ref: Float32Array }[] = [];
    for (const n of [1, 5]) {
      const x = tf.randomNormal([n, h, w, c], 0, 1, 'float32', n);
      const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
      const ref = tf.tidy(() => model.predict(x, 1).dataSync() as Float32Array);
      const out = await s.run({ images: new ort.Tensor('float32', nchw, [n, c, h, w]), u: new ort.Tensor('float32', Float32Array.of(1), []) });
      const got = out.scores.data as Float32Array;
      assert.ok(relErr(ref, got) < 1e-4, `${name} batch ${n}: error ${relErr(ref, got)}`);
      const fromWeb = await web.run(nchw, 1);
      assert.ok(relErr(ref, fromWeb.scores) < 1e-4, `${name} batch ${n} web: error ${relErr(ref, fromWeb.scores)}`);
      scored.push({ n, nchw, ref });
      x.dispose();
    }
    await s.release();
    await web.release();
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'dynn-condconv-')), `${name}.onnx`);
    writeFileSync(file, bytes);
    // dynn serve: the server's scores are TF.js's too.
    const server = await DynnServer.create({ model: file, policy: 'fixed:1', maxBatch: 8, maxWaitMs: 1, threads: 1 });
    try {
      const url = await server.listen({ port: 0 });
      for (const { n, nchw, ref } of scored) {
        const res = await fetch(`${url}/v1/predict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ inputs: Array.from(nchw), shape: [n, c, h, w] }) });
        assert.equal(res.status, 200);
        const body = (await res.json()) as { predictions: { scores: number[] }[] };
        assert.ok(relErr(ref, body.predictions.flatMap((p) => p.scores)) < 1e-4, `${name} served batch ${n}`);
      }
    } finally {
      await server.close();
    }
    if (spawnSync('/usr/bin/python3', ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0) {
      const ok = execFileSync('/usr/bin/python3', ['-c', 'import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print("ok")', file], { encoding: 'utf8' });
      assert.equal(ok.trim(), 'ok');
    }
    model.dispose();
  });
}
