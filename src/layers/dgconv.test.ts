import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { initEngine } from '../engine/backend.js';
import { DGConv2D, relationMatrix } from './dgconv.js';
import { layerFromConfig } from './layer.js';
import { fullSel } from './select.js';
import { runOps } from '../models/subnet.js';
import { staticPlan } from '../models/network.js';
import { DynnError } from '../util/errors.js';

before(async () => {
  await initEngine('wasm');
});

/** An independent Kronecker product of 2x2 blocks, in plain numbers. */
function kronRef(g: number[]): number[][] {
  let u = [[1]];
  for (const gz of g) {
    const m = [[1, gz], [gz, 1]];
    const n = u.length;
    const next = Array.from({ length: 2 * n }, () => new Array<number>(2 * n).fill(0));
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let a = 0; a < 2; a++) for (let b = 0; b < 2; b++) next[2 * i + a][2 * j + b] = u[i][j] * m[a][b];
    u = next;
  }
  return u;
}

function setGates(layer: DGConv2D, s: number[]): void {
  const w = layer.weights().find((x) => x.name.endsWith('.gates'))!;
  w.variable.assign(tf.tensor1d(s));
}

const ctx = { plan: staticPlan(), training: false };

test('the relation matrix equals an independent Kronecker product for random gates; all 1 is dense, all 0 depthwise', () => {
  let seed = 7;
  const rand = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  for (let trial = 0; trial < 6; trial++) {
    const Z = 1 + (trial % 4);
    const g = Array.from({ length: Z }, () => (rand() < 0.5 ? 0 : 1));
    const u = tf.tidy(() => relationMatrix(tf.tensor1d(g)).arraySync());
    assert.deepEqual(u, kronRef(g), `g = ${g}`);
  }
  const dense = tf.tidy(() => relationMatrix(tf.ones([3]) as tf.Tensor1D).dataSync());
  assert.ok(dense.every((v) => v === 1));
  const eye = tf.tidy(() => relationMatrix(tf.zeros([3]) as tf.Tensor1D).arraySync());
  assert.deepEqual(eye, kronRef([0, 0, 0]));
  eye.forEach((row, i) => row.forEach((v, j) => assert.equal(v, i === j ? 1 : 0)));
});

test('DGConv2D equals a dense convolution with the kernel masked by U; freeze bakes U in; cost counts the kept groups', () => {
  const layer = new DGConv2D('dg', { filters: 8, kernelSize: 3 });
  layer.build([6, 6, 8], 3);
  const s = [0.4, -0.3, 0.7];
  setGates(layer, s);
  const g = s.map((v) => (v >= 0 ? 1 : 0));
  const U = kronRef(g);
  const x = tf.randomNormal([2, 6, 6, 8], 0, 1, 'float32', 1);
  tf.tidy(() => {
    const kernel = layer.weights().find((w) => w.name === 'dg.kernel')!.variable;
    const k = kernel.arraySync() as number[][][][];
    const masked = k.map((r) => r.map((c) => c.map((ci, i) => ci.map((v, o) => v * U[o][i]))));
    const ref = tf.conv2d(x as tf.Tensor4D, tf.tensor4d(masked), 1, 'same');
    const { y } = layer.call(x, fullSel(8), ctx);
    const d = tf.max(tf.abs(tf.sub(y, ref))).dataSync()[0];
    assert.ok(d < 1e-4, `max error ${d}`);
    // The mask really matters here (g is neither all 1 nor all 0).
    assert.ok(tf.max(tf.abs(tf.sub(y, tf.conv2d(x as tf.Tensor4D, kernel as tf.Tensor4D, 1, 'same')))).dataSync()[0] > 1e-3);
    const frozen = runOps(layer.freeze(fullSel(8), ctx.plan), x);
    assert.ok(tf.max(tf.abs(tf.sub(frozen, y))).dataSync()[0] < 1e-5);
  });
  const nonzeros = U.flat().filter((v) => v !== 0).length;
  assert.deepEqual(layer.cost(fullSel(8)), [{ name: 'dg', kind: 'DGConv2D', macs: 6 * 6 * 9 * nonzeros, params: 9 * nonzeros + 3 }]);
  // Half the input channels present: half of U's columns.
  assert.equal(layer.cost({ full: 8, count: 4, index: null })[0].macs, 6 * 6 * 9 * (nonzeros / 2));
  const copy = layerFromConfig(layer.getConfig());
  assert.ok(copy instanceof DGConv2D && copy.args.filters === 8);
  x.dispose();
  layer.weights().forEach((w) => w.variable.dispose());
});

test('the straight-through estimator gives the gate parameters a non-zero gradient (identity and clipped)', () => {
  for (const estimator of ['identity', 'clipped'] as const) {
    const layer = new DGConv2D(`dg-${estimator}`, { filters: 4, kernelSize: 3, estimator });
    layer.build([5, 5, 4], 1);
    setGates(layer, [0.5, -0.5]);
    const gates = layer.weights().find((w) => w.name.endsWith('.gates'))!.variable;
    const x = tf.randomNormal([2, 5, 5, 4], 0, 1, 'float32', 2);
    const r = tf.randomNormal([2, 5, 5, 4], 0, 1, 'float32', 3);
    const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.call(x, fullSel(4), ctx).y, r)) as tf.Scalar, [gates]);
    const d = grads[gates.name].dataSync();
    assert.equal(d.length, 2);
    assert.ok(d.every((v) => Number.isFinite(v) && v !== 0), `${estimator}: gate gradient ${Array.from(d)}`);
    tf.dispose([value, x, r, ...Object.values(grads)]);
    // Clipped: |s| > 1 passes no gradient.
    if (estimator === 'clipped') {
      setGates(layer, [2, -2]);
      const out = tf.variableGrads(() => tf.sum(layer.call(tf.ones([1, 5, 5, 4]), fullSel(4), ctx).y) as tf.Scalar, [gates]);
      assert.ok(out.grads[gates.name].dataSync().every((v) => v === 0));
      tf.dispose([out.value, ...Object.values(out.grads)]);
    }
    layer.weights().forEach((w) => w.variable.dispose());
  }
});

test('DGConv2D refuses channel counts that are not a power of two, or differ in and out', () => {
  assert.throws(() => new DGConv2D('dg6', { filters: 6 }).build([4, 4, 6]), (e: unknown) => e instanceof DynnError && /power-of-two channel count \(>= 2\), got 6/.test(e.message));
  assert.throws(() => new DGConv2D('dg8', { filters: 8 }).build([4, 4, 4]), /as many input channels as filters \(8\), got 4/);
});
