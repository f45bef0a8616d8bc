import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { initEngine } from '../engine/backend.js';
import { LocalExecutor, ThreadExecutor } from './executor.js';
import { allocShared } from '../data/imageset.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { annealTemperatures } from '../layers/condconv.js';

before(async () => {
  await initEngine('wasm');
});

test('an annealed softmax temperature reaches the gradient workers after a reload', async () => {
  const data = allocShared(makeSynthetic({ count: 32, seed: 3 }));
  const idx = Int32Array.from({ length: 32 }, (_, i) => i);
  const args = { widths: [4, 4, 8, 8], hidden: 8, experts: 3, routing: 'softmax', temperature: 0.2, annealEpochs: 2, seed: 1 };
  const [a, b] = [createModel('vgg-condconv', args), createModel('vgg-condconv', args)];
  // Large router weights, so the temperature changes the mixing weights and hence the loss.
  for (const m of [a, b]) for (const w of m.weights().filter((w) => w.name.endsWith('route.kernel'))) w.variable.assign(w.variable.mul(20));
  const local = new LocalExecutor(a, data, 32);
  // One worker: its shard is the whole batch, so BatchNorm's batch statistics match the calling thread's.
  const threads = await ThreadExecutor.start(b, data, 'wasm', 32, 1);
  try {
    const before = (await threads.step(idx, b.plan(1))).loss;
    assert.ok(Math.abs((await local.step(idx, a.plan(1))).loss - before) < 1e-4);
    for (const [m, ex] of [[a, local], [b, threads]] as const) {
      assert.equal(annealTemperatures(m.layers, 1), true);
      ex.reload();
    }
    const [ra, rb] = [await local.step(idx, a.plan(1)), await threads.step(idx, b.plan(1))];
    assert.ok(Math.abs(ra.loss - before) > 1e-3, 'the temperature changes the loss');
    assert.ok(Math.abs(ra.loss - rb.loss) < 1e-4, `${ra.loss} vs ${rb.loss}`);
  } finally {
    await threads.close();
    a.dispose();
    b.dispose();
  }
});

test('a run saved with --anneal-epochs but no softmax temperature (before that was refused) still builds', () => {
  const m = createModel('vgg-condconv', { widths: [4, 4, 8, 8], hidden: 8, experts: 2, annealEpochs: 2 });
  assert.equal(m.config.args.annealEpochs, 2);
  m.dispose();
});
