import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { RoutingState } from './context.js';
import { MultiBranch, parseBranches } from './branches.js';
import { flatLayout, gradientStep } from '../train/step.js';
import { evaluateRouted, routedSweep } from '../eval/routed.js';
import { evaluate } from '../eval/evaluate.js';
import { calibrateBatchNorm } from '../train/calibrate.js';
import type { ImageSet } from '../data/types.js';

before(async () => {
  await initEngine('wasm');
});

const SMALL = 'vgg-w:widths=4,4,8,8:hidden=16,vgg-w:widths=8,8,8,8:hidden=16,vgg-w:widths=8,8,16,16:hidden=32';

function net(branches = SMALL): Network {
  // Gate scale 1: the spread logits below then put samples on every route (the mechanism's default is 10).
  return createModel('multi-branch', { branches, inputShape: [8, 8, 2], numClasses: 3, gateScale: 1 });
}

/** Gate logits spread by the input, so samples take different branches. */
function spreadGate(model: Network): void {
  for (const w of model.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.zeros(w.variable.shape));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 60, 'float32', 7));
  }
}

function batch(n: number, seed = 5): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.randomNormal([n, 8, 8, 2], 0, 1, 'float32', seed), tf.reshape(tf.linspace(0.2, 3, n), [n, 1, 1, 1])));
}

test('--branches: model names start branches, key=value sets arguments, a list runs over the commas after it', () => {
  assert.deepEqual(parseBranches('vgg-w:widths=8,8,16,16:hidden=64,vgg-w,resnet-d:width=8'), [
    { model: 'vgg-w', args: { widths: [8, 8, 16, 16], hidden: 64 } },
    { model: 'vgg-w', args: {} },
    { model: 'resnet-d', args: { width: 8 } },
  ]);
  assert.throws(() => parseBranches('vgg-w,vgg'), /unknown model "vgg"; expected one of .*vgg-w/);
  assert.throws(() => parseBranches('vgg-w:depth=3,vgg-w'), /vgg-w takes no argument "depth"; expected one of widths, hidden/);
  assert.throws(() => parseBranches('vgg-w:hidden=x,vgg-w'), /hidden=x is not a number/);
  assert.throws(() => parseBranches('vgg-w:hidden=8,16,vgg-w'), /hidden is one number/);
  assert.throws(() => parseBranches('vgg-w'), /at least 2 branches/);
  assert.throws(() => parseBranches('multi-branch,vgg-w'), /cannot itself be a multi-branch/);
  // Values a model cannot be built with are refused by name, before any tensor is made.
  assert.throws(() => parseBranches('vgg-w:widths=-1,8,16,16,vgg-w'), /vgg-w's widths must be a positive integer up to 4096, got \[-1,8,16,16\]/);
  assert.throws(() => parseBranches('vgg-w:hidden=0.5,vgg-w'), /vgg-w's hidden must be a positive integer up to 4096, got 0.5/);
  assert.throws(() => parseBranches('vgg-w:hidden=100000000,vgg-w'), /up to 4096, got 100000000/);
  assert.throws(() => parseBranches('vgg-w:toString=1,vgg-w'), /vgg-w takes no argument "toString"/);
  assert.throws(() => parseBranches(Array.from({ length: 17 }, () => 'vgg-w').join(',')), /at most 16 branches, got 17/);
});

test('branches that disagree with the data, out of cost order, or misused options: clear errors before training', () => {
  assert.throws(() => net('vgg-w:widths=4,4,8,8,vgg-w:inputShape=32,32,3'), /branch 2 \(vgg-w\) takes 32x32x3 inputs; the multi-branch network takes 8x8x2/);
  assert.throws(() => net('vgg-w:widths=4,4,8,8,vgg-w:numClasses=5'), /branch 2 \(vgg-w\) predicts 5 classes; the multi-branch network predicts 3/);
  assert.throws(() => net('vgg-w,vgg-w:widths=4,4,8,8'), /cheapest first.*vgg-w [\d.]+ MFLOPs, vgg-w [\d.]+ MFLOPs/);
  assert.throws(() => createModel('multi-branch', { branches: SMALL, inputShape: [2, 2, 1], numClasses: 3 }), /branch 1 \(vgg-w\) cannot take 2x2x1 inputs/);
  assert.throws(() => createModel('multi-branch', { dynamic: 'acs-gn', inputShape: [8, 8, 2], numClasses: 3 }), /multi-branch takes --dynamic branch, not acs-gn/);
  assert.throws(() => createModel('vgg-w', { dynamic: 'branch' }), /--dynamic branch needs --model multi-branch/);
  assert.throws(() => createModel('vgg-w', { branches: SMALL }), /--branches needs --model multi-branch/);
});

test('each branch runs only on the rows its gate sent it (no mask); a sample pays its gate and its branch', () => {
  const model = net();
  spreadGate(model);
  const mb = model.layers[0] as MultiBranch;
  const x = batch(12);
  const rows: number[][] = [[], [], []];
  const firsts = [0, 1, 2].map((k) => mb.branch(k).layers[0]);
  const calls = firsts.map((l) => l.call.bind(l));
  firsts.forEach((l, k) => (l.call = (y, sel, ctx) => (rows[k].push(y.shape[0]), calls[k](y, sel, ctx))));
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 12, { threshold: 0.5 });
  const scores = tf.tidy(() => model.forward(x, model.plan(1), { routing }).arraySync());
  const routes = routing.decisions.get('mb')!;
  assert.ok(new Set(routes).size > 1, `samples take different branches: ${routes}`);
  for (let k = 0; k < 3; k++) {
    const taken = routes.filter((r) => r === k).length;
    assert.deepEqual(rows[k], taken ? [taken] : [], `branch ${k} ran once, on its ${taken} rows`);
  }
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  // Each sample's scores are its branch's on it alone, and it paid its gate and that branch.
  const gateMacs = model.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  for (let i = 0; i < 12; i++) {
    const k = routes[i];
    const alone = tf.tidy(() => mb.branch(k).forward(tf.slice(x, [i, 0, 0, 0], [1, 8, 8, 2]), mb.branch(k).plan(1)).arraySync()[0]);
    scores[i].forEach((v, c) => assert.ok(Math.abs(v - alone[c]) < 1e-4, `sample ${i} class ${c}`));
    assert.ok(Math.abs(routing.executedMacs[i] - gateMacs - mb.routeMacs(k)) < 1e-6);
  }
  // The masked baseline runs the costliest branch (the full network) on every row.
  rows.forEach((r) => (r.length = 0));
  tf.tidy(() => model.forward(x, model.plan(1), { routing: RoutingState.start('masked', 12) }));
  assert.deepEqual(rows, [[], [], [12]]);
  firsts.forEach((l, k) => (l.call = calls[k]));
  x.dispose();
  model.dispose();
});

test('u picks a branch for every sample (the routes train and evaluate before the gate); cost, FLOPs ratio and parameters', () => {
  const model = net();
  const mb = model.layers[0] as MultiBranch;
  assert.equal(model.numLevels, 4);
  assert.deepEqual(model.levelUtilizations().map((u) => mb.routeOf(model.plan(u))), [0, 1, 2]);
  const { fixed, backbone } = model.routedMacs(1);
  assert.equal(fixed, 0);
  assert.equal(backbone, mb.routeMacs(2), 'the full network is the costliest branch');
  assert.ok(mb.routeMacs(0) < mb.routeMacs(1) && mb.routeMacs(1) < mb.routeMacs(2));
  const x = batch(4);
  tf.tidy(() => {
    const sub = model.subnet(0.25);
    const a = sub.predict(x);
    const b = mb.branch(0).forward(x, mb.branch(0).plan(1));
    assert.ok(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] < 1e-4, 'the frozen subnet at u = 0.25 is branch 0');
    sub.dispose();
  });
  x.dispose();
  assert.ok(model.weights().some((w) => w.name === 'mb.b2.c2.conv.kernel') && model.weights().some((w) => w.name === 'mb.gate.fc.kernel'));
  model.dispose();
});

test('soft step: the gate learns from the cost term and the task, the branches stay frozen, no leak', () => {
  const model = net();
  const layout = flatLayout(model);
  const images = Float32Array.from({ length: 8 * 128 }, (_, i) => Math.sin(i * 0.37));
  const labels = Int32Array.from({ length: 8 }, (_, i) => i % 3);
  const grads = new Float32Array(layout.total);
  const before = tf.memory().numTensors;
  const r = gradientStep(model, layout, images, labels, { plans: [model.plan(1)], routing: { mode: 'soft', seed: 3, efficiency: { target: 0.2, weight: 10 } }, gatesOnly: true }, grads);
  assert.ok(r.flopsRatio !== undefined && r.flopsRatio > 0.2 && r.flopsRatio <= 1.1, `${r.flopsRatio}`);
  const at = (name: string) => {
    const i = layout.names.indexOf(name);
    return Array.from(grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]));
  };
  assert.ok(at('mb.gate.fc.bias').every((v) => v > 0), `above the target, every logit is pushed down (${at('mb.gate.fc.bias')})`);
  for (const name of layout.names.filter((n) => !n.includes('.gate.'))) assert.ok(at(name).every((v) => v === 0), `${name} is frozen`);
  // Before the gate (routing full, a plan per branch: the sandwich rule), every branch learns.
  gradientStep(model, layout, images, labels, { plans: [1, 0.25, 0.5].map((u) => model.plan(u)), inplaceDistill: true, inplaceAlpha: 0.5, routing: { mode: 'full', seed: 1 } }, grads);
  for (const k of [0, 1, 2]) assert.ok(at(`mb.b${k}.classifier.kernel`).some((v) => v !== 0), `branch ${k} learns`);
  assert.ok(at('mb.gate.fc.bias').every((v) => v === 0), 'the gate does not run before it is trained');
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  model.dispose();
});

test('evaluation, calibration and the threshold sweep run on a multi-branch network', () => {
  const model = net();
  spreadGate(model);
  const n = 24;
  const images = Uint8Array.from({ length: n * 128 }, (_, i) => (i * 37) % 256);
  const data: ImageSet = { count: n, height: 8, width: 8, channels: 2, images, labels: Uint8Array.from({ length: n }, (_, i) => i % 3) };
  assert.ok(calibrateBatchNorm(model, data, { samples: n }) > 0);
  calibrateBatchNorm(model, data, { us: [1], samples: n, threshold: 0.5 });
  const e = evaluateRouted(model, data, { threshold: 0.5 });
  assert.ok(e.flopsRatio > 0 && e.flopsRatio <= 1.1 && e.flopsMin <= e.flopsMax);
  // Which branch each class's samples took (the views' table): shares of each class, summing to 1.
  const shares = e.routes!.mb;
  assert.equal(shares.length, 3);
  for (const row of shares) assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-9, `${row}`);
  assert.equal(evaluate(model, data, 1).count, n);
  const s = routedSweep(model, data, [0.5, 0.9], { noLatency: true });
  assert.equal(s.points.length, 2);
  assert.ok(s.points[1].flopsRatio <= s.points[0].flopsRatio + 1e-9, 'a higher threshold picks cheaper branches');
  model.dispose();
});

test('training: the sandwich rule trains the branches in the pretraining epochs, then the gate alone (branches unchanged, fresh optimizer)', async () => {
  const { train } = await import('../train/trainer.js');
  type Options = Parameters<typeof train>[0];
  const { loadRun } = await import('../train/run.js');
  const os = await import('node:os');
  const path = await import('node:path');
  const fs = await import('node:fs/promises');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dynn-mb-'));
  const common: Options = { model: 'multi-branch', modelArgs: { branches: 'vgg-w:widths=4,4,8,8:hidden=16,vgg-w:widths=8,8,8,8:hidden=16' }, dataset: 'synthetic', trainLimit: 256, testLimit: 64, batchSize: 64, workers: 0, evalUs: [1], calibrationSamples: 64, out: dir };
  try {
    const first = await train({ ...common, schedule: 'sandwich', sandwichWidths: 1, epochs: 1, pretrainEpochs: 1, lr: 0.05 });
    const before = new Map(first.model.getWeights().map((w) => [w.name, w.data]));
    first.model.dispose();
    // Resumed into its gate epoch: the optimizer starts afresh and only the gate moves.
    const second = await train({ ...common, schedule: 'sandwich', sandwichWidths: 1, epochs: 2, pretrainEpochs: 1, resume: true });
    const after = second.model.getWeights();
    second.model.dispose();
    for (const w of after) {
      const same = w.data.every((v, i) => v === before.get(w.name)![i]);
      if (w.name.includes('.gate.')) continue;
      assert.ok(same || w.name.includes('running_'), `${w.name} is frozen in the gate epoch`);
    }
    assert.ok(after.some((w) => w.name.includes('.gate.') && w.data.some((v, i) => v !== before.get(w.name)![i])), 'the gate learns');
    const { meta } = await loadRun(dir);
    assert.ok(meta.history[1].gated !== undefined);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
