import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { makeSynthetic } from '../data/synthetic.js';
import { toFloat } from '../data/imageset.js';
import { batchNorms } from '../train/calibrate.js';
import { GateSet, calibratedSubnet, complexity, gatedBlocks, gatedRunner, planFromGroups } from './gates.js';
import { complexityPenalty, maskedForward, trainGates } from './gate-training.js';
import { loadGates, runRef, saveGates } from './store.js';

before(async () => {
  await initEngine('wasm');
});

const tinyVgg = () => createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, seed: 2 });
const data = makeSynthetic({ count: 64, seed: 4 });
const x64 = () => tf.tensor(toFloat(data, 0, 64), [64, 28, 28, 1]);

/** Sets one block's gate MLP to constant logits (zero output kernel). */
function constantGates(gates: GateSet, block: number, logits: number[]): void {
  const net = gates.nets[block];
  const [, , kernel, bias] = net.weights();
  tf.tidy(() => {
    kernel.variable.assign(tf.zerosLike(kernel.variable));
    bias.variable.assign(tf.tensor1d(logits));
  });
}

test('hard gates keep round(sum p) groups of highest probability; complexity and plan level', () => {
  const model = tinyVgg();
  const blocks = gatedBlocks(model);
  assert.deepEqual(blocks.map((b) => b.name), ['c2.conv', 'c3.conv', 'c4.conv', 'fc1']);
  const gates = new GateSet({ blocks });
  const logits = [3, -3, 0.5, -0.2, 2, -5, -1, 0];
  constantGates(gates, 0, logits);
  const p = logits.map((z) => 1 / (1 + Math.exp(-z)));
  const d = Math.round(p.reduce((a, b) => a + b, 0));
  assert.equal(d, 4);
  assert.deepEqual(Array.from(gates.hardGroups(0.7).get('c2.conv')!), [0, 2, 4, 7]);
  constantGates(gates, 3, [-9, -9, -9, -9, -9, -9, -9, -9]);
  assert.deepEqual(Array.from(gates.hardGroups(0.7).get('fc1')!), [0], 'at least one group runs');

  const groups = new Map([
    ['c2.conv', Int32Array.from([1, 5])],
    ['c3.conv', Int32Array.from([0, 2, 4, 6])],
    ['c4.conv', Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7])],
    ['fc1', Int32Array.from([3])],
  ]);
  const plan = planFromGroups(model, 0.5, groups);
  const c = (2 / 8 + 4 / 8 + 1 + 1 / 8) / 4;
  assert.equal(complexity(plan, blocks), c);
  assert.equal(plan.level, Math.round(c * 8));
  assert.throws(() => planFromGroups(model, 0.5, new Map([['c2.conv', Int32Array.from([0])]])), /no active groups for block "c3\.conv"/);
  assert.throws(() => gatedBlocks(createModel('resnet-d')), /has no widthwise blocks/);
  gates.dispose();
  model.dispose();
});

test('complexity penalties C_hinge^p and C_dist^p (DTNN Eq. 7-8)', () => {
  assert.equal(complexityPenalty(0.3, 0.4, 'hinge', 1), 0);
  assert.ok(Math.abs(complexityPenalty(0.6, 0.4, 'hinge', 2) - 0.04) < 1e-12);
  assert.ok(Math.abs(complexityPenalty(0.3, 0.4, 'dist', 1) - 0.1) < 1e-12);
  assert.ok(Math.abs(complexityPenalty(0.7, 0.4, 'dist', 2) - 0.09) < 1e-12);
});

function close(a: tf.Tensor, b: tf.Tensor, tol: number, what: string): void {
  const x = a.dataSync() as Float32Array;
  const y = b.dataSync() as Float32Array;
  assert.equal(x.length, y.length);
  const scale = Math.max(1, ...Array.from(y, Math.abs));
  for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i] - y[i]) <= tol * scale, `${what}: ${x[i]} vs ${y[i]} at ${i}`);
}

test('CONCRETE masks: all-ones equals the full network, 0/1 masks equal the sliced plan (training-mode BatchNorm)', () => {
  const model = tinyVgg();
  const gates = new GateSet({ blocks: gatedBlocks(model) });
  const x = x64();
  const groups = new Map(gates.blocks.map((b, i) => [b.name, Int32Array.from([[0, 3], [1, 2, 7], [5], [0, 1, 2, 3, 4, 5]][i])]));
  const plan = planFromGroups(model, 0.5, groups);
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    const ones = gates.blocks.map((b) => tf.ones([64, b.groups]) as tf.Tensor2D);
    close(maskedForward(model, gates, x, ones), model.forward(x, model.plan(1), { training: true }), 1e-4, 'all ones');
    const hard = gates.blocks.map((b) => {
      const on = groups.get(b.name)!;
      const row = Array.from({ length: b.groups }, (_, j) => (on.includes(j) ? 1 : 0));
      return tf.tensor2d(Array.from({ length: 64 }, () => row)) as tf.Tensor2D;
    });
    close(maskedForward(model, gates, x, hard), model.forward(x, plan, { training: true }), 1e-4, '0/1 masks vs sliced');
  });
  assert.equal(tf.memory().numTensors, before);
  assert.throws(() => trainGates(createModel('resnext-w'), new GateSet({ blocks: [{ name: 'rx1', groups: 8 }, { name: 'rx2', groups: 8 }] }), data, { method: 'concrete', steps: 1 }), /CONCRETE gates need widthwise convolution or dense blocks at the top level; rx1 is a ResNeXtBlock/);
  x.dispose();
  gates.dispose();
  model.dispose();
});

test('a learned plan runs with BatchNorm calibrated for exactly that plan; the network’s rows are restored', () => {
  const model = tinyVgg();
  const groups = new Map([
    ['c2.conv', Int32Array.from([2, 6])],
    ['c3.conv', Int32Array.from([0, 1, 2, 3, 4, 5, 7])],
    ['c4.conv', Int32Array.from([4])],
    ['fc1', Int32Array.from([1, 3, 5])],
  ]);
  const plan = planFromGroups(model, 0.4, groups);
  const bns = [...batchNorms(model).values()];
  const rows = (m: Network) =>
    Array.from({ length: m.numLevels }, (_, l) => bns.map((b) => [Array.from(b.readStats(l).mean), Array.from(b.readStats(l).variance)]));
  const saved = rows(model);
  const x = x64();
  // Calibrated on these 64 samples in one batch, the statistics are these samples' batch statistics.
  const sub = calibratedSubnet(model, plan, data, 64);
  const y = sub.predict(x);
  const ref = tf.tidy(() => model.forward(x, plan, { training: true }));
  close(y, ref, 2e-3, 'calibrated subnet vs batch statistics');
  assert.deepEqual(rows(model), saved, 'every statistics row is as before');
  tf.dispose([x, y, ref]);
  sub.dispose();
  model.dispose();
});

test('REINFORCE and CONCRETE gates learn to track the requested complexity (mlp-w, lambda 10, dist p=1)', () => {
  const model = createModel('mlp-w', { hidden: [64, 64], seed: 1 });
  const set = makeSynthetic({ count: 256, seed: 3 });
  for (const method of ['reinforce', 'concrete'] as const) {
    const gates = new GateSet({ blocks: gatedBlocks(model), seed: 5 });
    const start = [0.3, 0.9].map((u) => Math.abs(complexity(gates.plan(model, u), gates.blocks) - u));
    const before = tf.memory().numTensors;
    const log = trainGates(model, gates, set, { method, steps: 250, lr: 0.05, batchSize: 16, samplesPerStep: 4, seed: 2 });
    assert.equal(tf.memory().numTensors, before, `${method}: no leaked tensors`);
    assert.ok(log[log.length - 1].gap < log[0].gap, `${method}: the gap shrinks`);
    const gaps = [0.3, 0.5, 0.7, 0.9].map((u) => Math.abs(complexity(gates.plan(model, u), gates.blocks) - u));
    assert.ok(Math.max(...gaps) <= 0.13, `${method}: |c - u| ${gaps.map((g) => g.toFixed(3))} (untrained: ${start.map((g) => g.toFixed(3))})`);
    gates.dispose();
  }
  model.dispose();
});

test('gates checkpoints round-trip and refuse another network; the gated runner runs their plans', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-gates-'));
  const model = tinyVgg();
  const other = createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, seed: 3 });
  const gates = new GateSet({ blocks: gatedBlocks(model), seed: 7 });
  await saveGates(tmp, gates, runRef(model, 'runs/x'));
  const { gates: loaded } = await loadGates(tmp, model, 'runs/x');
  for (const u of [0.3, 0.8]) assert.deepEqual(loaded.plan(model, u), gates.plan(model, u));
  await assert.rejects(loadGates(tmp, other, 'runs/y'), /this gates was made for another network .* not runs\/y/);
  const runner = gatedRunner(model, loaded, data, 64);
  assert.deepEqual(runner.plan(0.3), gates.plan(model, 0.3));
  assert.equal(runner.macs(0.3), model.cost(gates.plan(model, 0.3)).macs);
  const x = x64();
  const y = runner.predict(x, Array.from({ length: 64 }, (_, i) => (i % 2 ? 0.3 : 0.8)));
  assert.deepEqual(y.shape, [64, 10]);
  tf.dispose([x, y]);
  runner.dispose();
  loaded.dispose();
  gates.dispose();
  model.dispose();
  other.dispose();
});
