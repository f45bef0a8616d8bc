import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { makeStream, makeSynthetic, type ImageSet } from '../data/index.js';
import { createModel } from '../models/zoo.js';
import { DynnError } from '../util/errors.js';
import { levelTable, type LevelTable } from './table.js';
import { MixedRunner } from './runner.js';
import { isTemporal, runTemporal, TemporalController, temporalFeatureSize, temporalPolicy, trainTemporal, trainTemporalSequences } from './temporal.js';
import { loadController, runRef, saveController } from './store.js';

before(() => initEngine());

const stream = makeStream(makeSynthetic({ count: 60, height: 12, width: 12, numClasses: 4, seed: 1 }), { frames: 90, length: 30, hold: 10, seed: 2 });
const actions = [0.25, 0.5, 1];

/** A policy that always answers action `j`: zero weights, a bias only on output j. */
function constant(numClasses: number, j: number) {
  const policy = temporalPolicy(numClasses, actions);
  policy.net.setWeights(policy.net.getWeights().map((w) => ({ ...w, data: w.name === 'policy.logits.bias' ? Float32Array.from(actions, (_, k) => (k === j ? 5 : 0)) : new Float32Array(w.data.length) })));
  policy.weightsChanged();
  return policy;
}

test('a temporal run is frame t planning frame t+1, all sequences side by side in one batch per step', () => {
  const model = createModel('mlp-w', { inputShape: [12, 12, 1], numClasses: 4 });
  const runner = new MixedRunner(model);
  const policy = temporalPolicy(4, actions, { seed: 3 });
  // Spread the random policy's answers so the run mixes operating points.
  const before = tf.memory().numTensors;
  const controller = new TemporalController(policy);
  let calls = 0;
  const predict = runner.predict.bind(runner);
  runner.predict = (x, us) => (calls++, predict(x, us));
  const run = runTemporal(controller, runner, stream);
  runner.predict = predict;
  assert.equal(calls, 30, 'one batch per time step (3 sequences of 30 frames), not one per frame');
  const table = levelTable(runner, stream, actions, { probabilities: true });
  const C = 4;
  for (let f = 0; f < stream.count; f++) {
    const a = actions.indexOf(run.u[f]);
    assert.ok(a >= 0);
    // The prediction is the network's at the frame's u.
    assert.equal(run.predictions[f], table.predictions[a][f]);
    assert.equal(run.macs[f], runner.macs(run.u[f]) + policy.macs);
    if (f % 30 === 0) assert.equal(run.u[f], 1, 'a sequence starts at the top action');
    else {
      // Frame f's u is what the controller planned from frame f-1's probabilities at frame f-1's u.
      const prev = actions.indexOf(run.u[f - 1]);
      const planned = controller.next(table.probabilities![prev].slice((f - 1) * C, f * C), [prev])[0];
      assert.equal(run.u[f], actions[planned]);
    }
  }
  assert.ok(new Set(run.u).size >= 1);
  runner.dispose();
  policy.weightsChanged();
  assert.equal(tf.memory().numTensors, before, 'no tensor left behind by the run');
  policy.dispose();
  model.dispose();
});

test('a controller that always answers one action equals the fixed curve at that action', () => {
  const model = createModel('mlp-w', { inputShape: [12, 12, 1], numClasses: 4 });
  const runner = new MixedRunner(model);
  const policy = constant(4, 0);
  const run = runTemporal(new TemporalController(policy, 0.25), runner, stream);
  const table = levelTable(runner, stream, actions);
  assert.deepEqual(Array.from(run.predictions), Array.from(table.predictions[0]));
  assert.ok(run.u.every((u) => u === 0.25));
  runner.dispose();
  policy.dispose();
  model.dispose();
});

/**
 * A stream whose difficulty persists: hard stretches and easy stretches. At the cheap action the network is
 * right on easy frames only and, on a hard frame, unsure (probabilities 0.5/0.5); at the full action it is
 * always right, less sure on hard frames.
 */
function persistentTable(): { set: ImageSet; table: LevelTable; hard: Uint8Array } {
  const n = 600;
  const hard = Uint8Array.from({ length: n }, (_, i) => (Math.floor(i / 15) % 2 === 0 ? 0 : 1));
  const set: ImageSet = { images: new Uint8Array(n), labels: new Uint8Array(n), count: n, height: 1, width: 1, channels: 1, sequence: Int32Array.from({ length: n }, (_, i) => Math.floor(i / 60)) };
  const cheap = new Float32Array(n * 2);
  const full = new Float32Array(n * 2);
  for (let i = 0; i < n; i++) {
    cheap.set(hard[i] ? [0.5, 0.5] : [1, 0], 2 * i);
    // The full network is right on hard frames too, but less sure: what frame t says of frame t+1 at any u.
    full.set(hard[i] ? [0.8, 0.2] : [1, 0], 2 * i);
  }
  const table: LevelTable = {
    us: [0.25, 1],
    count: n,
    labels: set.labels,
    predictions: [Int32Array.from(hard), new Int32Array(n)],
    confidence: [Float32Array.from(hard, (h) => (h ? 0.5 : 1)), Float32Array.from(hard, (h) => (h ? 0.8 : 1))],
    correct: [Uint8Array.from(hard, (h) => 1 - h), new Uint8Array(n).fill(1)],
    macs: [250000, 1000000],
    fullMacs: 1000000,
    probabilities: [cheap, full],
  };
  return { set, table, hard };
}

test('trained on a stream whose difficulty persists, it escalates after hard frames and saves after easy ones', () => {
  const { set, table } = persistentTable();
  const policy = temporalPolicy(2, [0.25, 1], { seed: 0 });
  const before = tf.memory().numTensors;
  const history = trainTemporal(policy, set, table, { epochs: 30, batchSize: 64, lr: 1e-2 });
  assert.equal(tf.memory().numTensors, before, 'training leaves no tensor behind');
  assert.ok(history[history.length - 1].loss < history[0].loss);
  const controller = new TemporalController(policy);
  // After a sure answer at the cheap action the next frame is most likely easy: stay cheap.
  assert.deepEqual(Array.from(controller.next(Float32Array.from([1, 0]), [0])), [0]);
  // After an unsure answer: escalate; and come back down once the full network is sure again.
  assert.deepEqual(Array.from(controller.next(Float32Array.from([0.5, 0.5]), [0])), [1]);
  assert.deepEqual(Array.from(controller.next(Float32Array.from([0.8, 0.2]), [1])), [1]);
  assert.deepEqual(Array.from(controller.next(Float32Array.from([1, 0]), [1])), [0]);
  // The greedy choices on the training rows: right on the next frame nearly always, at well under full cost.
  const last = history[history.length - 1];
  assert.ok(last.accuracy > 0.9, `accuracy ${last.accuracy}`);
  assert.ok(last.meanFlopsRatio < 0.8, `FLOPs ratio ${last.meanFlopsRatio}`);
  policy.dispose();
});

test('what a temporal controller refuses', () => {
  const { set, table } = persistentTable();
  const policy = temporalPolicy(2, [0.25, 1]);
  const flat = { ...set, sequence: undefined };
  assert.throws(() => trainTemporal(policy, flat, table), (e: Error) => e instanceof DynnError && /needs a stream/.test(e.message));
  assert.throws(() => trainTemporal(policy, set, { ...table, probabilities: undefined }), /with its probabilities/);
  assert.throws(() => trainTemporal(policy, set, { ...table, us: [0.5, 1] }), /different actions/);
  assert.throws(() => new TemporalController(policy, 0.5), /start action 0.5 is not one of/);
  assert.throws(() => new TemporalController(policy).next(new Float32Array(3), [0]), /reads 2 class probabilities per frame/);
  assert.equal(temporalFeatureSize(2, 2), 7);
  policy.dispose();
});

test('a temporal controller saves and loads as one, tied to its network', async () => {
  const model = createModel('mlp-w', { inputShape: [12, 12, 1], numClasses: 4 });
  const policy = constant(4, 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-temporal-'));
  try {
    await saveController(path.join(dir, 'ctrl'), policy, runRef(model, 'run'), { temporal: true });
    const loaded = await loadController(path.join(dir, 'ctrl'), model, 'run');
    assert.ok(isTemporal(loaded.policy));
    const p = Float32Array.from([0.7, 0.1, 0.1, 0.1]);
    assert.deepEqual(Array.from(new TemporalController(loaded.policy).next(p, [2])), [1]);
    loaded.policy.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    policy.dispose();
    model.dispose();
  }
});

test('REINFORCE over whole sequences learns both of NaviSlim’s problems: accuracy within a budget, least compute at beta x full', () => {
  const { set, table } = persistentTable();
  for (const objective of [{ kind: 'budget', budget: 0.7 }, { kind: 'beta', beta: 0.95 }] as const) {
    const policy = temporalPolicy(2, [0.25, 1], { seed: 1 });
    const before = tf.memory().numTensors;
    const history = trainTemporalSequences(policy, set, table, { objective, epochs: 200, batchSize: 5, seed: 2 });
    assert.equal(tf.memory().numTensors, before, 'training leaves no tensor behind');
    const last = history.slice(-10);
    const acc = last.reduce((a, e) => a + e.accuracy, 0) / last.length;
    const flops = last.reduce((a, e) => a + e.meanFlopsRatio, 0) / last.length;
    // Cheap on easy stretches, full on hard ones: right nearly always, well under the full cost.
    assert.ok(acc > 0.9, `${objective.kind}: accuracy ${acc}`);
    assert.ok(flops < 0.8, `${objective.kind}: FLOPs ratio ${flops}`);
    const controller = new TemporalController(policy);
    assert.deepEqual(Array.from(controller.next(Float32Array.from([0.5, 0.5, 1, 0]), [0, 0])), [1, 0], 'escalates after an unsure frame, stays cheap after a sure one');
    assert.deepEqual(Array.from(controller.next(Float32Array.from([0.8, 0.2, 1, 0]), [1, 1])), [1, 0], 'stays up while the full network is unsure, comes back down once it is sure');
    // The cost it trains on is what runTemporal charges: the pass and the decision.
    assert.ok(last.every((e) => e.meanFlopsRatio > 0.25 + policy.macs / 1e6 - 1e-12));
    policy.dispose();
  }
  const policy = temporalPolicy(2, [0.25, 1]);
  assert.throws(() => trainTemporalSequences(policy, set, table, { objective: { kind: 'budget', budget: 0 } }), /FLOPs budget must be in \(0, 1\]/);
  assert.throws(() => trainTemporalSequences(policy, set, table, { objective: { kind: 'beta', beta: 1.5 } }), /beta must be in \(0, 1\]/);
  assert.throws(() => trainTemporalSequences(policy, { ...set, sequence: undefined }, table, { objective: { kind: 'beta', beta: 0.9 } }), /needs a stream/);
  assert.throws(() => trainTemporalSequences(policy, set, table, { objective: { kind: 'beta', beta: 0.9 }, batchSize: 1 }), /at least 2 sequences per update/);
  const wide = temporalPolicy(3, [0.25, 1]);
  assert.throws(() => trainTemporalSequences(wide, set, table, { objective: { kind: 'beta', beta: 0.9 } }), /the policy reads 8 features; frames of 2 classes give 7/);
  wide.dispose();
  policy.dispose();
});
