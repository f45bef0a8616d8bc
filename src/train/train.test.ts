import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { train } from './trainer.js';
import { loadRun, validationSplit } from './run.js';
import { calibrateBatchNorm, batchNorms } from './calibrate.js';
import { LocalExecutor, ThreadExecutor, meanGradient } from './executor.js';
import { Optimizer } from './optimizer.js';
import { readFlat } from './step.js';
import { allocShared } from '../data/imageset.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { sampleU, type USchedule } from './schedule.js';
import { Rng } from '../util/rng.js';

before(async () => {
  await initEngine('wasm');
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-train-'));
const small = { model: 'mlp-w', dataset: 'synthetic', trainLimit: 1024, testLimit: 256, batchSize: 64, lr: 3e-3, workers: 0, evalUs: [0.25, 1] };

test('throttleable training learns at every u, and repeats exactly under a seed', async () => {
  const a = await train({ ...small, epochs: 2, seed: 3 });
  const b = await train({ ...small, epochs: 2, seed: 3 });
  const last = a.meta.history[1];
  assert.ok(last.loss < a.meta.history[0].loss, 'loss falls');
  assert.ok(last.testAccuracy['1'] > 0.6, `accuracy at u=1 is ${last.testAccuracy['1']}`);
  assert.ok(last.testAccuracy['0.25'] > 0.5, `accuracy at u=0.25 is ${last.testAccuracy['0.25']}`);
  assert.deepEqual(a.meta.history.map((h) => h.loss), b.meta.history.map((h) => h.loss));
  assert.deepEqual(a.model.getWeights()[0].data, b.model.getWeights()[0].data);
  const c = await train({ ...small, epochs: 1, seed: 4 });
  assert.notEqual(c.meta.history[0].loss, a.meta.history[0].loss, 'another seed, another run');
  for (const r of [a, b, c]) r.model.dispose();
});

test('data-parallel training over two worker threads learns and repeats', async () => {
  const opts = { ...small, model: 'vgg-w', trainLimit: 256, epochs: 1, workers: 2, seed: 1, evalUs: [1] };
  const a = await train(opts);
  const b = await train(opts);
  assert.equal(a.meta.options.workers, 2);
  assert.equal(a.meta.history[0].loss, b.meta.history[0].loss);
  assert.ok(Number.isFinite(a.meta.history[0].loss));
  a.model.dispose();
  b.model.dispose();
});

for (const workers of [0, 2]) {
  test(`a run interrupted after an epoch resumes to where an uninterrupted one ends (${workers} workers); the checkpoint reloads`, async () => {
    const dir = tmp();
    const straight = await train({ ...small, workers, epochs: 2, seed: 5 });
    const crash = new Error('simulated crash after the first checkpoint');
    await assert.rejects(
      train({
        ...small,
        workers,
        epochs: 2,
        seed: 5,
        out: dir,
        onEpoch: () => {
          throw crash;
        },
      }),
      (e) => e === crash,
    );
    assert.equal((await loadRun(dir)).meta.epoch, 1);
    const resumed = await train({ ...small, workers, epochs: 2, seed: 5, out: dir, resume: true });
    assert.equal(resumed.meta.history.length, 2);
    assert.equal(resumed.meta.history[0].loss, straight.meta.history[0].loss);
    // The optimizer's state (its moments and step count) comes back exactly: so do the loss and the weights.
    assert.equal(resumed.meta.history[1].loss, straight.meta.history[1].loss);
    const w1 = straight.model.getWeights();
    const w2 = resumed.model.getWeights();
    w1.forEach((w, i) => assert.deepEqual(w.data, w2[i].data, w.name));
    const loaded = await loadRun(dir);
    assert.equal(loaded.meta.epoch, 2);
    assert.equal(loaded.meta.history.length, 2);
    const x = tf.randomUniform([3, 28, 28, 1], 0, 1, 'float32', 1);
    assert.deepEqual(loaded.model.predict(x, 0.5).dataSync(), resumed.model.predict(x, 0.5).dataSync());
    x.dispose();
    for (const m of [straight.model, resumed.model, loaded.model]) m.dispose();
    assert.equal(fs.readdirSync(dir).filter((f) => f.startsWith('weights-')).length, 1);
    fs.rmSync(dir, { recursive: true });
  });
}

test('resuming with another model fails clearly; bad options are refused', async () => {
  const dir = tmp();
  (await train({ ...small, epochs: 1, out: dir })).model.dispose();
  await assert.rejects(train({ ...small, model: 'vgg-w', epochs: 2, out: dir, resume: true }), /--model vgg-w contradicts the run \(trained with mlp-w\)/);
  const before = tf.memory().numTensors;
  await assert.rejects(train({ ...small, optimizer: 'sgd', epochs: 2, out: dir, resume: true }), /--optimizer sgd contradicts the run \(trained with adam\)/);
  assert.equal(tf.memory().numTensors, before, 'the refused run frees its model');
  await assert.rejects(train({ ...small, epochs: 0 }), /epochs must be a positive integer/);
  await assert.rejects(train({ ...small, optimizer: 'rmsprop' as never }), /unknown optimizer "rmsprop"; expected one of adam, sgd/);
  await assert.rejects(train({ ...small, schedule: 'random' as never }), /unknown u schedule "random"/);
  await assert.rejects(train({ ...small, resume: true }), /resume needs the run directory/);
  await assert.rejects(train({ ...small, dataset: 'imagenet' }), /unknown dataset "imagenet"; expected one of/);
  await assert.rejects(train({ ...small, optimizer: 'sgd', lr: 1e30, epochs: 1 }), /training diverged/);
  fs.rmSync(dir, { recursive: true });
});

test('u schedules: uniform covers (0, 1], curriculum raises its ceiling, vanilla is always 1', async () => {
  const rng = new Rng(1);
  const draw = (schedule: USchedule, progress: number, full = 0) => Array.from({ length: 2000 }, () => sampleU(schedule, rng, progress, full));
  const uniform = draw('uniform', 0);
  assert.ok(uniform.every((u) => u > 0 && u <= 1) && Math.min(...uniform) < 0.01 && Math.max(...uniform) > 0.99);
  assert.ok(Math.max(...draw('curriculum', 0)) <= 0.25);
  assert.ok(Math.max(...draw('curriculum', 0.25)) <= 0.625 + 1e-9);
  assert.ok(Math.max(...draw('curriculum', 0.6)) > 0.99);
  assert.ok(draw('vanilla', 0.3).every((u) => u === 1));
  const mixed = draw('uniform', 0, 0.2);
  const ones = mixed.filter((u) => u === 1).length / mixed.length;
  assert.ok(ones > 0.15 && ones < 0.25, `about a fifth of the batches train the full network, got ${ones}`);
  assert.ok(Math.min(...draw('curriculum', 0, 0.3).filter((u) => u < 1)) < 0.05);
  const us: number[] = [];
  const v = await train({ ...small, trainLimit: 256, epochs: 1, schedule: 'vanilla', onStep: (p) => us.push(p.u) });
  assert.ok(us.length === 4 && us.every((u) => u === 1));
  v.model.dispose();
});

test("the workers' split update gives the weights the calling thread's update gives, in every copy", async () => {
  const data = allocShared(makeSynthetic({ count: 64, seed: 3 }));
  // 61 samples over 3 threads: uneven shards (21, 21, 19), weighted by size, and more than two gradient parts.
  const idx = Int32Array.from({ length: 61 }, (_, i) => i);
  // mlp-w: no BatchNorm, whose batch statistics would differ between one batch and two shards.
  const [a, b] = [createModel('mlp-w', { seed: 2 }), createModel('mlp-w', { seed: 2 })];
  const local = new LocalExecutor(a, data, 64);
  const threads = await ThreadExecutor.start(b, data, 'wasm', 64, 3);
  const [oa, ob] = [new Optimizer('adam', 0.01), new Optimizer('adam', 0.01)];
  const close = (x: Float32Array, y: Float32Array) => x.every((v, i) => Math.abs(v - y[i]) <= 1e-4 + 1e-3 * Math.abs(v));
  try {
    const start = threads.weights.slice();
    for (const u of [1, 0.5, 0.3]) {
      await local.step(idx, a.plan(u));
      await threads.step(idx, b.plan(u));
      await local.update(oa);
      await threads.update(ob);
    }
    assert.ok(!close(threads.weights, start), 'the weights moved');
    assert.ok(close(threads.weights, local.weights), 'same weights as the calling thread');
    const main = new Float32Array(threads.layout.total);
    readFlat(b, threads.layout, main);
    assert.deepEqual(main, threads.weights, 'the main model holds the updated weights');
    // The workers run the next step at the new weights: the same loss as the calling thread.
    const [ra, rb] = [await local.step(idx, a.plan(1)), await threads.step(idx, b.plan(1))];
    assert.ok(Math.abs(ra.loss - rb.loss) < 1e-3, `${ra.loss} vs ${rb.loss}`);
  } finally {
    await threads.close();
    a.dispose();
    b.dispose();
  }
});

test('gradient steps leak no tensors', async () => {
  const m = createModel('vgg-w');
  const data = makeSynthetic({ count: 64, seed: 1 });
  const ex = new LocalExecutor(m, data, 32);
  const idx = Int32Array.from({ length: 32 }, (_, i) => i);
  await ex.step(idx, m.plan(0.5));
  const before = tf.memory().numTensors;
  for (const u of [0.2, 0.5, 1]) await ex.step(idx, m.plan(u));
  assert.equal(tf.memory().numTensors, before);
  assert.ok(meanGradient(ex).some((g) => g !== 0));
  m.dispose();
});

test('BatchNorm calibration rewrites the statistics of exactly the requested levels', () => {
  const m = createModel('vgg-w');
  const data = makeSynthetic({ count: 256, seed: 2 });
  const bns = batchNorms(m);
  const bn = bns.get('c3.bn')!;
  const before = Array.from({ length: 9 }, (_, l) => bn.readStats(l));
  calibrateBatchNorm(m, data, { us: [0.5], samples: 128 });
  const level = m.levelOf(0.5);
  for (let l = 0; l < 9; l++) {
    const after = bn.readStats(l);
    if (l === level) {
      // Only the channels active at u = 0.5 (4 of 8 groups of 8) are recalibrated.
      assert.ok(after.mean.slice(0, 32).some((v, i) => v !== before[l].mean[i]));
      assert.deepEqual(after.mean.slice(32), before[l].mean.slice(32));
      assert.ok(after.variance.slice(0, 32).every((v) => v >= 0));
    } else {
      assert.deepEqual(after.mean, before[l].mean, `level ${l} untouched`);
    }
  }
  // Population statistics equal the moments of the stem's pre-BN activations over all samples.
  const stem = bns.get('stem.bn')!.readStats(level);
  assert.ok(stem.variance.every((v) => v > 0));
  m.dispose();
});

test('a validation split is held out of training and recorded', async () => {
  const r = await train({ ...small, trainLimit: 512, epochs: 1, validationSamples: 128 });
  assert.equal(r.meta.trainSamples, 384);
  assert.equal(r.meta.validationSamples, 128);
  const val = validationSplit(r.meta, r.dataset.train);
  assert.equal(val.count, 128);
  assert.deepEqual(val.labels, r.dataset.train.labels.subarray(384));
  r.model.dispose();
  await assert.rejects(train({ ...small, trainLimit: 256, validationSamples: 256 }), /must be fewer than the 256 training samples/);
  const none = await train({ ...small, trainLimit: 256, epochs: 1 });
  assert.throws(() => validationSplit(none.meta, none.dataset.train), /held out no validation split/);
  none.model.dispose();
});

test('a gradient worker that cannot start fails the run with its reason, and nothing hangs', async () => {
  const m = createModel('mlp-w');
  const wrong = Object.create(m, { config: { value: { model: 'nope', args: {} } } });
  const data = allocShared(makeSynthetic({ count: 8, seed: 1 }));
  await assert.rejects(ThreadExecutor.start(wrong, data, 'wasm', 8, 2), /gradient worker failed to start: unknown model "nope"/);
  m.dispose();
});
