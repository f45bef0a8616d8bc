import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { toFloat } from '../data/imageset.js';
import { evaluate } from '../eval/evaluate.js';
import { MixedRunner } from './runner.js';
import { levelTable } from './table.js';
import { cascadeFromTable } from './cascade.js';
import { oracleFromTable } from './oracle.js';
import { controllers, createController } from './registry.js';
import { runController, evaluateController } from './evaluate.js';
import { latencyAtBatch, latencyOf, parseLatencyTable } from './latency-table.js';
import { actionSet } from './actions.js';

before(async () => {
  await initEngine('wasm');
});

const tiny = () => createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, seed: 3 });
const data = makeSynthetic({ count: 96, seed: 5 });
const xOf = (n: number) => tf.tensor(toFloat(data, 0, n), [n, 28, 28, 1]);

test('mixed-u batch: each sample equals its own u run alone (unfused reference), in order; subnets cached per level; no leak', () => {
  const model = tiny();
  const runner = new MixedRunner(model);
  const n = 24;
  const us = Array.from({ length: n }, (_, i) => [0.1, 1, 0.5, 0.3, 0.75][i % 5]);
  const x = xOf(n);
  runner.predict(x, us).dispose();
  const before = tf.memory().numTensors;
  const y = runner.predict(x, us);
  const got = y.dataSync() as Float32Array;
  y.dispose();
  assert.equal(tf.memory().numTensors, before, 'no leaked tensors');
  for (let i = 0; i < n; i++) {
    const xi = tf.slice(x, [i, 0, 0, 0], [1, 28, 28, 1]);
    const ref = model.predict(xi, us[i]);
    const r = ref.dataSync() as Float32Array;
    for (let j = 0; j < 10; j++) assert.ok(Math.abs(got[i * 10 + j] - r[j]) < 1e-3, `sample ${i} u=${us[i]} class ${j}: ${got[i * 10 + j]} vs ${r[j]}`);
    tf.dispose([xi, ref]);
  }
  // 0.1 and 0.2 share level 1 (d = floor(u * 9)): one subnet for both.
  assert.equal(runner.key(0.1), runner.key(0.2));
  assert.notEqual(runner.key(0.3), runner.key(0.2));
  assert.equal(runner.subnet(0.1), runner.subnet(0.2));
  assert.equal(runner.macs(1), model.cost(1).macs);
  assert.equal(runner.macs(0.5), model.cost(0.5).macs);
  assert.throws(() => runner.predict(x, us.slice(1)), /23 utilizations for a batch of 24/);
  assert.throws(() => runner.predict(x, us.map(() => 1.5)), /utilization u must be a number in \(0, 1\]/);
  x.dispose();
  runner.dispose();
  model.dispose();
});

test('level table agrees with evaluate(); cascade and oracle controllers agree with their table simulations', () => {
  const model = tiny();
  const runner = new MixedRunner(model);
  const actions = [0.25, 0.5, 1];
  const table = levelTable(runner, data, actions);
  actions.forEach((u, k) => {
    const ref = evaluate(model, data, u);
    assert.deepEqual(Array.from(table.predictions[k]), Array.from(ref.predictions), `predictions at u=${u}`);
    assert.ok(table.confidence[k].every((c, i) => Math.abs(c - ref.confidence[i]) < 1e-5));
    assert.equal(table.macs[k], model.cost(u).macs);
  });
  // A threshold at the median first-stage confidence sends about half the samples on.
  const sorted = Array.from(table.confidence[0]).sort((a, b) => a - b);
  const threshold = sorted[sorted.length >> 1];
  const sim = cascadeFromTable(table, [0, 1, 2], threshold);
  const cascade = createController('cascade', { runner }, { stages: actions, threshold });
  const before = tf.memory().numTensors;
  const run = runController(cascade, runner, data, { batchSize: 40 });
  assert.equal(tf.memory().numTensors, before, 'cascade: no leaked tensors');
  let moved = 0;
  for (let i = 0; i < data.count; i++) {
    assert.equal(run.u[i], actions[sim.action[i]], `sample ${i}: stage`);
    assert.equal(run.macs[i], sim.macs[i], `sample ${i}: cost of every stage run`);
    assert.equal(run.predictions[i], table.predictions[sim.action[i]][i], `sample ${i}: final prediction`);
    if (sim.action[i] > 0) moved++;
  }
  assert.ok(moved > 10 && moved < data.count - 10, `some samples re-run (${moved})`);
  // The cascade's cost counts the earlier stages: a sample settled at stage 2 costs all three passes.
  const top = sim.action.indexOf(2);
  if (top >= 0) assert.equal(run.macs[top], table.macs[0] + table.macs[1] + table.macs[2]);

  const oracle = oracleFromTable(table);
  const oracleRun = runController(createController('oracle', { runner }, { actions }), runner, data, { batchSize: 40 });
  let right = 0;
  for (let i = 0; i < data.count; i++) {
    assert.equal(oracleRun.u[i], oracle.action[i] >= 0 ? actions[oracle.action[i]] : 1);
    assert.equal(oracleRun.macs[i], model.cost(oracleRun.u[i]).macs, 'the oracle costs what its u costs');
    if (oracleRun.predictions[i] === data.labels[i]) right++;
  }
  assert.equal(right / data.count, oracle.accuracy);
  // The oracle is right wherever any level is.
  const anyRight = Array.from({ length: data.count }, (_, i) => table.correct.some((c) => c[i] === 1)).filter(Boolean).length;
  assert.equal(oracle.accuracy, anyRight / data.count);
  runner.dispose();
  model.dispose();
});

test('eval report: fixed curve, oracle, histogram and mean FLOPs of a fixed controller', () => {
  const model = tiny();
  const before = tf.memory().numTensors;
  const runner = new MixedRunner(model);
  const r = evaluateController(createController('fixed', { runner }, { u: 0.5 }), runner, data, { curve: [0.5, 1] });
  runner.dispose();
  assert.equal(tf.memory().numTensors, before, 'subnets are the runner’s; nothing else is left');
  assert.deepEqual(Object.keys(r).sort(), ['accuracy', 'againstCurve', 'fixed', 'meanFlopsRatio', 'meanU', 'oracle', 'uHistogram']);
  // A fixed controller is a point of the curve: on it, not below.
  assert.equal(r.againstCurve.below, false);
  assert.ok(Math.abs(r.againstCurve.gap!) < 1e-12);
  assert.deepEqual(r.uHistogram, { '0.5': data.count });
  assert.equal(r.meanU, 0.5);
  assert.ok(Math.abs(r.meanFlopsRatio - model.cost(0.5).macs / model.cost(1).macs) < 1e-12);
  assert.equal(r.accuracy, evaluate(model, data, 0.5).accuracy);
  assert.deepEqual(r.fixed.map((f) => f.u), [0.5, 1]);
  assert.equal(r.fixed[1].flopsRatio, 1);
  assert.ok(r.oracle.accuracy >= Math.max(...r.fixed.map((f) => f.accuracy)));
  model.dispose();
});

test('registry: names, unknown controller, bad options, the oracle needs labels', () => {
  assert.deepEqual(controllers.list(), ['bandit', 'cascade', 'fixed', 'oracle', 'resource']);
  assert.ok(controllers.get('oracle').evaluationOnly);
  const model = tiny();
  const runner = new MixedRunner(model);
  assert.throws(() => createController('greedy', { runner }), /unknown controller "greedy"; expected one of bandit, cascade, fixed, oracle, resource/);
  assert.throws(() => createController('bandit', { runner }), /needs a trained policy/);
  assert.throws(() => createController('fixed', { runner }, { u: 0 }), /utilization u must be a number in \(0, 1\]/);
  assert.throws(() => createController('cascade', { runner }, { stages: [0.5, 1.5] }), /action set: 1\.5 is not a utilization in \(0, 1\]/);
  assert.throws(() => createController('cascade', { runner }, { threshold: 2 }), /threshold must be in \(0, 1\]/);
  assert.throws(() => createController('oracle', { runner }, { actions: [-0.1, 1] }), /not a utilization in \(0, 1\]/);
  const x = xOf(4);
  assert.throws(() => createController('oracle', { runner }).decide(x), /needs the labels/);
  x.dispose();
  runner.dispose();
  model.dispose();
});

test('resource controller: battery level, latency budget through a latency table, both', () => {
  const model = tiny();
  const runner = new MixedRunner(model);
  const table = parseLatencyTable({
    model: 'vgg-w',
    levels: [
      { u: 1, latencyMs: { '1': 4, '64': 40 } },
      { u: 0.25, latencyMs: { '1': 1, '64': 10 } },
      { u: 0.5, latencyMs: { '1': 2, '64': 20 } },
    ],
  });
  assert.deepEqual(table.levels.map((l) => l.u), [0.25, 0.5, 1]);
  const battery = createController('resource', { runner });
  assert.deepEqual(battery.actions, actionSet());
  const x = xOf(64);
  const uOf = (c: ReturnType<typeof createController>, ctx: object, n = 64) => {
    const xs = n === 64 ? x : tf.slice(x, 0, n);
    const d = c.decide(xs, ctx);
    if (xs !== x) xs.dispose();
    assert.ok(d.u.every((v) => v === d.u[0]));
    return d.u[0];
  };
  assert.equal(uOf(battery, { battery: 0.55 }), 0.5);
  assert.equal(uOf(battery, { battery: 1 }), 1);
  assert.equal(uOf(battery, { battery: 0.05 }), 0.1, 'nothing fits: the smallest action');
  const latency = createController('resource', { runner }, { latencyTable: table });
  assert.deepEqual(latency.actions, [0.25, 0.5, 1]);
  assert.equal(uOf(latency, { latencyBudgetMs: 25 }), 0.5);
  assert.equal(uOf(latency, { latencyBudgetMs: 40 }), 1);
  // At batch 32, u = 1 takes 4 + 36 * 31/63 = 21.7 ms (linear between measured batch sizes).
  assert.equal(uOf(latency, { latencyBudgetMs: 22 }, 32), 1);
  assert.equal(uOf(latency, { latencyBudgetMs: 21 }, 32), 0.5);
  assert.equal(uOf(latency, { latencyBudgetMs: 25, battery: 0.3 }), 0.25, 'both: the smaller u');
  assert.throws(() => latency.decide(x, {}), /needs a battery level or a latency budget/);
  assert.throws(() => battery.decide(x, { latencyBudgetMs: 5 }), /needs a latency table/);
  assert.throws(() => battery.decide(x, { battery: 1.5 }), /battery level must be in \[0, 1\]/);
  x.dispose();
  runner.dispose();
  model.dispose();
});

test('latency tables: lookup by batch and level; malformed tables fail clearly', () => {
  const ms = { '1': 2, '8': 9, '64': 30 };
  assert.equal(latencyAtBatch(ms, 8), 9);
  assert.equal(latencyAtBatch(ms, 4), 2 + (7 * 3) / 7);
  assert.equal(latencyAtBatch(ms, 1), 2);
  assert.equal(latencyAtBatch(ms, 128), 60, 'beyond the largest measured batch: proportional');
  const t = parseLatencyTable({ levels: [{ u: 0.5, latencyMs: { '1': 1 } }, { u: 1, latencyMs: { '1': 3 } }] });
  assert.equal(latencyOf(t, 0.3, 1), 1, 'the entry of the smallest u >= 0.3');
  assert.equal(latencyOf(t, 0.6, 1), 3);
  assert.equal(latencyOf(t, 0.6, 1, (a, b) => Math.round(a * 2) === Math.round(b * 2)), 1, 'same level first');
  assert.throws(() => parseLatencyTable({ levels: [] }, 'x.json'), /x\.json is not a latency table/);
  assert.throws(() => parseLatencyTable({ levels: [{ u: 1.5, latencyMs: { '1': 1 } }] }), /levels\.0\.u/);
  assert.throws(() => parseLatencyTable({ levels: [{ u: 1, latencyMs: { one: 1 } }] }), /latencyMs\.one/);
  assert.throws(() => parseLatencyTable({ levels: [{ u: 1, latencyMs: {} }] }), /has no latency/);
});
