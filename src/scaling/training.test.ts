import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { allocShared } from '../data/imageset.js';
import { Rng } from '../util/rng.js';
import { train } from '../train/trainer.js';
import { saveRun } from '../train/run.js';
import { LocalExecutor, ThreadExecutor, meanGradient } from '../train/executor.js';
import type { Network } from '../models/network.js';
import type { Plan } from '../layers/types.js';
import { sandwichPlans } from './sandwich.js';
import { distillationLoss, softTargetKl } from './distill.js';

before(async () => {
  await initEngine('wasm');
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-scaling-'));
const small = { model: 'mlp-w', dataset: 'synthetic', trainLimit: 512, testLimit: 256, batchSize: 64, lr: 3e-3, workers: 0, evalUs: [0.25, 1] };

test('the sandwich rule trains the widest, the narrowest and n random widths in between', () => {
  const m = createModel('vgg-w');
  const plans = sandwichPlans(m, { n: 3, rng: new Rng(1) });
  assert.equal(plans.length, 5);
  assert.equal(plans[0].u, 1);
  assert.equal(plans[0].level, 8);
  assert.equal(plans[1].level, 1, 'the narrowest runs one group per block');
  assert.deepEqual(Array.from(plans[1].groups.get('c2.conv')!), [0]);
  for (const p of plans.slice(2)) assert.ok(p.u > plans[1].u && p.u <= 1, `random width ${p.u}`);
  assert.notEqual(plans[2].u, plans[3].u);
  const again = sandwichPlans(m, { n: 3, rng: new Rng(1) });
  assert.deepEqual(again.map((p) => p.u), plans.map((p) => p.u), 'seeded');
  assert.throws(() => sandwichPlans(m, { n: -1, rng: new Rng(1) }), /sandwich widths must be a non-negative integer/);
  m.dispose();
});

/** The summed gradient of `loss(plan, i)` over plans, computed directly with tf.variableGrads. */
function referenceGrads(m: Network, plans: Plan[], loss: (logits: tf.Tensor2D, i: number) => tf.Scalar): Float32Array[] {
  const vars = m.trainableWeights().map((w) => w.variable);
  const sums = vars.map((v) => new Float32Array(v.size));
  plans.forEach((plan, i) => {
    tf.tidy(() => {
      const { grads } = tf.variableGrads(() => loss(m.forward(xs!, plan, { training: true }), i), vars);
      vars.forEach((v, j) => {
        const g = grads[v.name];
        if (g) (g.dataSync() as Float32Array).forEach((x, e) => (sums[j][e] += x));
      });
    });
  });
  return sums;
}
let xs: tf.Tensor | null = null;

test('a multi-plan step sums the plans’ gradients; in-place distillation teaches from the widest, detached', async () => {
  const m = createModel('mlp-w', { seed: 2 });
  const data = makeSynthetic({ count: 32, seed: 3 });
  const idx = Int32Array.from({ length: 32 }, (_, i) => i);
  const plans = sandwichPlans(m, { n: 2, rng: new Rng(4) });
  const ex = new LocalExecutor(m, data, 32);
  xs = tf.tensor(Float32Array.from(data.images, (v) => v / 255), [32, 28, 28, 1]);
  const ys = tf.oneHot(tf.tensor1d(Int32Array.from(data.labels), 'int32'), 10);
  const layout = ex.layout;
  const flat = (arrays: Float32Array[]) => {
    const out = new Float32Array(layout.total);
    arrays.forEach((a, j) => out.set(a, layout.offsets[j]));
    return out;
  };
  const close = (a: Float32Array, b: Float32Array) => a.every((v, i) => Math.abs(v - b[i]) <= 1e-5 + 1e-4 * Math.abs(b[i]));

  const before = tf.memory().numTensors;
  await ex.step(idx, { plans, inplaceDistill: false });
  assert.equal(tf.memory().numTensors, before, 'no leaked tensors');
  const plain = flat(referenceGrads(m, plans, (l) => tf.losses.softmaxCrossEntropy(ys, l) as tf.Scalar));
  assert.ok(close(meanGradient(ex), plain), 'hard labels: the sum of every plan’s cross-entropy gradient');

  const r = await ex.step(idx, { plans, inplaceDistill: true });
  const wide = tf.tidy(() => m.forward(xs!, plans[0], { training: true }));
  const inplace = flat(referenceGrads(m, plans, (l, i) => (i === 0 ? (tf.losses.softmaxCrossEntropy(ys, l) as tf.Scalar) : softTargetKl(wide as tf.Tensor2D, l))));
  assert.ok(close(meanGradient(ex), inplace), 'in-place: CE for the widest, KL(widest || plan) for the others');
  assert.ok(!close(meanGradient(ex), plain));
  assert.ok(Number.isFinite(r.loss) && r.count === 32);

  await ex.step(idx, { plans, inplaceDistill: true, inplaceAlpha: 0.25 });
  const ce = (l: tf.Tensor2D) => tf.losses.softmaxCrossEntropy(ys, l) as tf.Scalar;
  const mixed = flat(referenceGrads(m, plans, (l, i) => (i === 0 ? ce(l) : (tf.add(tf.mul(0.25, softTargetKl(wide as tf.Tensor2D, l)), tf.mul(0.75, ce(l))) as tf.Scalar))));
  assert.ok(close(meanGradient(ex), mixed), 'in-place alpha: a KL + (1 - a) CE for the narrower widths');
  tf.dispose([xs, ys, wide]);
  await ex.close();
  m.dispose();
});

test('worker threads compute the same multi-plan, teacher-distilled gradient as the calling thread', async () => {
  const m = createModel('mlp-w', { seed: 5 });
  const teacher = createModel('mlp-w', { seed: 6, hidden: [64] });
  const data = allocShared(makeSynthetic({ count: 64, seed: 7 }));
  const setup = { teacher: { model: teacher, settings: { alpha: 0.7, temperature: 3 } } };
  const idx = Int32Array.from({ length: 64 }, (_, i) => i);
  const work = { plans: sandwichPlans(m, { n: 1, rng: new Rng(8) }), inplaceDistill: true };
  const local = new LocalExecutor(m, data, 64, setup);
  const threads = await ThreadExecutor.start(m, data, 'wasm', 64, 2, setup);
  try {
    const a = await local.step(idx, work);
    const b = await threads.step(idx, work);
    assert.ok(Math.abs(a.loss - b.loss) < 1e-4, `${a.loss} vs ${b.loss}`);
    assert.equal(a.correct, b.correct);
    const [ga, gb] = [meanGradient(local), meanGradient(threads)];
    assert.ok(ga.every((v, i) => Math.abs(v - gb[i]) <= 1e-5 + 1e-3 * Math.abs(v)));
    // The teacher term: the widest plan's loss is the distillation loss, not plain cross-entropy.
    const x = tf.tensor(Float32Array.from(data.images, (v) => v / 255), [64, 28, 28, 1]);
    const ys = tf.oneHot(tf.tensor1d(Int32Array.from(data.labels), 'int32'), 10) as tf.Tensor2D;
    const single = await local.step(idx, work.plans[0]);
    const want = tf.tidy(() => distillationLoss(m.forward(x, work.plans[0], { training: true }), teacher.predict(x, 1), ys, setup.teacher.settings).dataSync()[0]);
    assert.ok(Math.abs(single.loss - want) < 1e-4, `${single.loss} vs ${want}`);
    tf.dispose([x, ys]);
  } finally {
    await local.close();
    await threads.close();
    m.dispose();
    teacher.dispose();
  }
});

test('training with the sandwich rule learns the narrowest and the widest width', async () => {
  const r = await train({ ...small, trainLimit: 1024, epochs: 2, schedule: 'sandwich', sandwichWidths: 1, seed: 1 });
  const last = r.meta.history[1];
  assert.equal(r.meta.options.schedule, 'sandwich');
  assert.ok(last.testAccuracy['1'] > 0.6, `u=1: ${last.testAccuracy['1']}`);
  assert.ok(last.testAccuracy['0.25'] > 0.5, `u=0.25: ${last.testAccuracy['0.25']}`);
  r.model.dispose();
  await assert.rejects(train({ ...small, schedule: 'sandwich', sandwichWidths: 1.5 }), /sandwichWidths must be a non-negative integer/);
  await assert.rejects(train({ ...small, schedule: 'sandwich', inplaceAlpha: 1.5 }), /inplaceAlpha must be in \[0, 1\], got 1.5/);
});

test('distillation from a teacher run; a teacher for other inputs is refused', async () => {
  const dir = tmp();
  const t = await train({ ...small, epochs: 1, schedule: 'vanilla', out: path.join(dir, 'teacher') });
  t.model.dispose();
  const s = await train({ ...small, epochs: 1, teacher: path.join(dir, 'teacher'), distillAlpha: 0.5, distillT: 2 });
  assert.equal(s.meta.options.teacher, path.join(dir, 'teacher'));
  assert.ok(Number.isFinite(s.meta.history[0].loss) && s.meta.history[0].testAccuracy['1'] > 0.3);
  s.model.dispose();
  const other = createModel('mlp-w', { inputShape: [32, 32, 3] });
  await saveRun(path.join(dir, 'rgb'), other, { dynnVersion: '0', dataset: 'cifar10', trainSamples: 0, testSamples: 0, options: {}, seed: 0, epoch: 0, history: [] });
  other.dispose();
  await assert.rejects(train({ ...small, epochs: 1, teacher: path.join(dir, 'rgb') }), /teacher .*rgb takes 32x32x3 inputs, 10 classes; the student takes 28x28x1 inputs, 10 classes/);
  await assert.rejects(train({ ...small, epochs: 1, teacher: path.join(dir, 'none') }), /none/);
  await assert.rejects(train({ ...small, distillAlpha: 2 }), /alpha must be in \[0, 1\]/);
  fs.rmSync(dir, { recursive: true });
});

test('early-exit models train jointly on every exit; exit weights are checked', async () => {
  const r = await train({ ...small, model: 'vgg-exits', trainLimit: 256, testLimit: 128, epochs: 1, evalUs: [1], calibrationSamples: 64, exitWeights: [0.5, 0.5, 1, 1] });
  const acc = r.meta.history[0].exitAccuracy!;
  assert.equal(acc.length, 4);
  assert.ok(acc.every((a) => a > 0.15), `every exit learns something: ${acc}`);
  r.model.dispose();
  await assert.rejects(train({ ...small, model: 'vgg-exits', exitWeights: [1, 1] }), /one weight per exit of vgg-exits \(4\), got 2/);
  await assert.rejects(train({ ...small, exitWeights: [1] }), /exitWeights needs an early-exit model; mlp-w has no exits/);
  await assert.rejects(train({ ...small, model: 'vgg-exits', exitWeights: [1, -1, 1, 1] }), /exitWeights must be non-negative numbers/);
});
