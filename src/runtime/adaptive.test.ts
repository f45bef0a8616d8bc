// The whole adaptive model in ONNX Runtime: early-exit models exported per stage and run with real early
// termination, and a bandit controller exported beside its network (decide, then run each sample's level).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import ort from 'onnxruntime-node';
import { saveOnnx, stageStarts } from '../export/export.js';
import { maxDiff, randomizeStatistics, smallExitNet, splitAt } from '../export/fixtures.js';
import { EarlyExitRunner } from '../scaling/runner.js';
import { exitRules, exitScores } from '../scaling/rules.js';
import { Policy } from '../control/policy.js';
import { greedyActions } from '../control/bandit.js';
import { OnnxModel } from './node.js';
import { nhwcToNchw } from './core.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-adaptive-'));
const N = 16;

// A small early-exit network with per-level BatchNorm statistics, and a random batch (NHWC for TF.js, NCHW for ORT).
const { net: exitNet, x: xExit, nchw: xExitNchw } = smallExitNet(N, 9);
const exitFile = path.join(tmp, 'exits.onnx');
const exitMeta = await saveOnnx(exitNet, exitFile);

/** FLOPs the export adds for a sample leaving at each exit: stage 1 recomputes the stem (its output is 8x the image's values). */
const recomputed = (runner: EarlyExitRunner, k: number) => (k > 0 ? runner.costs[0].segmentFlops : 0);

test('an early-exit model exports per stage: metadata has the exits and each level’s cost of leaving at each exit', () => {
  assert.equal(exitMeta.exits?.count, 4);
  assert.deepEqual(stageStarts(exitNet), [0, 0, 2, 3], 'stage 1 recomputes the stem; the later stages hand on their features');
  const resnet = createModel('resnet-exits');
  assert.deepEqual(stageStarts(resnet), [0, 1, 2], 'a first stage of 5% or more of the FLOPs is not recomputed');
  resnet.dispose();
  for (const lv of exitMeta.levels) {
    const runner = EarlyExitRunner.freeze(exitNet, lv.u);
    assert.deepEqual(lv.exitFlops, runner.costs.map((c, k) => c.cumulativeFlops + recomputed(runner, k)));
    runner.dispose();
  }
});

test('stage 0 hands on its input (the images), not the stem\'s 8x larger features', async () => {
  const s = await ort.InferenceSession.create(exitFile, { intraOpNumThreads: 1 });
  const T = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
  const out = await s.run({ images: T(xExitNchw, [N, 1, 12, 12]), u: T(Float32Array.of(1), []), stage: T(Float32Array.of(0), []) });
  assert.deepEqual(out.features.dims, [N, 1, 12, 12]);
  assert.deepEqual(Array.from(out.features.data as Float32Array), Array.from(xExitNchw));
  await s.release();
});

for (const worker of [false, true]) {
  test(`early exits in ONNX Runtime${worker ? ' (worker)' : ''}: the same exits and scores as TF.js's early-exit runner at every level`, async () => {
    const m = await OnnxModel.load(exitFile, { worker, threads: 1 });
    try {
      for (const lv of exitMeta.levels) {
        const runner = EarlyExitRunner.freeze(exitNet, lv.u);
        // Thresholds that let about a third of the samples still running leave at each exit.
        const all = runner.allExits(xExit);
        const thresholds = all.slice(0, -1).map((l) => splitAt(exitScores(exitRules.get('entropy'), l, 10), 0.35));
        const ref = runner.run(xExit, 'entropy', thresholds);
        const got = await m.runExits(xExitNchw, lv.u, { rule: 'entropy', thresholds });
        assert.deepEqual(Array.from(got.exits), Array.from(ref.exits), `level ${lv.level}: exits`);
        assert.ok(maxDiff(got.scores, ref.logits) < 1e-4, `level ${lv.level}: scores differ by ${maxDiff(got.scores, ref.logits)}`);
        assert.ok(new Set(got.exits).size >= 3, 'samples leave at several exits');
        const extra = Array.from(ref.exits).reduce((a, e) => a + recomputed(runner, e), 0) / N;
        assert.ok(Math.abs(got.meanFlops - runner.meanFlops(ref.exits) - extra) < 1e-6 * got.meanFlops);
        assert.ok(got.flopsRatio < 1);
        // Without termination, `run` is the last exit: the network's own prediction.
        const full = await m.run(xExitNchw, lv.u);
        const want = tf.tidy(() => exitNet.predict(xExit, lv.u).dataSync() as Float32Array);
        assert.ok(maxDiff(full.scores, want) < 1e-4);
        runner.dispose();
      }
      await assert.rejects(m.runExits(xExitNchw, 1, { rule: 'entropy', thresholds: [1, 2] }), /expected 3 thresholds/);
      await assert.rejects(m.runExits(xExitNchw, 1), /needs thresholds: the model stores no exit policy/);
      await assert.rejects(m.runExits(xExitNchw, 1, { rule: 'gini', thresholds: 1 }), /unknown exit rule "gini"; expected one of confidence, entropy/);
    } finally {
      await m.dispose();
    }
  });
}

test('a stored exit policy is the runtime default; a policy for another exit count is refused at export', async () => {
  const file = path.join(tmp, 'exits-policy.onnx');
  const meta = await saveOnnx(exitNet, file, { exitPolicy: { rule: 'confidence', thresholds: [0.2, 0.3, 0.4] } });
  assert.deepEqual(meta.exits?.policy, { rule: 'confidence', thresholds: [0.2, 0.3, 0.4] });
  const m = await OnnxModel.load(file, { threads: 1 });
  try {
    const a = await m.runExits(xExitNchw, 1);
    const b = await m.runExits(xExitNchw, 1, { rule: 'confidence', thresholds: [0.2, 0.3, 0.4] });
    assert.deepEqual(Array.from(a.exits), Array.from(b.exits));
  } finally {
    await m.dispose();
  }
  await assert.rejects(saveOnnx(exitNet, file, { exitPolicy: { rule: 'entropy', thresholds: [1] } }), /1 thresholds for 3 intermediate exits/);
});

// A throttleable network exported with an (untrained) bandit controller.
const net = createModel('vgg-w', { inputShape: [8, 8, 3], groups: 4, widths: [8, 8, 16, 16], hidden: 32 });
randomizeStatistics(net, 3);
const ACTIONS = [0.25, 0.5, 1];
const policy = new Policy({ inputShape: net.inputShape, actions: ACTIONS, seed: 0 });
const ctrlFile = path.join(tmp, 'adaptive.onnx');
const ctrlMeta = await saveOnnx(net, ctrlFile, { controller: { network: policy.net, actions: ACTIONS } });
const x = tf.randomNormal([N, 8, 8, 3], 0, 1, 'float32', 5) as tf.Tensor4D;
const xNchw = nhwcToNchw(x.dataSync() as Float32Array, [3, 8, 8]);

test('the controller exports with its network: decide() is the bandit’s greedy action, runAdaptive() each sample’s level', async () => {
  assert.deepEqual(ctrlMeta.controller?.actions, ACTIONS);
  assert.equal(ctrlMeta.controller?.macs, policy.macs);
  for (const worker of [false, true]) {
    const m = await OnnxModel.load(ctrlFile, { worker, threads: 1 });
    try {
      const p = tf.tidy(() => policy.probabilities(x).dataSync() as Float32Array);
      const want = Array.from(greedyActions(p, ACTIONS.length));
      const d = await m.decide(xNchw);
      assert.deepEqual(Array.from(d.actions), want);
      assert.ok(new Set(want).size >= 2, 'the untrained policy picks several actions');
      const r = await m.runAdaptive(x.dataSync() as Float32Array, { layout: 'NHWC' });
      const fl = (u: number) => ctrlMeta.levels.filter((l) => l.minU <= u).pop()!;
      let flops = 0;
      for (let i = 0; i < N; i++) {
        const lv = fl(ACTIONS[want[i]]);
        assert.equal(r.u[i], lv.u);
        const one = tf.tidy(() => net.predict(x.slice([i, 0, 0, 0], [1, 8, 8, 3]), lv.u).dataSync() as Float32Array);
        assert.ok(maxDiff(r.scores.subarray(i * 10, (i + 1) * 10), one) < 1e-4, `sample ${i}`);
        flops += lv.flopsRatio;
      }
      assert.ok(Math.abs(r.meanFlopsRatio - (flops / N + ctrlMeta.controller!.flopsRatio)) < 1e-9);
    } finally {
      await m.dispose();
    }
  }
});

test('runMixed equals per-sample runs; bad utilizations, counts and missing parts fail clearly', async () => {
  const m = await OnnxModel.load(ctrlFile, { threads: 1 });
  const plain = await OnnxModel.load(exitFile, { threads: 1 });
  try {
    const us = Array.from({ length: N }, (_, i) => [1, 0.3, 0.6, 0.12][i % 4]);
    const r = await m.runMixed(xNchw, us);
    const per = 3 * 8 * 8;
    for (let i = 0; i < N; i++) {
      const one = await m.run(xNchw.slice(i * per, (i + 1) * per), us[i]);
      assert.ok(maxDiff(r.scores.subarray(i * 10, (i + 1) * 10), one.scores) < 1e-5);
      assert.equal(r.levels[i], one.level);
    }
    await assert.rejects(m.runMixed(xNchw, us.slice(1)), /15 utilizations for a batch of 16 samples/);
    await assert.rejects(m.runMixed(xNchw, us.map((u, i) => (i === 3 ? 1.5 : u))), /utilization u must be a number in \(0, 1\]/);
    await assert.rejects(plain.decide(xExitNchw), /exported without a controller/);
    await assert.rejects(m.runExits(xNchw, 1, { thresholds: 1 }), /has no early exits/);
  } finally {
    await m.dispose();
    await plain.dispose();
  }
});

test('no tensors leak across the TF.js references', () => {
  tf.dispose([x, xExit]);
  policy.dispose();
  net.dispose();
  exitNet.dispose();
  assert.equal(tf.memory().numTensors, 0);
});
