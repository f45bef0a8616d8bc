import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { Policy } from './policy.js';
import { BANDIT_DEFAULTS, BanditController, greedyActions, policyProbabilities, resolveBanditOptions, reward, trainBandit } from './bandit.js';
import { againstCurve } from './curve.js';
import { fixedCurve } from './table.js';
import { MixedRunner } from './runner.js';
import { evaluateController } from './evaluate.js';
import { createController } from './registry.js';
import { loadController, runRef, saveController, saveGates } from './store.js';
import { GateSet, gatedBlocks } from './gates.js';
import type { LevelTable } from './table.js';

before(async () => {
  await initEngine('wasm');
});

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-control-'));

test('reward (DTNN Eq. 14): exp(1-u)(1-u) when right, -(c+gamma1)(u+gamma2) when wrong', () => {
  assert.equal(reward(true, 0.3, 0.25), Math.exp(0.75) * 0.75);
  assert.equal(reward(true, 0.99, 1), 0);
  assert.equal(reward(false, 0.8, 0.5), -(0.8 + 0.5) * (0.5 + 1.5));
  assert.equal(reward(false, 0.8, 0.5, 0.1, 1), -(0.9 * 1.5));
  // Right at a lower u pays more; wrong at a higher u costs more.
  assert.ok(reward(true, 0.5, 0.2) > reward(true, 0.5, 0.6));
  assert.ok(reward(false, 0.5, 0.9) < reward(false, 0.5, 0.2));
});

/**
 * Classes 0-4 (or `easyClasses`) are answered right at every level, the others only at u = 1. The best policy
 * is known: u = 0.25 for the first (reward 1.59 against 0.82 and 0), u = 1 for the others (0 against -1.9 and
 * -2.2 at gamma1 0.5; larger gamma1 only widens the gap).
 */
function handMadeTable(set: ReturnType<typeof makeSynthetic>, us: number[], easyClasses = 5): LevelTable {
  const easy = (i: number) => set.labels[i] < easyClasses;
  return {
    us,
    count: set.count,
    labels: set.labels,
    predictions: us.map(() => new Int32Array(set.count)),
    confidence: us.map(() => new Float32Array(set.count).fill(0.6)),
    correct: us.map((_, k) => Uint8Array.from({ length: set.count }, (_, i) => (k === 2 || easy(i) ? 1 : 0))),
    macs: [1, 2, 4],
    fullMacs: 4,
  };
}

/** Share of held-out samples whose greedy action is the best one of `handMadeTable`. */
function bestActionShare(policy: Policy): number {
  const test = makeSynthetic({ count: 200, seed: 9 });
  const actions = greedyActions(policyProbabilities(policy, test), 3);
  let good = 0;
  for (let i = 0; i < test.count; i++) if (actions[i] === (test.labels[i] < 5 ? 0 : 2)) good++;
  return good / test.count;
}

test('a reward model, from every action\'s reward or from the taken one\'s, learns the same best actions', () => {
  const set = makeSynthetic({ count: 400, seed: 2 });
  const us = [0.25, 0.5, 1];
  const table = handMadeTable(set, us);
  for (const feedback of ['full', 'bandit'] as const) {
    const policy = new Policy({ inputShape: [28, 28, 1], actions: us, seed: 1 });
    const before = tf.memory().numTensors;
    const epochs = feedback === 'full' ? 8 : 12;
    const history = trainBandit(policy, set, table, { epochs, batchSize: 40, lr: 3e-3, cost: 'u', seed: 3, feedback, objective: 'reward', gamma1: 0.5 });
    assert.equal(tf.memory().numTensors, before, 'training leaks nothing');
    if (feedback === 'full') assert.ok(history.every((h) => h.epsilon === 0), 'no exploration with full feedback');
    assert.ok(history[epochs - 1].meanReward > history[0].meanReward, `${feedback}: the reward rises`);
    assert.ok(bestActionShare(policy) > 0.85, `${feedback}: held-out samples get the best action: ${bestActionShare(policy)}`);
    policy.dispose();
  }
  const policy = new Policy({ inputShape: [28, 28, 1], actions: us, seed: 1 });
  assert.throws(() => trainBandit(policy, set, table, { feedback: 'oracle' as 'full' }), /unknown bandit feedback "oracle"; expected one of bandit, full/);
  assert.throws(() => trainBandit(policy, set, table, { objective: 'q' as 'reward' }), /unknown bandit objective "q"; expected one of policy-gradient, reward/);
  assert.throws(() => trainBandit(policy, set, table, { feedback: 'full', objective: 'policy-gradient' }), /full feedback trains a reward model/);
  policy.dispose();
});

test('the defaults (a reward model from every action\'s reward, gamma1 4) sit above the fixed-u curve where the cheapest action is right for most inputs', () => {
  assert.deepEqual(
    [BANDIT_DEFAULTS.objective, BANDIT_DEFAULTS.feedback, BANDIT_DEFAULTS.gamma1],
    ['reward', 'full', 4],
  );
  // Asking for the paper's loss alone gets the paper's feedback, not an error.
  assert.equal(resolveBanditOptions({ objective: 'policy-gradient' }).feedback, 'bandit');
  assert.equal(resolveBanditOptions({ gamma1: undefined }).gamma1, 4);
  // 80% of inputs are right at the cheapest action, the rest only at u = 1: the case where the paper's loss
  // settled on the cheapest action for every input and sat below the curve by its own cost.
  const us = [0.25, 0.5, 1];
  const set = makeSynthetic({ count: 400, seed: 2 });
  const policy = new Policy({ inputShape: [28, 28, 1], actions: us, seed: 1 });
  trainBandit(policy, set, handMadeTable(set, us, 8), { epochs: 8, batchSize: 40, lr: 3e-3 });
  const test = makeSynthetic({ count: 200, seed: 9 });
  const table = handMadeTable(test, us, 8);
  const chosen = greedyActions(policyProbabilities(policy, test), 3);
  let right = 0;
  let macs = 0;
  for (let i = 0; i < test.count; i++) {
    right += table.correct[chosen[i]][i];
    // The table's MACs are made up (1, 2, 4): the policy's own cost is not on that scale and is left out here.
    macs += table.macs[chosen[i]];
  }
  const gap = againstCurve(fixedCurve(table), { accuracy: right / test.count, flopsRatio: macs / test.count / table.fullMacs });
  assert.equal(gap.below, false);
  assert.ok(gap.gap! > 0.05, `above the curve: ${gap.gap}`);
  policy.dispose();
});

test('the bandit learns which inputs need a high u (hand-made answers), and its cost counts its own network', () => {
  const set = makeSynthetic({ count: 400, seed: 2 });
  const us = [0.25, 0.5, 1];
  const table = handMadeTable(set, us);
  const policy = new Policy({ inputShape: [28, 28, 1], actions: us, seed: 1 });
  const before = tf.memory().numTensors;
  // The paper's setting (policy gradient from one action's reward, gamma1 0.5) on the table documented above.
  const history = trainBandit(policy, set, table, { epochs: 12, batchSize: 40, lr: 3e-3, cost: 'u', seed: 3, objective: 'policy-gradient', gamma1: 0.5 });
  assert.equal(tf.memory().numTensors, before, 'training leaks nothing');
  assert.equal(history.length, 12);
  assert.ok(history[11].meanReward > history[0].meanReward, 'the reward rises');
  assert.ok(bestActionShare(policy) > 0.85, `held-out samples get the best action: ${bestActionShare(policy)}`);
  const test = makeSynthetic({ count: 200, seed: 9 });

  // Deployed: argmax, its own MACs added to each sample's.
  const model = createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32 });
  const runner = new MixedRunner(model);
  const bandit = createController('bandit', { runner }, { policy });
  const r = evaluateController(bandit, runner, test, { curve: us });
  const full = model.cost(1).macs;
  const expected = Object.entries(r.uHistogram).reduce((a, [u, n]) => a + n * model.cost(Number(u)).macs, 0) / test.count / full + policy.macs / full;
  assert.ok(Math.abs(r.meanFlopsRatio - expected) < 1e-12, `${r.meanFlopsRatio} vs ${expected}`);
  const standard = createModel('vgg-w');
  assert.ok(policy.macs > 0 && policy.macs < standard.cost(1).macs / 100, 'the controller costs under 1% of the standard vgg-w');
  standard.dispose();
  assert.deepEqual(Object.keys(r.uHistogram).sort(), ['0.25', '1']);
  // Restricting the argmax to u >= 0.5 moves the easy inputs to 0.5.
  const floor = new BanditController(policy, [0.5, 1]);
  const x = tf.tensor(new Float32Array(10 * 784).fill(0.1), [10, 28, 28, 1]);
  assert.ok(floor.decide(x).u.every((u) => u >= 0.5));
  assert.throws(() => new BanditController(policy, [0.3]), /action 0\.3 is not one of the controller's/);
  x.dispose();
  runner.dispose();
  model.dispose();
  policy.dispose();
});

test('controller checkpoints: round trip; another network, a gates checkpoint, a run: clear errors', async () => {
  const model = createModel('mlp-w', { hidden: [32, 32], seed: 1 });
  const other = createModel('mlp-w', { hidden: [32, 32], seed: 2 });
  const policy = new Policy({ inputShape: [28, 28, 1], actions: [0.5, 1], seed: 4 });
  const dir = path.join(tmp, 'ctrl');
  await saveController(dir, policy, runRef(model, 'runs/a'), { note: 'x' });
  const { policy: loaded, meta } = await loadController(dir, model, 'runs/a');
  assert.equal(meta.note, 'x');
  assert.deepEqual(loaded.actions, [0.5, 1]);
  const x = tf.randomUniform([3, 28, 28, 1], 0, 1, 'float32', 1);
  const a = policy.probabilities(x);
  const b = loaded.probabilities(x);
  assert.deepEqual(Array.from(a.dataSync()), Array.from(b.dataSync()));
  tf.dispose([x, a, b]);
  await assert.rejects(loadController(dir, other, 'runs/b'), /made for another network \(mlp-w from runs\/a, weights [0-9a-f]{16}\), not runs\/b/);
  const gates = new GateSet({ blocks: gatedBlocks(model) });
  await saveGates(path.join(tmp, 'gates'), gates, runRef(model, 'runs/a'));
  await assert.rejects(loadController(path.join(tmp, 'gates'), model, 'runs/a'), /is not a controller checkpoint \(it holds learned gates\)/);
  await assert.rejects(loadController(path.join(tmp, 'nowhere'), model, 'runs/a'), /no checkpoint\.json in .*nowhere/);
  gates.dispose();
  loaded.dispose();
  policy.dispose();
  model.dispose();
  other.dispose();
});
