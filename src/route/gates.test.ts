import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { fullSel, layerFromConfig } from '../layers/index.js';
import { Network } from '../models/network.js';
import { createModel } from '../models/zoo.js';
import { DynnError } from '../util/errors.js';
import { RoutingState } from './context.js';
import { DGGateNet, GateNet, nestedDecision } from './gates.js';
import { scaleChannels } from '../layers/channel.js';
import { nestedCounts } from './count.js';
import { mechanisms } from './mechanisms.js';
import { gatedTestNet, testBatch, TEST_GROUPS } from './fixtures.js';
import { flatLayout, gradientStep } from '../train/step.js';

before(async () => {
  await initEngine('wasm');
});

const G = TEST_GROUPS;
const ctx = { plan: { u: 1, groups: new Map(), depth: new Map(), level: 0 }, training: false };

/** Sets every DGConv gate parameter: negative switches its binary gate off (the convolution goes depthwise). */
function setDGGates(layerWeights: { name: string; variable: tf.Variable }[], s: number): void {
  for (const w of layerWeights) if (w.name.endsWith('.gates')) w.variable.assign(tf.fill(w.variable.shape, s));
}

const gateMacs = (net: Network) => net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);

test('the DG gate: one logit per group, open at the start for every sample (all groups run at threshold 0.5); acs-dg registered', () => {
  const gate = new DGGateNet('g', { width: 8, outputs: G });
  gate.build([10, 10, 16], 1);
  assert.deepEqual(gate.outShape, [G]);
  assert.deepEqual(gate.weights().map((w) => w.name), [
    'g.reduce.kernel', 'g.reduce.bias', 'g.conv1.kernel', 'g.conv1.gates', 'g.se.reduce.kernel', 'g.se.reduce.bias',
    'g.se.expand.kernel', 'g.se.expand.bias', 'g.conv2.kernel', 'g.conv2.gates', 'g.fc.kernel', 'g.fc.bias',
  ]);
  const x = tf.randomNormal([5, 10, 10, 16], 0, 3, 'float32', 4);
  const before = tf.memory().numTensors;
  const logits = tf.tidy(() => gate.call(x, fullSel(16), ctx).y.arraySync() as number[][]);
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  assert.equal(logits.length, 5);
  for (const row of logits) row.forEach((v) => assert.ok(Math.abs(v - 5) < 1e-5, `open logit ${v}`));
  assert.throws(() => gate.freeze(), /a gate has no frozen form/);
  const copy = layerFromConfig(gate.getConfig());
  assert.ok(copy instanceof DGGateNet && copy.args.width === 8);
  x.dispose();
  gate.weights().forEach((w) => w.variable.dispose());

  const net = gatedTestNet('acs-dg');
  const xs = tf.randomNormal([6, 8, 8, 2], 0, 1, 'float32', 6);
  const routing = RoutingState.start('hard', 6, { threshold: 0.5 });
  const n0 = tf.memory().numTensors;
  tf.tidy(() => {
    net.forward(xs, net.plan(1), { routing });
  });
  assert.equal(tf.memory().numTensors, n0, 'no tensor leaks');
  for (const b of ['b1', 'b2']) assert.deepEqual(Array.from(routing.decisions.get(b)!), [G, G, G, G, G, G]);
  xs.dispose();
  net.dispose();

  assert.deepEqual(mechanisms.list(), ['acs-dg', 'acs-gn', 'branch', 'moe', 'resolution', 'skip', 'skip-ff', 'spatial', 'width']);
  const dg = mechanisms.get('acs-dg');
  assert.deepEqual([8, 16, 32, 48, 64, 200].map((c) => dg.defaultWidth(c)), [4, 4, 8, 16, 16, 64]);
  assert.deepEqual(dg.defaults, mechanisms.get('acs-gn').defaults);
});

test('soft routing trains the DG gate: gradients reach its DGConv gates and SE weights', () => {
  // Width 8: each SE's hidden layer has two units (ratio 4), so a ReLU that is off does not stop all of it.
  const net = gatedTestNet('acs-dg', 8);
  // The output layer's kernel starts at zero, which stops every gradient to the layers in front of it;
  // after the first update it no longer is.
  for (const w of net.weights()) if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 0.5, 'float32', 12));
  const layout = flatLayout(net);
  const { images, labels } = testBatch();
  const grads = new Float32Array(layout.total);
  const before = tf.memory().numTensors;
  const r = gradientStep(net, layout, images, labels, { plans: [net.plan(1)], routing: { mode: 'soft', seed: 3, efficiency: { target: 0.3, weight: 10 } } }, grads);
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  assert.ok(r.flopsRatio !== undefined && r.flopsRatio > 0 && Number.isFinite(r.loss));
  const grad = (name: string) => {
    const i = layout.names.indexOf(name);
    assert.ok(i >= 0, `${name} is trained`);
    return Array.from(grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]));
  };
  for (const b of ['b1', 'b2']) {
    for (const name of ['conv1.gates', 'conv2.gates', 'se.reduce.kernel', 'se.reduce.bias', 'se.expand.kernel', 'se.expand.bias', 'fc.bias']) {
      const g = grad(`${b}.gate.${name}`);
      assert.ok(g.every(Number.isFinite) && g.some((v) => Math.abs(v) > 1e-9), `${b}.gate.${name}: ${g}`);
    }
  }
  net.dispose();
});

test('the DG gate costs what its DGConvs report: below the GN gate at the same width once its DGConv gates are off', () => {
  const gn = gatedTestNet('acs-gn', 8);
  const dg = gatedTestNet('acs-dg', 8);
  const dense = gateMacs(dg);
  setDGGates(dg.weights(), -1);
  const grouped = gateMacs(dg);
  assert.ok(grouped < gateMacs(gn), `DG ${grouped} vs GN ${gateMacs(gn)} MACs`);
  assert.ok(grouped < dense, 'grouping lowers the gate cost');
  // Each DGConv's entry is its own cost: depthwise, 9 MACs per output element.
  const convs = dg.cost(1).layers.filter((c) => c.gate && c.kind === 'DGConv2D');
  assert.equal(convs.length, 4);
  const b1conv2 = convs.find((c) => c.name === 'b1.gate.conv2')!;
  assert.equal(b1conv2.macs, 4 * 4 * 9 * 8);
  // What a sample that skips every group pays is that grouped gate cost.
  const x = tf.randomNormal([3, 8, 8, 2], 0, 1, 'float32', 8);
  const none = RoutingState.start('hard', 3, { threshold: 1 });
  tf.tidy(() => dg.forward(x, dg.plan(1), { routing: none }));
  assert.ok(Math.abs(none.executedMacs[0] - grouped) < 1e-6, `executed ${none.executedMacs[0]} vs ${grouped}`);
  x.dispose();
  gn.dispose();
  dg.dispose();
});

test('acs-dg refuses a gate width that is not a power of two, naming gateWidth, when the model is built', () => {
  assert.throws(
    () => createModel('resnet38', { dynamic: 'acs-dg', gateWidth: 6, inputShape: [8, 8, 1], blocksPerStage: 1 }),
    (e: unknown) => e instanceof DynnError && /s0\.b0\.gate: an acs-dg gate's width \(gateWidth\) must be a power of two >= 2.*got 6/.test(e.message),
  );
  assert.throws(() => new DGGateNet('g', { width: 1, outputs: 2 }).build([4, 4, 4]), /gateWidth\) must be a power of two >= 2.*got 1/);
  const gn = new GateNet('gn', { width: 6, outputs: 2 });
  gn.build([4, 4, 4]);
  assert.ok(gn.weights().length > 0, 'acs-gn takes any width');
  gn.weights().forEach((w) => w.variable.dispose());
});

test('soft decisions sample the nested distribution with either estimator, repeat with the seed, and pass the gradient of their surrogate', () => {
  const n = 4000;
  // Logits per group: the probability of running at least g + 1 groups is prod sigmoid(z_j).
  const z = [2, 0, -1];
  const logits = tf.tensor2d(Array.from({ length: n }, () => z).flat(), [n, z.length]);
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const expected = z.map((_, g) => z.slice(0, g + 1).reduce((p, v) => p * sig(v), 1));
  for (const estimator of ['sigmoid', 'gumbel'] as const) {
    const before = tf.memory().numTensors;
    const run = (seed: number) =>
      tf.tidy(() => {
        const d = nestedDecision('b1', logits, RoutingState.start('soft', n, { seed, estimator }));
        return { counts: d.counts, surrogate: d.surrogate.arraySync() as number[][] };
      });
    const { counts, surrogate } = run(3);
    assert.equal(tf.memory().numTensors, before, `${estimator}: no tensor leaks`);
    assert.deepEqual(Array.from(run(3).counts), Array.from(counts), `${estimator}: the seed repeats the decisions`);
    assert.notDeepEqual(Array.from(run(4).counts), Array.from(counts), `${estimator}: another seed, other decisions`);
    expected.forEach((p, g) => {
      const share = counts.filter((k) => k > g).length / n;
      assert.ok(Math.abs(share - p) < 0.03, `${estimator}: P(count > ${g}) = ${share}, expected ${p.toFixed(3)}`);
    });
    if (estimator === 'sigmoid') surrogate.forEach((row) => row.forEach((v, g) => assert.ok(Math.abs(v - expected[g]) < 1e-5)));
    else {
      // The first group's relaxed decision sides with its hard one (both are the sign of z + noise).
      counts.forEach((k, i) => assert.equal(surrogate[i][0] > 0.5, k > 0, `sample ${i}`));
    }
    const grad = tf.tidy(() => {
      const g = tf.grad((l: tf.Tensor) => {
        const d = nestedDecision('b1', l as tf.Tensor2D, RoutingState.start('soft', n, { seed: 3, estimator }));
        return tf.sum(scaleChannels(tf.ones([n, 3, 3, 2]), { q: d.surrogate, k: 1, width: 2 }));
      })(logits);
      return g.arraySync() as number[][];
    });
    // The first group's factor (2 channels of 3x3 ones) has the gradient of its surrogate, sigmoid(z_0) or,
    // with gumbel, sigmoid(z_0 + noise): 18 s (1 - s), which differs per sample only with the noise.
    grad.forEach((row, i) => {
      const s0 = surrogate[i][0];
      assert.ok(Math.abs(row[0] - 18 * s0 * (1 - s0)) < 1e-4, `${estimator}, sample ${i}: gradient ${row[0]}, expected ${18 * s0 * (1 - s0)}`);
    });
    assert.equal(new Set(grad.map((row) => row[0].toFixed(6))).size > 1, estimator === 'gumbel', `${estimator}: per-sample gradients differ only with the noise`);
  }
  assert.throws(() => RoutingState.start('soft', 2, { estimator: 'reinforce' as never }), /unknown gate estimator "reinforce"; expected one of sigmoid, gumbel/);
  logits.dispose();
});

test('nestedCounts: the prefix of groups whose q_g = prod sigmoid(z_j) passes the cut, per-row cuts, and the same counts as nestedDecision', () => {
  // z = 0 gives q = 0.5, 0.25, ...: at cut 0.3 one group, at 0.2 two.
  assert.deepEqual([...nestedCounts([0, 0, 0, 0], 4, 0.3)], [1]);
  assert.deepEqual([...nestedCounts([0, 0, 0, 0], 4, 0.2)], [2]);
  // A closed first group closes the rest, even if they are wide open (nesting).
  assert.deepEqual([...nestedCounts([-9, 9, 9, 9, 9, 9, 9, 9], 4, 0.5)], [0, 4]);
  assert.deepEqual([...nestedCounts([0, 0, 0, 0], 2, [0.6, 0.4])], [0, 1]);
  assert.deepEqual([...nestedCounts([50, 50, -50, -50], 2, 0)], [2, 2], 'threshold 0: every group');
  assert.throws(() => nestedCounts([0, 0, 0], 2, 0.5), /do not split/);
  const logits = tf.tensor2d(Float32Array.from({ length: 6 * G }, (_, i) => 3 * Math.sin(i * 1.7)), [6, G]);
  const routing = RoutingState.start('hard', 6, { threshold: 0.3 });
  const d = tf.tidy(() => nestedDecision('g', logits, routing).counts);
  assert.deepEqual([...d], [...nestedCounts(logits.dataSync(), G, 0.3)]);
  logits.dispose();
});
