import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import fc from 'fast-check';
import { arrayRows, assemble, dispatch, dispatchAsync, dispatchFrom, dispatchFromAsync, dispatchPadded, padByRoute, partition, rowsOf } from './dispatch.js';
import { dispatchTensor, tensorRows } from './tensor.js';
import { initEngine } from '../engine/backend.js';

before(async () => {
  await initEngine('wasm');
});

test('partition: routes ascending, rows ascending, empty routes absent', () => {
  const p = partition([2, 0, 2, 5, 0]);
  assert.equal(p.count, 5);
  assert.deepEqual(p.groups.map((g) => [g.route, Array.from(g.rows)]), [[0, [1, 4]], [2, [0, 2]], [5, [3]]]);
  assert.deepEqual(partition([]).groups, []);
  assert.throws(() => partition([0, 1.5]), /route of sample 1 must be an integer, got 1.5/);
});

test('dispatch runs each route once on exactly its rows and returns outputs in input order', () => {
  const ops = arrayRows(2);
  const x = Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
  const seen: [number, number[]][] = [];
  const y = dispatch(x, [1, 0, 1, 3, 0], (route, part, rows) => {
    seen.push([route, Array.from(rows)]);
    assert.equal(ops.count(part), rows.length, 'a part holds only its rows');
    return part.map((v) => v * 10 + route);
  }, { input: ops, output: ops });
  assert.deepEqual(seen, [[0, [1, 4]], [1, [0, 2]], [3, [3]]]);
  assert.deepEqual(Array.from(y), [1, 1, 10, 10, 21, 21, 33, 33, 40, 40]);
});

test('one route: the batch itself is the part (no gather), and is the output (no reorder)', () => {
  const ops = arrayRows(1);
  const x = Float32Array.from([1, 2, 3]);
  const y = dispatch(x, [4, 4, 4], (_, part) => {
    assert.equal(part, x);
    return part;
  }, { input: ops, output: ops });
  assert.equal(y, x);
});

test('assemble refuses parts that overlap, miss samples or have the wrong size', () => {
  const ops = arrayRows(1);
  const a = Float32Array.of(1);
  assert.throws(() => assemble(ops, [a, a], [Int32Array.of(0), Int32Array.of(0)], 2), /sample 0 is in two parts/);
  assert.throws(() => assemble(ops, [a], [Int32Array.of(0)], 2), /the parts hold 1 of 2 samples/);
  assert.throws(() => assemble(ops, [a], [Int32Array.of(0, 1)], 2), /part 0 returned 1 rows for 2 samples/);
  assert.throws(() => dispatch(a, [0, 1], () => a, { input: ops, output: ops }), /2 routes for a batch of 1/);
});

test('property: any routes, the output of a row-wise function is the same as running it on the whole batch', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 40 }), async (routes) => {
      const per = 3;
      const x = Float32Array.from({ length: routes.length * per }, (_, i) => i);
      const f = (route: number, part: Float32Array) => part.map((v) => v * 2 + 0 * route);
      const ops = { input: arrayRows(per), output: arrayRows(per) };
      assert.deepEqual(Array.from(dispatch(x, routes, f, ops)), Array.from(x, (v) => v * 2));
      assert.deepEqual(Array.from(await dispatchAsync(x, routes, async (r, p) => f(r, p), ops)), Array.from(x, (v) => v * 2));
    }),
    { numRuns: 200 },
  );
});

test('TF.js: each route runs its own weights on its rows only; gradients reach every route’s weights as in a per-sample loop', () => {
  const before = tf.memory().numTensors;
  const x = tf.randomNormal([6, 4], 0, 1, 'float32', 1);
  const w = [2, 3].map((seed) => tf.tidy(() => tf.variable(tf.randomNormal([4, 3], 0, 1, 'float32', seed))));
  const routes = [1, 0, 0, 1, 1, 0];
  const rowsRun: number[] = [0, 0];
  const routed = () =>
    tf.sum(
      dispatchTensor(x, routes, (r, part) => {
        rowsRun[r] += part.shape[0];
        return tf.matMul(part as tf.Tensor2D, w[r]);
      }).square(),
    ) as tf.Scalar;
  const looped = () => tf.addN(routes.map((r, i) => tf.sum(tf.matMul(tf.slice(x, [i, 0], [1, 4]) as tf.Tensor2D, w[r]).square()))) as tf.Scalar;
  const a = tf.variableGrads(routed, w);
  assert.deepEqual(rowsRun, [3, 3], 'three rows per route, once each: no masked full-batch pass');
  const b = tf.variableGrads(looped, w);
  assert.ok(Math.abs(a.value.dataSync()[0] - b.value.dataSync()[0]) < 1e-3);
  for (const v of w) {
    const ga = a.grads[v.name].dataSync();
    const gb = b.grads[v.name].dataSync();
    ga.forEach((g, i) => assert.ok(Math.abs(g - gb[i]) < 1e-3, `gradient ${v.name}[${i}]`));
  }
  tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads), x, ...w]);
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
});

test('TF.js: the input gradient of a dispatch over several routes is one scatter per reordering, not a zero-filled batch per route', async () => {
  const x = tf.randomNormal([9, 4], 0, 1, 'float32', 3);
  const w = tf.randomNormal([4, 4], 0, 1, 'float32', 4);
  const routes = [2, 0, 1, 1, 2, 0, 0, 2, 1];
  const loss = (a: tf.Tensor) => tf.sum(tf.square(dispatchTensor(a, routes, (r, part) => tf.mul(tf.matMul(part as tf.Tensor2D, w), r + 1))));
  let dx: tf.Tensor | undefined;
  const info = await tf.profile(() => {
    dx = tf.grad(loss)(x);
  });
  const count = (name: string) => info.kernels.filter((k) => k.name === name).length;
  // The permutation into route order and the one back: a gather each, so two segment sums for three routes.
  assert.equal(count('GatherV2'), 2);
  assert.equal(count('UnsortedSegmentSum'), 2);
  const perSample = tf.tidy(() => tf.concat(routes.map((r, i) => tf.grad((a: tf.Tensor) => tf.sum(tf.square(tf.mul(tf.matMul(a as tf.Tensor2D, w), r + 1))))(tf.slice(x, [i, 0], [1, 4])))));
  const [got, want] = [dx!.dataSync(), perSample.dataSync()];
  want.forEach((v, i) => assert.ok(Math.abs(v - got[i]) < 1e-4, `dx[${i}] ${got[i]} against ${v}`));
  tf.dispose([x, w, dx!, perSample]);
});

test('rowsOf gathers only when the rows are not the whole batch in order', () => {
  tf.tidy(() => {
    const x = tf.tensor2d([[1], [2], [3]]);
    assert.equal(rowsOf(tensorRows, x, Int32Array.of(0, 1, 2)), x);
    assert.deepEqual(Array.from(rowsOf(tensorRows, x, Int32Array.of(2, 0)).dataSync()), [3, 1]);
  });
});

test('dispatchFrom: a sample in several output rows (a mixture\'s k experts), each route once on its rows, outputs in the order of the sources', async () => {
  const ops = arrayRows(1);
  const x = Float32Array.from([10, 20, 30]);
  // Output rows: sample 0 to route 2, sample 1 to route 0, sample 0 again to route 0, sample 2 to route 2.
  const sources = Int32Array.from([0, 1, 0, 2]);
  const routes = [2, 0, 0, 2];
  const seen: [number, number[], number[]][] = [];
  const run = (route: number, part: Float32Array, rows: Int32Array) => {
    seen.push([route, Array.from(rows), Array.from(part)]);
    return part.map((v) => v + route);
  };
  const y = dispatchFrom(x, sources, routes, run, { input: ops, output: ops });
  assert.deepEqual(seen, [[0, [1, 2], [20, 10]], [2, [0, 3], [10, 30]]], 'each route once, with its rows of the sources');
  assert.deepEqual(Array.from(y), [12, 20, 10, 32]);
  assert.deepEqual(Array.from(await dispatchFromAsync(x, sources, routes, async (r, p, rows) => run(r, p, rows), { input: ops, output: ops })), [12, 20, 10, 32]);
  assert.deepEqual(Array.from(dispatchFrom(x, new Int32Array(0), [], run, { input: ops, output: ops })), [], 'no row, no run');
  assert.throws(() => dispatchFrom(x, Int32Array.from([3]), [0], run, { input: ops, output: ops }), /row 3 is not in a batch of 3/);
  assert.throws(() => dispatchFrom(x, Int32Array.from([0]), [0, 1], run, { input: ops, output: ops }), /2 routes for 1 rows/);
});

test('padByRoute and dispatchPadded: every route in one call, blocks as wide as the largest route, padding counted, outputs in the order of the sources', () => {
  // Output rows read samples 0, 2, 2, 1, 3 and take routes 1, 0, 1, 1, 0 (sample 2 twice, as a top-2 mixture does).
  const sources = Int32Array.from([0, 2, 2, 1, 3]);
  const routes = [1, 0, 1, 1, 0];
  const layout = padByRoute(sources, routes, 3);
  assert.equal(layout.width, 3, 'route 1 has the most rows, 3');
  assert.deepEqual([...layout.slots], [2, 3, 0, 0, 2, 1, 0, 0, 0], 'route 0: samples 2, 3 and one padding slot; route 1: 0, 2, 1; route 2: all padding');
  assert.equal(layout.padding, 4);
  assert.deepEqual([...layout.at], [3, 0, 4, 5, 1]);
  const ops = arrayRows(2);
  const x = Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3]);
  let calls = 0;
  const y = dispatchPadded(x, sources, routes, 3, (part, l) => {
    calls++;
    assert.equal(ops.count(part), 3 * l.width);
    // Block r adds 10 * (r + 1), as stacked weights would.
    return part.map((v, i) => v + 10 * (Math.floor(i / 2 / l.width) + 1));
  }, { input: ops, output: ops });
  assert.equal(calls, 1);
  assert.deepEqual([...y], [20, 20, 12, 12, 22, 22, 21, 21, 13, 13]);
  assert.throws(() => padByRoute(sources, [1, 0, 3, 1, 0], 3), /route of row 2 must be an integer in 0..2, got 3/);
  assert.throws(() => dispatchPadded(x, Int32Array.from([4]), [0], 1, (p) => p, { input: ops, output: ops }), /row 4 is not in a batch of 4/);
});
