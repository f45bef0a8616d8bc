import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { RoutingState } from './context.js';
import { fitSwitchTarget, WidthSwitch } from './width.js';
import { flatLayout, gradientStep } from '../train/step.js';
import { isGateWeight } from './mechanisms.js';

before(async () => {
  await initEngine('wasm');
});

/** A small vgg-w with a width switch after its stem: 4 groups, 4 routes (1, 2, 3, 4 groups), 8x8 inputs, 3 classes. */
function widthNet(): Network {
  return createModel('vgg-w', { dynamic: 'width', inputShape: [8, 8, 1], numClasses: 3, groups: 4, widths: [8, 8, 16, 16], hidden: 16, gateWidth: 4 });
}

/** Gate logits 3 - 33 x (sum of the pooled gate features): larger inputs take narrower widths. */
function spreadGate(net: Network): void {
  for (const w of net.weights()) {
    if (w.name === 'switch.gate.fc.bias') w.variable.assign(tf.fill([3], 3));
    if (w.name === 'switch.gate.fc.kernel') w.variable.assign(tf.fill(w.variable.shape, -33));
  }
}

function inputs(n: number): tf.Tensor4D {
  return tf.tidy(() => tf.mul(tf.randomNormal([n, 8, 8, 1], 0, 1, 'float32', 9), tf.reshape(tf.linspace(0.05, 4, n), [n, 1, 1, 1])));
}

test('the width switch wraps everything after the stem; the weights keep the static model names, plus the gate', () => {
  const net = widthNet();
  const plain = createModel('vgg-w', { inputShape: [8, 8, 1], numClasses: 3, groups: 4, widths: [8, 8, 16, 16], hidden: 16 });
  assert.deepEqual(net.layers.map((l) => l.name), ['stem.conv', 'stem.bn', 'stem.relu', 'switch']);
  assert.deepEqual(net.weights().filter((w) => !isGateWeight(w.name)).map((w) => w.name), plain.weights().map((w) => w.name));
  assert.ok(net.gated);
  const sw = net.layers[3] as WidthSwitch;
  assert.deepEqual([0, 1, 2, 3].map((k) => sw.routeGroups(k)), [1, 2, 3, 4]);
  net.dispose();
  plain.dispose();
});

test('hard: each width runs once on exactly its samples, sliced (rows and channels counted), equal to the fixed-u network', () => {
  const net = widthNet();
  spreadGate(net);
  const sw = net.layers[3] as WidthSwitch;
  const x = inputs(16);
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 16, { threshold: 0.5 });
  const ran: { rows: number; level: number; c4: number }[] = [];
  const runTail = WidthSwitch.prototype.runTail;
  WidthSwitch.prototype.runTail = function (this: WidthSwitch, part, sel, ctx) {
    ran.push({ rows: part.shape[0], level: ctx.plan.level, c4: ctx.plan.groups.get('c4.conv')!.length });
    return runTail.call(this, part, sel, ctx);
  };
  let y: tf.Tensor2D;
  try {
    y = tf.tidy(() => net.forward(x, net.plan(1), { routing }));
  } finally {
    WidthSwitch.prototype.runTail = runTail;
  }
  const routes = routing.decisions.get('switch')!;
  assert.ok(new Set(routes).size >= 3, `samples spread over widths (${routes})`);
  const present = [...new Set(routes)].sort();
  // A masked implementation would run all 16 rows at the full width: here each width runs only its rows.
  assert.deepEqual(ran.map((r) => r.rows), present.map((k) => routes.filter((r) => r === k).length));
  assert.deepEqual(ran.map((r) => r.level), present.map((k) => sw.routeGroups(k)));
  assert.deepEqual(ran.map((r) => r.c4), present.map((k) => sw.routeGroups(k)), 'the tail sliced to the route’s groups');
  // Each sample is the fixed-u network at its width (no gate), run alone.
  const scores = y!.arraySync();
  const { fixed, backbone } = net.routedMacs(1);
  for (let i = 0; i < 16; i++) {
    const u = sw.routeGroups(routes[i]) / 4;
    const alone = tf.tidy(() => net.forward(tf.slice(x, [i, 0, 0, 0], [1, 8, 8, 1]), net.plan(u)).arraySync()[0]);
    alone.forEach((v, c) => assert.ok(Math.abs(v - scores[i][c]) < 1e-4, `sample ${i} class ${c}: ${v} vs ${scores[i][c]}`));
    // What it executed: the stem, the gate and the tail at its width: the fixed-u cost (which counts the gate).
    assert.ok(Math.abs(fixed + routing.executedMacs[i] - net.cost(u).macs) < 1e-6, `sample ${i} MACs`);
  }
  assert.ok(net.cost(0.25).macs < backbone / 2);
  y!.dispose();
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  x.dispose();
  net.dispose();
});

test('full mode and no routing: the fixed-u network (the supernet the sandwich rule trains)', () => {
  const net = widthNet();
  spreadGate(net);
  const x = inputs(4);
  tf.tidy(() => {
    const a = net.forward(x, net.plan(0.5));
    const b = net.forward(x, net.plan(0.5), { routing: RoutingState.start('full', 4) });
    assert.ok(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] === 0);
  });
  x.dispose();
  net.dispose();
});

test('gate training (gatesOnly): only the gate gets gradients, from the task, DS-Net’s gate loss and the complexity term; no leak', () => {
  const net = widthNet();
  const layout = flatLayout(net);
  const grads = new Float32Array(layout.total);
  const images = Float32Array.from({ length: 8 * 64 }, (_, i) => Math.sin(i * 0.37));
  const labels = Int32Array.from({ length: 8 }, (_, i) => i % 3);
  const before = tf.memory().numTensors;
  const r = gradientStep(net, layout, images, labels, { plans: [net.plan(1)], routing: { mode: 'soft', seed: 1, efficiency: { target: 0.3, weight: 8 } }, gatesOnly: true }, grads);
  assert.ok(r.flopsRatio! > 0 && Number.isFinite(r.loss));
  layout.names.forEach((name, j) => {
    const g = grads.subarray(layout.offsets[j], layout.offsets[j] + layout.sizes[j]);
    if (isGateWeight(name)) return;
    assert.ok(g.every((v) => v === 0), `${name} is frozen`);
  });
  const fc = layout.names.indexOf('switch.gate.fc.bias');
  assert.ok(grads.subarray(layout.offsets[fc], layout.offsets[fc] + 3).some((v) => v !== 0), 'the gate learns');
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  net.dispose();
});

test('a model a width switch does not fit, and width options without --dynamic width, are refused before training', () => {
  assert.throws(() => createModel('mlp-w', { dynamic: 'width' }), /--dynamic width chooses a width per sample; mlp-w is not throttleable after its first stage \(expected one of resnet38, vgg-w\)/);
  assert.throws(() => createModel('resnet-d', { dynamic: 'width' }), /resnet-d is not throttleable/);
  assert.throws(() => createModel('vgg-w', { widthRoutes: 3 }), /widthRoutes \(--width-routes\) needs --dynamic width/);
  assert.throws(() => createModel('vgg-w', { dynamic: 'width', groups: 4, widthRoutes: 5 }), /switch: routes must be an integer in 2..4/);
});

test('fitSwitchTarget shifts the gate so that deterministic decisions meet the FLOPs target on the images it saw', () => {
  const net = widthNet();
  spreadGate(net);
  const x = inputs(32);
  const { fixed, backbone } = net.routedMacs(1);
  for (const target of [0.4, 0.8]) {
    const reached = fitSwitchTarget(net, x, target, 0.5);
    const routing = RoutingState.start('hard', 32, { threshold: 0.5 });
    tf.tidy(() => net.forward(x, net.plan(1), { routing }));
    const ratio = routing.executedMacs.reduce((a, m) => a + (fixed + m) / backbone, 0) / 32;
    assert.ok(Math.abs(ratio - reached) < 1e-9, `the ratio it reports is the routed one (${ratio} vs ${reached})`);
    assert.ok(Math.abs(ratio - target) < 0.1, `target ${target}: ${ratio}`);
  }
  x.dispose();
  net.dispose();
});
