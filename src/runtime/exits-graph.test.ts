// An early-exit model exported with its policy holds the exit rule in its graph: `runExits` runs every stage
// in one session run, decides as the staged runtime and TF.js do, and each stage computes only the samples
// still in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { saveOnnx } from '../export/export.js';
import { exitRuleLowerings } from '../export/exits.js';
import { maxDiff, profileNodes, randomizeStatistics, serveFolder, smallExitNet, splitAt } from '../export/fixtures.js';
import { EarlyExitRunner } from '../scaling/runner.js';
import { exitRules, exitScores, neverLeaves } from '../scaling/rules.js';
import { OnnxModel } from './node.js';
import { loadWebModel } from './web.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-exits-graph-'));
const N = 24;
const { net, x, nchw: xNchw } = smallExitNet(N, 11);

/** Thresholds at a quantile of each exit's scores over the whole batch (samples leave at several exits), and TF.js's early-exit run with them. */
function fitted(rule: string, u: number, model = net, images: tf.Tensor4D = x) {
  const runner = EarlyExitRunner.freeze(model, u);
  try {
    const q = exitRules.get(rule).exitsWhen === 'below' ? 0.35 : 0.65;
    const thresholds = runner.allExits(images).slice(0, -1).map((l) => splitAt(exitScores(exitRules.get(rule), l, model.numClasses), q));
    return { thresholds, ref: runner.run(images, rule, thresholds) };
  } finally {
    runner.dispose();
  }
}

// Every rule that lowers, so a new one is checked end to end, its side of the threshold included.
for (const rule of exitRuleLowerings.list()) {
  test(`the ${rule} rule in the graph: one run gives the staged runtime's and TF.js's exits and scores at every level, and each stage runs on the samples still in`, async () => {
    const file = path.join(tmp, `${rule}.onnx`);
    const meta = await saveOnnx(net, file, { exitPolicy: { rule, thresholds: [0.5, 0.5, 0.5] } });
    assert.deepEqual(meta.exits?.inGraph, { rule });
    const leavesFirst = -neverLeaves(exitRules.get(rule));
    const m = await OnnxModel.load(file, { threads: 1 });
    try {
      for (const lv of meta.levels) {
        const { thresholds, ref } = fitted(rule, lv.u);
        const got = await m.runExits(xNchw, lv.u, { thresholds });
        const staged = await m.runExits(xNchw, lv.u, { thresholds, staged: true });
        assert.equal(got.oneRun, true);
        assert.equal(staged.oneRun, false);
        assert.deepEqual(Array.from(got.exits), Array.from(ref.exits), `level ${lv.level}: exits as TF.js's`);
        assert.deepEqual(Array.from(got.exits), Array.from(staged.exits), `level ${lv.level}: exits as the staged runtime's`);
        assert.ok(new Set(got.exits).size >= 3, `samples leave at several exits (${Array.from(got.exits)})`);
        assert.ok(maxDiff(got.scores, staged.scores) < 1e-5, `level ${lv.level}: scores differ from the staged run's by ${maxDiff(got.scores, staged.scores)}`);
        assert.ok(maxDiff(got.scores, ref.logits) < 1e-4, `level ${lv.level}: scores differ from TF.js's by ${maxDiff(got.scores, ref.logits)}`);
        assert.deepEqual(Array.from(got.classes), Array.from(staged.classes));
        assert.equal(got.meanFlops, staged.meanFlops);
        // Each stage's convolutions and products ran on exactly the samples that reached it.
        const feeds = {
          images: { data: xNchw, dims: [N, 1, 12, 12] },
          u: { data: Float32Array.of(lv.u), dims: [] },
          stage: { data: Float32Array.of(-2), dims: [] },
          exit_thresholds: { data: Float64Array.from(thresholds), dims: [3] },
        };
        const nodes = (await profileNodes(file, feeds, 1)).filter((n) => (n.op === 'Conv' || n.op === 'Gemm') && n.name.startsWith(`X${lv.level}/`));
        for (let k = 0; k < 4; k++) {
          const reached = Array.from(got.exits).filter((e) => e >= k).length;
          const mine = nodes.filter((n) => n.name.startsWith(`X${lv.level}/S${k}/`));
          assert.ok(reached === 0 || mine.length > 0, `stage ${k}'s nodes ran`);
          for (const n of mine) assert.equal(n.rows, reached, `${n.name} ran on ${n.rows} rows; ${reached} samples reached stage ${k}`);
        }
      }
      // Everyone leaves at the first exit (later stages run on empty batches), or no one leaves before the last.
      const first = await m.runExits(xNchw, 1, { thresholds: leavesFirst });
      assert.deepEqual(Array.from(first.exits), new Array<number>(N).fill(0));
      assert.deepEqual(Array.from(first.exits), Array.from((await m.runExits(xNchw, 1, { thresholds: leavesFirst, staged: true })).exits));
      const none = await m.runExits(xNchw, 1, { thresholds: -leavesFirst });
      assert.deepEqual(Array.from(none.exits), new Array<number>(N).fill(3));
      assert.ok(maxDiff(none.scores, (await m.run(xNchw, 1)).scores) < 1e-5, 'no one leaving gives the whole network\'s scores');
      // The stored policy is the default; a batch of one; another rule than the graph's runs staged.
      const stored = await m.runExits(xNchw.subarray(0, 144), 1);
      assert.equal(stored.oneRun, true);
      assert.equal(stored.exits.length, 1);
      const other = exitRules.list().find((r) => r !== rule)!;
      assert.equal((await m.runExits(xNchw, 1, { rule: other, thresholds: 0.5 })).oneRun, false);
    } finally {
      await m.dispose();
    }
  });
}

test('the exit rule in the graph from a worker thread and in the browser entry (onnxruntime-web), and a plain run feeds the stored thresholds', async () => {
  const file = path.join(tmp, 'worker.onnx');
  await saveOnnx(net, file, { exitPolicy: { rule: 'entropy', thresholds: [0.5, 0.5, 0.5] } });
  const m = await OnnxModel.load(file, { worker: true, threads: 1 });
  const http = await serveFolder(tmp, 'm');
  try {
    const { thresholds } = fitted('entropy', 1);
    const a = await m.runExits(xNchw, 1, { thresholds });
    const b = await m.runExits(xNchw, 1, { thresholds, staged: true });
    assert.equal(a.oneRun, true);
    assert.deepEqual(Array.from(a.exits), Array.from(b.exits));
    assert.ok(new Set(a.exits).size >= 2, `samples leave at several exits (${Array.from(a.exits)})`);
    assert.equal((await m.run(xNchw, 1)).batch, N);
    // A lent batch goes to the worker and comes back for reuse, as with run (the server's batcher lends).
    const copy = Float32Array.from(xNchw);
    const lent = await m.runExits(copy, 1, { thresholds, lend: true });
    assert.equal(copy.length, 0, 'the buffer went to the worker');
    assert.deepEqual(Array.from(lent.images!), Array.from(xNchw));
    assert.deepEqual(Array.from(lent.exits), Array.from(a.exits));
    const web = await loadWebModel(`${http.base}/m/worker.onnx`);
    try {
      const w = await web.runExits(xNchw, 1, { thresholds });
      assert.equal(w.oneRun, true);
      assert.deepEqual(Array.from(w.exits), Array.from(a.exits));
      assert.ok(maxDiff(w.scores, a.scores) < 1e-5);
    } finally {
      await web.release();
    }
  } finally {
    http.close();
    await m.dispose();
  }
});

test('a residual network: mixed exits as the staged run, and the stages after every sample has left do not run (empty batches break blocked-layout reshapes)', async () => {
  const res = createModel('resnet-exits', { inputShape: [12, 12, 1], width: 8 });
  randomizeStatistics(res, 5);
  const file = path.join(tmp, 'resnet.onnx');
  const meta = await saveOnnx(res, file, { exitPolicy: { rule: 'entropy', thresholds: [0.5, 0.5] } });
  const m = await OnnxModel.load(file, { threads: 1 });
  try {
    for (const lv of [meta.levels[0], meta.levels[meta.levels.length - 1]]) {
      const { thresholds, ref } = fitted('entropy', lv.u, res);
      const got = await m.runExits(xNchw, lv.u, { thresholds });
      assert.equal(got.oneRun, true);
      assert.deepEqual(Array.from(got.exits), Array.from(ref.exits));
      assert.ok(new Set(got.exits).size >= 2, `samples leave at several exits (${Array.from(got.exits)})`);
      assert.ok(maxDiff(got.scores, ref.logits) < 1e-4);
    }
    const first = await m.runExits(xNchw, 1, { thresholds: Infinity });
    assert.deepEqual(Array.from(first.exits), new Array<number>(N).fill(0));
    const feeds = {
      images: { data: xNchw, dims: [N, 1, 12, 12] },
      u: { data: Float32Array.of(1), dims: [] },
      stage: { data: Float32Array.of(-2), dims: [] },
      exit_thresholds: { data: Float64Array.of(Infinity, Infinity), dims: [2] },
    };
    const ran = (await profileNodes(file, feeds, 1)).filter((n) => n.op === 'Conv' && n.name.startsWith('X'));
    assert.ok(ran.length > 0 && ran.every((n) => n.name.includes('/S0/')), `only stage 0's convolutions ran: ${ran.map((n) => n.name).join(', ')}`);
  } finally {
    await m.dispose();
    res.dispose();
  }
});

test('no tensors leak', () => {
  x.dispose();
  net.dispose();
  assert.equal(tf.memory().numTensors, 0);
});
