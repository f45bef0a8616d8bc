import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { exitCosts, forwardExits } from '../models/exits.js';
import { EarlyExitRunner } from './runner.js';

before(async () => {
  await initEngine('wasm');
});

/** Entropy of each row's softmax, computed here independently of the rules module. */
function entropies(logits: Float32Array, classes: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < logits.length / classes; r++) {
    const row = Array.from(logits.subarray(r * classes, (r + 1) * classes));
    const m = Math.max(...row);
    const e = row.map((v) => Math.exp(v - m));
    const z = e.reduce((a, b) => a + b, 0);
    out.push(-e.reduce((a, v) => a + (v / z) * Math.log(v / z), 0));
  }
  return out;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];

test('vgg-exits: what leaving at each exit costs, classifiers included, against a hand count', () => {
  const m = createModel('vgg-exits');
  const costs = exitCosts(m, m.plan(1));
  const head = (features: number) => features * 64 + 64 * 10;
  assert.equal(costs.length, 4);
  assert.equal(costs[0].cumulativeFlops, 2 * (28 * 28 * 9 * 1 * 32 + head(7 * 7 * 32)));
  assert.equal(costs[1].headFlops, 2 * head(7 * 7 * 32));
  assert.equal(costs[2].headFlops, 2 * head(7 * 7 * 64));
  // The last exit costs the plain network plus every exit classifier passed on the way.
  const base = m.cost(1).flops;
  assert.equal(costs[3].cumulativeFlops, base + 2 * (2 * head(7 * 7 * 32) + head(7 * 7 * 64)));
  assert.equal(createModel('vgg-w').cost(1).flops, base, 'exit heads add nothing to the main path');
  m.dispose();
});

test('exit order and batch re-assembly: each sample leaves at its first passing exit, results in input order', async () => {
  const m = createModel('vgg-exits', { seed: 3 });
  const runner = EarlyExitRunner.freeze(m, 1);
  const n = 24;
  const x = tf.randomUniform([n, 28, 28, 1], 0, 1, 'float32', 5);
  const all = runner.allExits(x);
  const h = all.map((l) => entropies(l, 10));
  // Median thresholds: about half the samples still running leave at each intermediate exit.
  const t = h.slice(0, 3).map(median);
  const expected = Array.from({ length: n }, (_, i) => {
    let k = 0;
    while (k < 3 && !(h[k][i] < t[k])) k++;
    return k;
  });
  assert.ok(new Set(expected).size === 4, `every exit is used: ${expected}`);
  const before = tf.memory().numTensors;
  const r = runner.run(x, 'entropy', t);
  assert.equal(tf.memory().numTensors, before, 'no leaked tensors');
  assert.deepEqual(Array.from(r.exits), expected);
  for (let i = 0; i < n; i++) {
    const want = all[expected[i]].subarray(i * 10, (i + 1) * 10);
    const got = r.logits.subarray(i * 10, (i + 1) * 10);
    got.forEach((v, j) => assert.ok(Math.abs(v - want[j]) < 1e-4 * (1 + Math.abs(want[j])), `sample ${i} class ${j}`));
    assert.equal(r.predictions[i], want.indexOf(Math.max(...want)));
  }

  // Real termination: each backbone convolution runs on the samples still running, nothing more.
  const profile = await tf.profile(() => {
    runner.run(x, 'entropy', t);
  });
  const convBatches = profile.kernels.filter((k) => k.name === 'FusedConv2D').map((k) => k.inputShapes[0]![0]);
  const left = (k: number) => expected.filter((e) => e >= k).length;
  assert.deepEqual(convBatches, [n, left(1), left(2), left(3)]);
  const allOut = await tf.profile(() => {
    runner.run(x, 'entropy', Infinity);
  });
  assert.deepEqual(allOut.kernels.filter((k) => k.name === 'FusedConv2D').map((k) => k.inputShapes[0]![0]), [n], 'everyone leaves at exit 1');
  const none = runner.run(x, 'entropy', -Infinity);
  assert.ok(none.exits.every((e) => e === 3));
  tf.dispose(x);
  runner.dispose();
  m.dispose();
});

test('frozen exits match the training-path exits and the network output, at a throttled width too', () => {
  for (const name of ['vgg-exits', 'resnet-exits']) {
    const m = createModel(name, { seed: 2 });
    const x = tf.randomUniform([5, 28, 28, 1], 0, 1, 'float32', 9);
    for (const u of [0.5, 1]) {
      const plan = m.plan(u);
      const runner = EarlyExitRunner.freeze(m, plan);
      const frozen = runner.allExits(x);
      const live = tf.tidy(() => forwardExits(m, x, plan).map((t) => t.dataSync() as Float32Array));
      const out = tf.tidy(() => m.predict(x, plan).dataSync() as Float32Array);
      assert.equal(frozen.length, live.length);
      frozen.forEach((f, k) => f.forEach((v, j) => assert.ok(Math.abs(v - live[k][j]) < 1e-3 * (1 + Math.abs(v)), `${name} u=${u} exit ${k}`)));
      live[live.length - 1].forEach((v, j) => assert.equal(v, out[j]));
      runner.dispose();
    }
    x.dispose();
    m.dispose();
  }
});

test('exit models reject misplaced exits and bad inputs clearly', () => {
  assert.throws(() => createModel('vgg-exits', { exits: ['c9'], exitPool: [2] }), /cannot put an exit after "c9"; top-level layers are stem.conv/);
  assert.throws(() => createModel('vgg-exits', { exits: ['pool1'], exitPool: [2, 2] }), /exitPool needs one window per exit \(1\), got 2/);
  assert.throws(() => createModel('vgg-exits', { exits: ['c3.relu', 'pool1'], exitPool: [2, 2] }), /exits must follow the network order/);
  assert.throws(() => createModel('vgg-exits', { exits: ['classifier'], exitPool: [1] }), /is the final classifier; it is the last exit already/);
  const m = createModel('vgg-exits');
  const runner = EarlyExitRunner.freeze(m, 1);
  const bad = tf.zeros([2, 32, 32, 3]);
  assert.throws(() => runner.run(bad, 'entropy', 0.1), /input shape \[2,32,32,3\] does not match the model's \[batch, 28, 28, 1\]/);
  const one = tf.zeros([1, 28, 28, 1]);
  assert.throws(() => runner.run(one, 'entropy', [0.1]), /expected 3 thresholds/);
  runner.dispose();
  assert.throws(() => runner.run(one, 'entropy', 0.1), /disposed/);
  tf.dispose([bad, one]);
  m.dispose();
});
