import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { RoutingState } from './context.js';
import { ResolutionSwitch } from './resolution.js';
import { flatLayout, gradientStep } from '../train/step.js';
import { calibrateBatchNorm } from '../train/calibrate.js';
import { evaluateRouted } from '../eval/routed.js';
import { BatchNorm } from '../layers/index.js';
import type { ImageSet } from '../data/types.js';

before(async () => {
  await initEngine('wasm');
});

// Gate scale 1: the spread logits below then put samples on every route (the mechanism's default is 10).
const ARGS = { inputShape: [8, 8, 2], numClasses: 3, width: 4, blocksPerStage: 1, gateScale: 1 };

function net(resolutions: number[] = [8, 6, 4]): Network {
  return createModel('resnet-d', { ...ARGS, dynamic: 'resolution', resolutions });
}

function spreadGate(model: Network): void {
  for (const w of model.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.zeros(w.variable.shape));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 60, 'float32', 7));
  }
}

function data(n: number): ImageSet {
  return { count: n, height: 8, width: 8, channels: 2, images: Uint8Array.from({ length: n * 128 }, (_, i) => (i * 37 + (i >> 7) * 11) % 256), labels: Uint8Array.from({ length: n }, (_, i) => i % 3) };
}

test('resolutions the input or the model cannot give: clear errors when the model is built', () => {
  assert.throws(() => net([10, 8]), /resolution 10 is larger than the input \(8x8\)/);
  assert.throws(() => net([8]), /at least two positive integers/);
  assert.throws(() => net([8, 4, 4]), /lists 4 twice/);
  assert.throws(() => createModel('vgg-w', { inputShape: [8, 8, 2], numClasses: 3, dynamic: 'resolution', resolutions: [8, 2] }), /vgg-w cannot run at 2x2 \(--resolutions\)/);
  assert.throws(() => createModel('vgg-w', { inputShape: [8, 8, 2], numClasses: 3, dynamic: 'resolution', resolutions: [8, 4] }), /vgg-w's weights depend on its input size.*resnet-d or resnet38/);
  assert.throws(() => createModel('resnet-d', { ...ARGS, dynamic: 'resolution' }), /--dynamic resolution needs --resolutions/);
  assert.throws(() => createModel('resnet-d', { ...ARGS, resolutions: [8, 4] }), /--resolutions needs --dynamic resolution/);
});

test('each resolution runs once, on the rows its gate sent there, resized; a sample pays its gate and its resolution', () => {
  const model = net();
  spreadGate(model);
  const sw = model.layers[0] as ResolutionSwitch;
  assert.deepEqual([0, 1, 2].map((k) => sw.size(k)), [[4, 4], [6, 6], [8, 8]], 'routes ascending in cost');
  assert.ok(sw.routeMacs(0) < sw.routeMacs(1) && sw.routeMacs(1) < sw.routeMacs(2));
  const stem = model.weights().find((w) => w.name === 'stem.conv.kernel');
  assert.ok(stem, 'the backbone keeps its weight names (a static run initializes it)');
  const first = sw.children()[1];
  const call = first.call.bind(first);
  const seen: number[][] = [];
  first.call = (y, sel, ctx) => (seen.push([y.shape[0], y.shape[1]!]), call(y, sel, ctx));
  const x = tf.tidy(() => tf.mul(tf.randomNormal([12, 8, 8, 2], 0, 1, 'float32', 3), tf.reshape(tf.linspace(0.2, 3, 12), [12, 1, 1, 1])));
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 12, { threshold: 0.5 });
  tf.tidy(() => {
    model.forward(x, model.plan(1), { routing });
  });
  first.call = call;
  const routes = routing.decisions.get('res')!;
  assert.ok(new Set(routes).size > 1, `samples take different resolutions: ${routes}`);
  const want = [0, 1, 2].map((k) => [routes.filter((r) => r === k).length, sw.size(k)[0]]).filter(([n]) => n > 0);
  assert.deepEqual(seen, want, 'one pass per resolution, on its rows only, at its size');
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  const gateMacs = model.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  routes.forEach((k, i) => assert.ok(Math.abs(routing.executedMacs[i] - gateMacs - sw.routeMacs(k)) < 1e-6));
  x.dispose();
  model.dispose();
});

test('BatchNorm keeps a row per resolution; the frozen subnet of a u runs its resolution as the layers do', () => {
  const model = net();
  const d = data(24);
  calibrateBatchNorm(model, d, { samples: 24 });
  const bn = model.layers[0].children().find((l) => l instanceof BatchNorm) as BatchNorm;
  const mean = bn.weights().find((w) => w.name.endsWith('running_mean'))!.variable.arraySync() as number[][];
  const top = mean.length - 1;
  assert.notDeepEqual(mean[top], mean[top - 2], 'the 4x4 and 8x8 routes have their own statistics');
  const x = tf.tidy(() => tf.randomNormal([5, 8, 8, 2], 0, 1, 'float32', 9));
  for (const u of model.levelUtilizations()) {
    tf.tidy(() => {
      const sub = model.subnet(u);
      const diff = tf.max(tf.abs(tf.sub(sub.predict(x), model.forward(x, model.plan(u))))).dataSync()[0];
      sub.dispose();
      assert.ok(diff < 1e-3, `u = ${u}: ${diff}`);
    });
  }
  x.dispose();
  const e = evaluateRouted(model, d, { threshold: 0.5 });
  assert.ok(e.flopsRatio > 0 && e.flopsRatio <= 1.2);
  model.dispose();
});

test('soft step: only the gate learns (the network is frozen), every resolution trains before it, no leak', () => {
  const model = net();
  const layout = flatLayout(model);
  const images = Float32Array.from({ length: 8 * 128 }, (_, i) => Math.sin(i * 0.37));
  const labels = Int32Array.from({ length: 8 }, (_, i) => i % 3);
  const grads = new Float32Array(layout.total);
  const at = (name: string) => {
    const i = layout.names.indexOf(name);
    return Array.from(grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]));
  };
  const before = tf.memory().numTensors;
  gradientStep(model, layout, images, labels, { plans: [model.plan(1)], routing: { mode: 'soft', seed: 3, efficiency: { target: 0.2, weight: 10 } }, gatesOnly: true }, grads);
  assert.ok(at('res.gate.fc.bias').every((v) => v > 0), `above the target the gate is pushed toward smaller resolutions (${at('res.gate.fc.bias')})`);
  assert.ok(at('classifier.kernel').every((v) => v === 0), 'the network is frozen while the gate trains');
  gradientStep(model, layout, images, labels, { plans: model.levelUtilizations().reverse().map((u) => model.plan(u)), inplaceDistill: true, inplaceAlpha: 0.5, routing: { mode: 'full', seed: 1 } }, grads);
  assert.ok(at('classifier.kernel').some((v) => v !== 0), 'the network learns at every resolution');
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  model.dispose();
});
