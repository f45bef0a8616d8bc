import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import type { Network } from '../models/network.js';
import type { Plan } from '../layers/index.js';
import { RoutingState } from './context.js';
import { GatedDenseUnit } from './dense.js';
import { gatedDenseTestNet, testBatch, TEST_GROUPS } from './fixtures.js';
import { flatLayout, gradientStep } from '../train/step.js';

before(async () => {
  await initEngine('wasm');
});

const G = TEST_GROUPS;
const UNITS = ['u1', 'u2'];

/** Gate logits spread by the input, so samples take different routes. */
function spreadGates(net: Network): void {
  for (const w of net.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.tensor1d([-0.05, 1.5, 0.5, -0.5]));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 40, 'float32', 11));
  }
}

/** Inputs of different scales, so the gates see different features. */
const spreadInput = (n: number) => tf.tidy(() => tf.mul(tf.randomNormal([n, 8, 8, 2], 0, 1, 'float32', 5), tf.reshape(tf.linspace(0.05, 4, n), [n, 1, 1, 1])));

/** The plan of one sample's decisions: each unit's first k bottleneck groups. */
function planOf(net: Network, counts: Int32Array[], i: number): Plan {
  const plan = net.plan(1);
  UNITS.forEach((u, j) => plan.groups.set(`${u}.conv1`, Int32Array.from({ length: counts[j][i] }, (_, g) => g)));
  return plan;
}

/** Rows each unit's routed work computes in a forward pass, and the routes it ran. */
function countRows(run: () => void): { rows: Map<string, number>; parts: Map<string, number[]> } {
  const rows = new Map<string, number>();
  const parts = new Map<string, number[]>();
  const proto = GatedDenseUnit.prototype as unknown as { runAt: (...a: unknown[]) => tf.Tensor };
  const runAt = proto.runAt;
  proto.runAt = function (this: GatedDenseUnit, ...a: unknown[]) {
    rows.set(this.name, (rows.get(this.name) ?? 0) + (a[0] as tf.Tensor).shape[0]);
    parts.set(this.name, [...(parts.get(this.name) ?? []), (a[3] as { plan: Plan }).plan.groups.get(`${this.name}.conv1`)!.length]);
    return runAt.apply(this, a);
  };
  try {
    run();
  } finally {
    proto.runAt = runAt;
  }
  return { rows, parts };
}

test('dense unit, hard routing: each sample runs its own bottleneck groups, batched, equal to running it alone at that width; no leak', () => {
  const net = gatedDenseTestNet();
  spreadGates(net);
  const x = spreadInput(12);
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 12, { threshold: 0.5 });
  let y!: tf.Tensor2D;
  const { rows, parts } = countRows(() => (y = tf.tidy(() => net.forward(x, net.plan(1), { routing }))));
  const counts = UNITS.map((u) => routing.decisions.get(u)!);
  assert.deepEqual([...rows.values()], [12, 12], 'every sample passes each unit once: no full-batch masked pass');
  assert.ok(new Set(counts[0]).size > 1, `the gates spread samples over routes (${counts[0]})`);
  assert.ok(counts.some((c) => c.includes(0)), `some sample skips a unit entirely (${counts})`);
  assert.ok(parts.get('u1')!.length < G + 1, `routes no sample takes are not run (${parts.get('u1')})`);
  const scores = y.arraySync();
  for (let i = 0; i < 12; i++) {
    const alone = tf.tidy(() => net.forward(tf.slice(x, [i, 0, 0, 0], [1, 8, 8, 2]), planOf(net, counts, i)).arraySync()[0]);
    alone.forEach((v, c) => assert.ok(Math.abs(v - scores[i][c]) < 1e-4, `sample ${i} class ${c}: ${v} vs ${scores[i][c]}`));
  }
  // Executed MACs: each unit's gate and its active groups, what the cost model says of the sample's plan.
  const gates = net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  const { fixed, backbone } = net.routedMacs(1);
  assert.equal(backbone, net.cost(1).layers.filter((c) => !c.gate).reduce((a, c) => a + c.macs, 0));
  for (let i = 0; i < 12; i++) {
    const routed = net.cost(planOf(net, counts, i)).layers.filter((c) => c.routed).reduce((a, c) => a + c.macs, 0);
    assert.ok(Math.abs(routing.executedMacs[i] - routed) < 1e-6, `sample ${i}: executed ${routing.executedMacs[i]} vs cost ${routed}`);
    assert.ok(fixed + routing.executedMacs[i] <= backbone + gates + 1e-6);
  }
  y.dispose();
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  x.dispose();
  net.dispose();
});

test('dense unit: one route (threshold 0: the whole batch, no gather) equals the plain network; threshold 1 adds zero channels and costs only the gates', () => {
  const net = gatedDenseTestNet();
  spreadGates(net);
  const x = spreadInput(5);
  const all = RoutingState.start('hard', 5, { threshold: 0 });
  const none = RoutingState.start('hard', 5, { threshold: 1 });
  tf.tidy(() => {
    let a!: tf.Tensor;
    const { parts } = countRows(() => (a = net.forward(x, net.plan(1), { routing: all })));
    assert.ok(tf.max(tf.abs(tf.sub(a, net.forward(x, net.plan(1))))).dataSync()[0] < 1e-4, 'every group on equals the plain network');
    assert.deepEqual(parts.get('u1'), [G], 'one route, run once');
    const unit = net.layers[1] as GatedDenseUnit;
    const h = net.layers[0].call(x, { full: 2, count: 2, index: null }, { plan: net.plan(1), training: false }).y;
    const out = unit.call(h, { full: 8, count: 8, index: null }, { plan: net.plan(1), training: false, routing: none }).y;
    assert.deepEqual(out.shape, [5, 8, 8, 12], 'the k new channels exist for the concatenation');
    assert.equal(tf.max(tf.abs(tf.slice(out, [0, 0, 0, 8], [5, 8, 8, 4]))).dataSync()[0], 0, 'no group: the unit contributes zeros');
    assert.equal(tf.max(tf.abs(tf.sub(tf.slice(out, [0, 0, 0, 0], [5, 8, 8, 8]), h))).dataSync()[0], 0, 'and passes its input through');
  });
  const none2 = RoutingState.start('hard', 5, { threshold: 1 });
  tf.tidy(() => {
    net.forward(x, net.plan(1), { routing: none2 });
  });
  assert.deepEqual(Array.from(none2.decisions.get('u2')!), [0, 0, 0, 0, 0]);
  const gateOnly = net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  assert.ok(Math.abs(none2.executedMacs[0] - gateOnly) < 1e-6, 'with every group skipped a sample pays only for the gates');
  x.dispose();
  net.dispose();
});

test('dense unit, soft routing: the efficiency term reaches the gates, the task loss reaches the sliced convolutions, no leak', () => {
  const net = gatedDenseTestNet('acs-dg');
  spreadGates(net);
  const layout = flatLayout(net);
  const { images, labels } = testBatch();
  const grads = new Float32Array(layout.total);
  const grad = (name: string) => {
    const i = layout.names.indexOf(name);
    assert.ok(i >= 0, name);
    return Array.from(grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]));
  };
  const before = tf.memory().numTensors;
  for (const estimator of ['sigmoid', 'gumbel'] as const) {
    const r = gradientStep(net, layout, images, labels, { plans: [net.plan(1)], routing: { mode: 'soft', seed: 3, efficiency: { target: 0.2, weight: 10 }, estimator } }, grads);
    assert.ok(r.flopsRatio !== undefined && r.flopsRatio > 0, `${estimator}: flops ratio ${r.flopsRatio}`);
    assert.ok(grad('u1.gate.fc.bias').some((v) => Math.abs(v) > 1e-6), `${estimator}: the gate gets a gradient`);
    assert.ok(grad('u2.conv1.kernel').some((v) => Math.abs(v) > 1e-6), `${estimator}: the bottleneck convolution learns`);
  }
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  net.dispose();
});

test('a gated dense unit refuses groups that do not divide its bottleneck, and depth gating on top', () => {
  assert.throws(() => new GatedDenseUnit('u', { growth: 4, bottleneck: 6, groups: 4, mechanism: 'acs-gn', levels: 5 }).build([8, 8, 8]), /u: 6 inner channels do not split into 4 groups/);
  assert.throws(() => new GatedDenseUnit('u', { growth: 4, groups: 4, mechanism: 'acs-gn', levels: 3 }).build([8, 8, 8]), /u: a gated unit keeps 5 BatchNorm rows/);
  assert.throws(() => new GatedDenseUnit('u', { growth: 4, groups: 4, mechanism: 'acs-dg', gateWidth: 6, levels: 5 }).build([8, 8, 8]), /u\.gate: an acs-dg gate's width \(gateWidth\) must be a power of two/);
});
