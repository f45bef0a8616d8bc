import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { randomizeStatistics, serveFolder } from '../export/fixtures.js';
import { saveSegments } from '../export/segments.js';
import { MANIFEST_FILE, type SegmentsManifest } from '../export/manifest.js';
import { createModel } from '../models/zoo.js';
import { RoutingState } from '../route/context.js';
import { DynnServer, type PredictResponse } from '../serve/server.js';
import { openSession } from './node.js';
import type { SegmentedSession } from './segments.js';
import { loadWebSegments } from './web.js';

await initEngine('wasm');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-spatialrt-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// A small spatial resnet-d on 8x8 images whose gates vary over positions and samples.
const model = createModel('resnet-d', { width: 4, blocksPerStage: 1, inputShape: [8, 8, 1], numClasses: 3, dynamic: 'spatial', gateScale: 2 });
randomizeStatistics(model, 3);
tf.tidy(() => {
  for (const w of model.weights()) if (w.name.endsWith('.gate.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 2, 'float32', 9));
});
const dir = path.join(tmp, 'spatial');
const manifest = await saveSegments(model, dir, { threshold: 0.4 });
const images = (n: number) => Float32Array.from({ length: n * 64 }, (_, i) => Math.sin(i * 0.61) * (1 + (i % 7)));

/** What TF.js's hard routing gives: classes, scores, positions per block and each sample's FLOPs ratio. */
function reference(x: Float32Array, threshold: number) {
  const n = x.length / 64;
  const routing = RoutingState.start('hard', n, { threshold });
  const scores = tf.tidy(() => model.forward(tf.tensor(x, [n, 8, 8, 1]), model.plan(1), { routing }).dataSync() as Float32Array);
  const { fixed, backbone } = model.routedMacs(1);
  return { scores, counts: [...routing.decisions.values()], ratios: Array.from(routing.executedMacs, (m) => (fixed + m) / backbone) };
}

test('a spatial run exports one graph per gated block; ONNX Runtime gives TF.js\'s masks, scores and FLOPs ratios, at any threshold, none or every position selected', async () => {
  assert.deepEqual(manifest.segments.map((s) => s.kind), ['plain', 'spatial', 'plain', 'spatial', 'plain', 'spatial', 'plain']);
  const s = (await openSession(dir, { threads: 1 })) as SegmentedSession;
  try {
    for (const threshold of [0.4, 0.7, 0, 1]) {
      const x = images(6);
      const want = reference(x, threshold);
      const got = await s.runRouted(x, { threshold });
      assert.deepEqual(got.counts, want.counts, `threshold ${threshold}: positions per block`);
      got.scores.forEach((v, i) => assert.ok(Math.abs(v - want.scores[i]) < 1e-4, `threshold ${threshold}: ${v} vs ${want.scores[i]}`));
      got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - want.ratios[i]) < 1e-9, `threshold ${threshold}, sample ${i}: ratio ${r} vs ${want.ratios[i]}`));
      if (threshold === 1) assert.ok(got.counts.every((c) => c.every((k) => k === 0)));
      if (threshold === 0) assert.ok(got.counts.every((c, j) => c.every((k) => k === [64, 16, 4][j])));
    }
    const mixed = (await s.runRouted(images(6))).counts.flatMap((c) => [...c]);
    assert.ok(mixed.some((k) => k > 0) && mixed.some((k, i) => k < [64, 16, 4][Math.floor(i / 6)]), 'the trained threshold selects some positions, not all');
  } finally {
    await s.release();
  }
});

test('onnxruntime-web loads the folder over HTTP and computes what onnxruntime-node does', async () => {
  const http = await serveFolder(dir, 'spatial');
  try {
    const node = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const web = await loadWebSegments(`${http.base}/spatial`);
    const x = images(5);
    const [a, b] = [await web.runRouted(x), await node.runRouted(x)];
    assert.deepEqual(a.counts, b.counts);
    assert.ok(a.scores.every((v, i) => Math.abs(v - b.scores[i]) < 1e-4));
    await web.release();
    await node.release();
  } finally {
    http.close();
  }
});

test('dynn serve: a spatial folder answers with TF.js\'s classes and FLOPs ratios; a manifest whose positions do not fit the block is refused at load', async () => {
  const n = 8;
  const x = images(n);
  const want = reference(x, 0.4);
  const server = await DynnServer.create({ model: dir, threads: 1, maxBatch: 8, maxWaitMs: 1 });
  try {
    const res = await server.app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: Array.from(x), shape: [n, 1, 8, 8] } });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json() as PredictResponse;
    const classes = Array.from({ length: n }, (_, i) => [0, 1, 2].reduce((best, c) => (want.scores[i * 3 + c] > want.scores[i * 3 + best] ? c : best), 0));
    assert.deepEqual(body.predictions.map((q) => q.class), classes);
    body.predictions.forEach((q, i) => assert.ok(Math.abs(q.flopsRatio! - want.ratios[i]) < 1e-9));
  } finally {
    await server.close();
  }
  const bad = path.join(tmp, 'bad');
  cpSync(dir, bad, { recursive: true });
  const m = JSON.parse(readFileSync(path.join(bad, MANIFEST_FILE), 'utf8')) as SegmentsManifest;
  (m.segments[1] as { positions: number }).positions = 63;
  writeFileSync(path.join(bad, MANIFEST_FILE), JSON.stringify(m));
  await assert.rejects(openSession(bad, { threads: 1 }), /invalid segments manifest at segments\.1: a spatially gated block keeps its \[C, H, W\] shape and has H \* W positions/);
});

after(() => model.dispose());
