import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { makeStream, makeSynthetic } from '../data/index.js';
import { createModel } from '../models/zoo.js';
import { networkAt } from '../models/at-resolution.js';
import { exportOnnx } from '../export/export.js';
import { levelTable } from './table.js';
import { MixedRunner } from './runner.js';
import { operatingPoints } from './actions.js';
import { reportRun } from './evaluate.js';
import { runTemporal, TemporalController, temporalPolicy, trainTemporal, trainTemporalSequences } from './temporal.js';
import { loadController, runRef, saveController } from './store.js';

before(() => initEngine());

const stream = makeStream(makeSynthetic({ count: 60, height: 12, width: 12, numClasses: 4, seed: 1 }), { frames: 60, length: 20, hold: 10, seed: 2 });
const us = [0.5, 1];
const rs = [6, 9, 12];
const vgg = () => createModel('vgg-w', { inputShape: [12, 12, 1], numClasses: 4, widths: [4, 4, 8, 8], hidden: 16, groups: 2 });
const resnet = () => createModel('resnet-d', { inputShape: [12, 12, 1], numClasses: 4, width: 4, blocksPerStage: 1, groups: 2 });

test('a lower resolution costs what the layers count at that size, and runs the network on the resized input', () => {
  // resnet-d pools globally: the whole network runs at r, the same weights.
  const model = resnet();
  const runner = new MixedRunner(model);
  const low = networkAt(model.config, [6, 6, 1]);
  low.setWeights(model.getWeights());
  const x = tf.randomNormal([5, 12, 12, 1], 0, 1, 'float32', 4);
  for (const u of us) {
    assert.equal(runner.macs(u, 6), low.cost(model.plan(u)).macs);
    assert.ok(runner.macs(u, 6) < runner.macs(u, 9) && runner.macs(u, 9) < runner.macs(u), 'cost falls with the resolution');
    assert.equal(runner.macs(u, 12), runner.macs(u), 'the input’s own resolution is the network as it is');
    const [got, want] = tf.tidy(() => [runner.predict(x, [u, u, u, u, u], [6, 6, 6, 6, 6]), low.predict(tf.image.resizeBilinear(x as tf.Tensor4D, [6, 6], false, true), u)]);
    assert.ok(tf.max(tf.abs(tf.sub(got, want))).dataSync()[0] < 1e-4, 'the same network on the resized input');
    tf.dispose([got, want]);
  }
  // vgg-w flattens: its convolutions run at r, the last map is resized back to what its dense layer reads.
  const v = vgg();
  const vr = new MixedRunner(v);
  const ops = vr.subnet(1, 6).ops;
  assert.deepEqual(ops[0], { op: 'resize', height: 6, width: 6 });
  const flat = ops.findIndex((o) => o.op === 'flatten');
  assert.deepEqual(ops[flat - 1], { op: 'resize', height: 3, width: 3 }, 'back to the 12x12 network’s last map before the flatten');
  const vlow = networkAt(v.config, [6, 6, 1]);
  const at = (n: typeof v, from: number, to: number) => n.cost(1).layers.filter((c) => n.layers.slice(from, to).some((l) => c.name.startsWith(l.name))).reduce((a, c) => a + c.macs, 0);
  const f = v.layers.findIndex((l) => l.className === 'Flatten');
  assert.equal(vr.macs(1, 6), at(vlow, 0, f) + at(v, f, v.layers.length), 'the convolutions at 6x6, the classifier as trained');
  assert.ok(vr.macs(1, 6) < 0.5 * vr.macs(1));
  const mixed = () => tf.dispose(vr.predict(x, [1, 0.5, 1, 0.5, 1], [6, 12, 9, 6, 12]));
  mixed();
  const before = tf.memory().numTensors;
  mixed();
  assert.equal(tf.memory().numTensors, before, 'no tensor left behind once the subnets are built');
  tf.dispose(x);
  for (const n of [low, vlow, v, model]) n.dispose();
  runner.dispose();
  vr.dispose();
});

test('resolutions the input or the model cannot give: clear errors', () => {
  const runner = new MixedRunner(vgg());
  assert.throws(() => runner.resolution(13), /resolution 13 is larger than the input \(12x12\)/);
  assert.throws(() => runner.resolution(0), /a resolution must be a positive integer, got 0/);
  assert.throws(() => runner.resolution(2), /vgg-w cannot run at 2x2/);
  const mlp = createModel('mlp-w', { inputShape: [12, 12, 1], numClasses: 4 });
  assert.throws(() => new MixedRunner(mlp).resolution(6), /mlp-w computes nothing before it flattens its input: resolution 6 would save no compute/);
  mlp.dispose();
  assert.throws(() => operatingPoints(us, [6, 6]), /6 appears twice/);
  assert.throws(() => temporalPolicy(4, us, { resolutions: [] }), /positive integers/);
  runner.dispose();
  runner.model.dispose();
});

test('a temporal controller over (u, r): actions are the product, frames run at their planned resolution, both trainers learn', async () => {
  const model = vgg();
  const runner = new MixedRunner(model);
  const policy = temporalPolicy(4, us, { seed: 3, resolutions: rs });
  assert.deepEqual(policy.actions, [0.5, 0.5, 0.5, 1, 1, 1]);
  assert.deepEqual(policy.resolutions, [6, 9, 12, 6, 9, 12]);
  const table = levelTable(runner, stream, policy.actions, { probabilities: true, resolutions: policy.resolutions });
  assert.ok(table.macs[0] < table.macs[2] && table.macs[3] < table.macs[5], 'a lower resolution is cheaper at the same u');
  assert.throws(() => trainTemporal(policy, stream, table, { cost: 'u' }), /--cost u does not see the input resolution/);
  assert.throws(() => trainTemporal(policy, stream, levelTable(runner, stream, us, { probabilities: true })), /different actions/);
  const history = trainTemporal(policy, stream, table, { epochs: 2, seed: 1 });
  assert.equal(history.length, 2);
  assert.ok(history.every((e) => Number.isFinite(e.loss) && e.meanFlopsRatio > 0));
  const seq = trainTemporalSequences(policy, stream, table, { objective: { kind: 'budget', budget: 0.5 }, epochs: 2, batchSize: 2, seed: 1 });
  assert.ok(seq.every((e) => Number.isFinite(e.meanReturn)));

  const controller = new TemporalController(policy);
  assert.equal(controller.start, 5, 'a stream starts at the full network at full resolution');
  const before = tf.memory().numTensors;
  const run = runTemporal(controller, runner, stream);
  assert.ok(run.resolution);
  for (let f = 0; f < stream.count; f++) {
    const a = policy.actions.findIndex((u, k) => u === run.u[f] && policy.resolutions![k] === run.resolution![f]);
    assert.ok(a >= 0);
    assert.equal(run.predictions[f], table.predictions[a][f], 'the network’s answer at the frame’s (u, r)');
    assert.equal(run.macs[f], table.macs[a] + policy.macs);
  }
  runTemporal(controller, runner, stream);
  policy.weightsChanged();
  assert.equal(tf.memory().numTensors, before, 'no tensor left behind by the runs');
  const report = reportRun(run, stream.labels, runner.fullMacs, table);
  assert.equal(report.fixed.length, 6);
  assert.deepEqual(report.fixed.map((p) => p.resolution), policy.resolutions);
  assert.equal(Object.values(report.resolutionHistogram!).reduce((a, b) => a + b, 0), stream.count);
  // The oracle takes each frame's cheapest right (u, r), not the first in table order.
  const cheapest = Math.min(...table.macs);
  const order = table.macs.map((_, k) => k).sort((a, b) => table.macs[a] - table.macs[b]);
  const rightAtCheapest = table.correct[order[0]].reduce((a, b) => a + b, 0);
  assert.ok(report.oracle.curve[0].flopsRatio === cheapest / table.fullMacs && report.oracle.curve[0].accuracy === rightAtCheapest / stream.count);

  // Saved and loaded with its resolutions; an export must be given them (runtime/temporal-resolution.test.ts).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-tempres-'));
  await saveController(path.join(dir, 'ctrl'), policy, runRef(model, 'runs/x'));
  const loaded = (await loadController(path.join(dir, 'ctrl'), model, 'runs/x')).policy;
  assert.deepEqual(loaded.resolutions, rs.concat(rs));
  assert.throws(() => exportOnnx(model, { controller: { network: loaded.net, actions: loaded.actions, temporal: { start: 5 } } }), /trained over resolutions \[6,9,12,6,9,12\], the export was given \[none\]/);
  fs.rmSync(dir, { recursive: true });
  loaded.dispose();
  policy.dispose();
  runner.dispose();
  model.dispose();
});
