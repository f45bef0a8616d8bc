import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { Optimizer, applyUpdate } from './optimizer.js';

await initEngine('wasm');

// Three "weights" laid end to end, as flatLayout lays a network's out.
const shapes = [[2, 3], [4], [3, 1]];
const sizes = shapes.map((s) => s.reduce((a, b) => a * b, 1));
const total = sizes.reduce((a, b) => a + b, 0);
const seq = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));
const split = (flat: Float32Array) => {
  let o = 0;
  return shapes.map((s, j) => tf.tensor(flat.subarray(o, (o += sizes[j])), s));
};

/** The variables' values laid end to end: a flat parameter vector. */
const flatten = (vars: tf.Variable[]) => {
  const out = new Float32Array(total);
  let o = 0;
  for (const v of vars) {
    out.set(v.dataSync() as Float32Array, o);
    o += v.size;
  }
  return out;
};

/** TF.js's own optimizer over the separate weights, the reference the flat one must match. */
function reference(kind: 'adam' | 'sgd', init: Float32Array, grads: Float32Array[], lrs: number[]): Float32Array {
  const vars = tf.tidy(() => split(init).map((t) => tf.variable(t)));
  const opt = kind === 'adam' ? tf.train.adam(lrs[0]) : tf.train.momentum(lrs[0], 0.9);
  grads.forEach((g, s) => {
    if (kind === 'adam') (opt as unknown as { learningRate: number }).learningRate = lrs[s];
    else (opt as tf.MomentumOptimizer).setLearningRate(lrs[s]);
    tf.tidy(() => opt.applyGradients(split(g).map((tensor, j) => ({ name: vars[j].name, tensor }))));
  });
  const out = flatten(vars);
  opt.dispose();
  if (kind === 'sgd') tf.SGDOptimizer.prototype.dispose.call(opt); // MomentumOptimizer.dispose forgets it
  tf.dispose(vars);
  return out;
}

const near = (a: Float32Array, b: Float32Array) => a.every((v, i) => Math.abs(v - b[i]) <= 1e-6 + 1e-5 * Math.abs(b[i]));

for (const kind of ['adam', 'sgd'] as const) {
  test(`${kind} over the flat vector equals TF.js's ${kind} over the separate weights, parts summed with their scales`, () => {
    const init = seq(total, (i) => Math.sin(i + 1));
    // Two shards per step, weighted 3/4 and 1/4 (as shards of 96 and 32 samples); the reference gets their sum.
    const parts = [0, 1, 2].map((s) => [seq(total, (i) => Math.cos(i * (s + 2))), seq(total, (i) => 0.1 * i - s)]);
    const scales = [0.75, 0.25];
    const lrs = [0.1, 0.05, 0.01];
    const summed = parts.map(([a, b]) => a.map((v, i) => scales[0] * v + scales[1] * b[i]));
    const params = init.slice();
    const opt = new Optimizer(kind, lrs[0]);
    parts.forEach((p, s) => {
      opt.setLearningRate(lrs[s]);
      opt.step(params, p, scales);
    });
    const want = reference(kind, init, summed, lrs);
    assert.ok(near(params, want), `${params.slice(0, 4)} vs ${want.slice(0, 4)}`);
    assert.ok(!near(params, init));
    // Three parts (three threads) take the path that sums them first.
    const three = init.slice();
    const opt3 = new Optimizer(kind, lrs[0]);
    parts.forEach(([a, b], s) => {
      opt3.setLearningRate(lrs[s]);
      opt3.step(three, [a, b, b], [scales[0], scales[1] / 2, scales[1] / 2]);
    });
    assert.ok(near(three, want));
  });

  test(`${kind} resumes from the per-weight state TF.js's own optimizer saved (older checkpoints)`, async () => {
    const init = seq(total, (i) => Math.cos(i));
    const grads = [1, 2, 3, 4].map((s) => seq(total, (i) => Math.sin(i * s)));
    const lrs = [0.05, 0.05, 0.05, 0.05];
    const want = reference(kind, init, grads, lrs);
    // TF.js's optimizer takes the first two steps and saves its state as checkpoints did: one slot per weight.
    const vars = tf.tidy(() => split(init).map((t) => tf.variable(t)));
    const tfOpt = kind === 'adam' ? tf.train.adam(0.05) : tf.train.momentum(0.05, 0.9);
    for (const g of grads.slice(0, 2)) tf.tidy(() => tfOpt.applyGradients(split(g).map((tensor, j) => ({ name: vars[j].name, tensor }))));
    const saved = (await tfOpt.getWeights()).map((w, i) => ({ name: `slot.${i}`, shape: w.tensor.shape.slice(), data: Float32Array.from(w.tensor.dataSync()) }));
    assert.equal(saved.length, kind === 'adam' ? 7 : 4);
    const params = flatten(vars);
    tfOpt.dispose();
    if (kind === 'sgd') tf.SGDOptimizer.prototype.dispose.call(tfOpt);
    tf.dispose(vars);
    const opt = new Optimizer(kind, 0.05);
    await opt.setState(saved);
    for (const g of grads.slice(2)) opt.step(params, [g], [1]);
    assert.ok(near(params, want), `${params.slice(0, 4)} vs ${want.slice(0, 4)}`);
  });
}

test("adam with gradients near its epsilon (1e-6) still equals TF.js's", () => {
  const init = seq(total, (i) => Math.sin(i + 1));
  const grads = [1, 2, 3].map((s) => seq(total, (i) => 1e-6 * Math.cos(i * s)));
  const params = init.slice();
  const opt = new Optimizer('adam', 0.01);
  for (const g of grads) opt.step(params, [g], [1]);
  const want = reference('adam', init, grads, [0.01, 0.01, 0.01]);
  assert.ok(near(params, want), `${params.slice(0, 4)} vs ${want.slice(0, 4)}`);
});

test('a part with scale 0 is skipped (a stale buffer cannot leak in); sizes are checked', () => {
  const params = seq(total, (i) => i);
  const opt = new Optimizer('adam', 0.1);
  const stale = new Float32Array(total).fill(Number.NaN);
  opt.step(params, [seq(total, () => 1), stale], [1, 0]);
  assert.ok(params.every(Number.isFinite));
  assert.throws(() => opt.step(params, [new Float32Array(3)], [1]), /a gradient of 3 values for 13 parameters/);
  assert.throws(() => opt.step(new Float32Array(3), [new Float32Array(3)], [1]), /updates 13 parameters, not 3/);
  opt.dispose();
});

test('state round-trips through getState/setState, also when split per weight', async () => {
  const grads = [1, 2, 3, 4].map((s) => seq(total, (i) => Math.sin(i * s)));
  const run = async (restoreAt: number, legacy: boolean) => {
    const params = seq(total, (i) => i / 10);
    let opt = new Optimizer('adam', 0.05);
    for (let s = 0; s < grads.length; s++) {
      if (s === restoreAt) {
        let state = await opt.getState();
        if (legacy) {
          // An older checkpoint: the iteration count, then one first moment per weight, then one second moment per weight.
          const cut = (a: Float32Array) => split(a).map((t) => {
            const d = Float32Array.from(t.dataSync());
            t.dispose();
            return d;
          });
          const [m, v] = [cut(state[1].data), cut(state[2].data)];
          state = [state[0], ...[...m, ...v].map((data, i) => ({ name: `slot.${i + 1}`, shape: shapes[i % 3], data }))];
          assert.equal(state.length, 7);
        }
        opt.dispose();
        opt = new Optimizer('adam', 0.05);
        await opt.setState(state);
      }
      opt.step(params, [grads[s]], [1]);
    }
    opt.dispose();
    return params;
  };
  const straight = await run(-1, false);
  assert.deepEqual(await run(2, false), straight);
  assert.deepEqual(await run(2, true), straight);
  assert.ok(!near(await run(-1, false), seq(total, (i) => i / 10)));
  const opt = new Optimizer('adam', 0.05);
  const bad = [0, 1, 2, 3].map((i) => ({ name: `slot.${i}`, shape: [1], data: new Float32Array(1) }));
  await assert.rejects(opt.setState(bad), /optimizer state has 4 slots; adam expects the iteration count, then 2 x \(number of weights\)/);
  opt.dispose();
});

test('an update split into ranges (as the gradient workers split it) equals the whole pass exactly', () => {
  for (const kind of ['adam', 'sgd'] as const) {
    const grads = [1, 2, 3].map((s) => [seq(total, (i) => Math.sin(i * s)), seq(total, (i) => Math.cos(i + s))]);
    const whole = seq(total, (i) => i / 7);
    const split3 = whole.slice();
    const a = new Optimizer(kind, 0.02);
    const b = new Optimizer(kind, 0.02);
    for (const parts of grads) {
      a.step(whole, parts, [0.5, 0.5]);
      const spec = b.begin(total, parts, [0.5, 0.5])!;
      for (const [lo, hi] of [[0, 5], [5, 6], [6, total]]) applyUpdate(spec, split3, parts, lo, hi);
    }
    assert.deepEqual(split3, whole, kind);
  }
  const opt = new Optimizer('adam', 0.1);
  assert.equal(opt.begin(total, [new Float32Array(total)], [0]), null, 'nothing to apply');
});
