import { DynnError } from '../util/errors.js';

/**
 * Per-sample routing, in one place: a batch is partitioned by each sample's route, each part runs once as a
 * smaller batch (sliced weights, a subnet, an ONNX level), and the parts' outputs are put back in input order.
 * Never one sample at a time, never a mask. The same partition serves TF.js tensors (gradients flow through
 * the gathers, `./tensor.ts`) and flat float arrays (ONNX Runtime's batches), through `RowOps`. This file loads
 * no TF.js: the ONNX runtime and the server use it too.
 */

/** A batch split by route: the routes present, ascending, with the (ascending) sample indices of each. */
export interface Partition {
  /** Samples in the batch. */
  count: number;
  /** Each route present and the samples that take it. */
  groups: { route: number; rows: Int32Array }[];
}

/** Splits samples 0..n-1 by `routes[i]` (integers); routes with no sample are absent. */
export function partition(routes: ArrayLike<number>): Partition {
  const byRoute = new Map<number, number[]>();
  for (let i = 0; i < routes.length; i++) {
    const r = routes[i];
    if (!Number.isInteger(r)) throw new DynnError(`route of sample ${i} must be an integer, got ${r}`);
    const g = byRoute.get(r);
    if (g) g.push(i);
    else byRoute.set(r, [i]);
  }
  const groups = [...byRoute.entries()].sort((a, b) => a[0] - b[0]).map(([route, rows]) => ({ route, rows: Int32Array.from(rows) }));
  return { count: routes.length, groups };
}

/** How a kind of batch is cut into rows and joined again. */
export interface RowOps<T> {
  /** Samples in a batch. */
  count(x: T): number;
  /** The batch of samples `rows`, in that order. */
  gather(x: T, rows: Int32Array): T;
  /** Batches joined along the sample axis. */
  concat(parts: T[]): T;
  /**
   * The batches of several row sets at once (a row may be in more than one: a mixture of experts' top k).
   * Absent, each part is gathered when it runs. TF.js tensors permute once and split, so the gradient is one
   * concatenation and one scatter: a gather per part would give each part's gradient as a whole batch of zeros
   * around its rows, added up part by part.
   */
  parts?(x: T, rowSets: Int32Array[]): T[];
}

/** Rows of flat float32 batches whose samples are `per` values each (ONNX Runtime's tensors' data). */
export function arrayRows(per: number): RowOps<Float32Array> {
  return {
    count: (x) => x.length / per,
    gather: (x, rows) => {
      const out = new Float32Array(rows.length * per);
      rows.forEach((r, j) => out.set(x.subarray(r * per, (r + 1) * per), j * per));
      return out;
    },
    concat: (parts) => {
      if (parts.length === 1) return parts[0];
      const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        out.set(p, o);
        o += p.length;
      }
      return out;
    },
  };
}

/** The part of batch `x` that `rows` names: `x` itself when they are all of it, in order. */
export function rowsOf<T>(ops: RowOps<T>, x: T, rows: Int32Array): T {
  return rows.length === ops.count(x) && rows.every((r, i) => r === i) ? x : ops.gather(x, rows);
}

/**
 * The parts of `x` that `rowSets` name, part k as `part(k)`: all at once through `ops.parts` where the kind of
 * batch has it, else each gathered when asked (ONNX Runtime's batches: no second copy of the whole batch held).
 */
export function partsOf<T>(ops: RowOps<T>, x: T, rowSets: Int32Array[]): (k: number) => T {
  if (rowSets.length === 1 || !ops.parts) return (k) => rowsOf(ops, x, rowSets[k]);
  const parts = ops.parts(x, rowSets);
  return (k) => parts[k];
}

/**
 * Puts per-part outputs back in input order: `outputs[k]` holds the rows of `rowSets[k]`, in that order, and
 * together the sets cover samples 0..count-1 once each.
 */
export function assemble<T>(ops: RowOps<T>, outputs: T[], rowSets: Int32Array[], count: number): T {
  if (outputs.length !== rowSets.length) throw new DynnError(`${outputs.length} outputs for ${rowSets.length} parts`);
  const position = new Int32Array(count).fill(-1);
  let at = 0;
  rowSets.forEach((rows, k) => {
    if (ops.count(outputs[k]) !== rows.length) throw new DynnError(`part ${k} returned ${ops.count(outputs[k])} rows for ${rows.length} samples`);
    for (const r of rows) {
      if (position[r] !== -1) throw new DynnError(`sample ${r} is in two parts`);
      position[r] = at++;
    }
  });
  if (at !== count) throw new DynnError(`the parts hold ${at} of ${count} samples`);
  const joined = ops.concat(outputs);
  return position.every((p, i) => p === i) ? joined : ops.gather(joined, position);
}

/** Output row p reads input row p: the sources of a dispatch where every sample takes one route. */
function oneRowEach<T>(x: T, routes: ArrayLike<number>, ops: RowOps<T>): Int32Array {
  const n = ops.count(x);
  if (routes.length !== n) throw new DynnError(`${routes.length} routes for a batch of ${n}`);
  return Int32Array.from({ length: n }, (_, i) => i);
}

/** The routes' partition of the output rows, after checking that `sources` name rows of `x`. */
function partitionFrom<T>(x: T, sources: Int32Array, routes: ArrayLike<number>, ops: RowOps<T>): Partition {
  if (routes.length !== sources.length) throw new DynnError(`${routes.length} routes for ${sources.length} rows`);
  const n = ops.count(x);
  for (const s of sources) if (!(s >= 0 && s < n)) throw new DynnError(`row ${s} is not in a batch of ${n}`);
  return partition(routes);
}

/**
 * Runs each route's samples as one batch and returns the outputs in input order: `run(route, part, rows)`
 * gets the samples `rows` (ascending) of `x`. Routes are run in ascending order.
 */
export function dispatch<T, U>(
  x: T,
  routes: ArrayLike<number>,
  run: (route: number, part: T, rows: Int32Array) => U,
  ops: { input: RowOps<T>; output: RowOps<U> },
): U {
  return dispatchFrom(x, oneRowEach(x, routes, ops.input), routes, run, ops);
}

/** `dispatch` for a `run` that answers asynchronously (ONNX Runtime); the parts run one after another. */
export async function dispatchAsync<T, U>(
  x: T,
  routes: ArrayLike<number>,
  run: (route: number, part: T, rows: Int32Array) => Promise<U>,
  ops: { input: RowOps<T>; output: RowOps<U> },
): Promise<U> {
  return dispatchFromAsync(x, oneRowEach(x, routes, ops.input), routes, run, ops);
}

/**
 * `dispatch` where output row p reads input row `sources[p]` (a sample can appear in several output rows: a
 * mixture of experts sends it to each of its k experts). Each route's rows run once as one batch; the
 * outputs come back in the order of `sources`.
 */
export function dispatchFrom<T, U>(
  x: T,
  sources: Int32Array,
  routes: ArrayLike<number>,
  run: (route: number, part: T, rows: Int32Array) => U,
  ops: { input: RowOps<T>; output: RowOps<U> },
): U {
  const p = partitionFrom(x, sources, routes, ops.input);
  const part = partsOf(ops.input, x, p.groups.map((g) => g.rows.map((r) => sources[r])));
  const outputs = p.groups.map((g, k) => run(g.route, part(k), g.rows));
  return assemble(ops.output, outputs, p.groups.map((g) => g.rows), sources.length);
}

/** `dispatchFrom` for a `run` that answers asynchronously (ONNX Runtime); the parts run one after another. */
export async function dispatchFromAsync<T, U>(
  x: T,
  sources: Int32Array,
  routes: ArrayLike<number>,
  run: (route: number, part: T, rows: Int32Array) => Promise<U>,
  ops: { input: RowOps<T>; output: RowOps<U> },
): Promise<U> {
  const p = partitionFrom(x, sources, routes, ops.input);
  const part = partsOf(ops.input, x, p.groups.map((g) => g.rows.map((r) => sources[r])));
  const outputs: U[] = [];
  for (const [k, g] of p.groups.entries()) outputs.push(await run(g.route, part(k), g.rows));
  return assemble(ops.output, outputs, p.groups.map((g) => g.rows), sources.length);
}

/**
 * A dispatch laid out for one batched call over all routes (GShard's dispatch, done with gathers): route r's
 * rows fill block r of `width` slots, `width` being the most rows any route has, and the rest of each block is
 * padding. Padding is the only work done on rows a route was not given.
 */
export interface PaddedLayout {
  /** Blocks, one per route 0..routes-1 (a route with no row is all padding). */
  routes: number;
  /** Slots per block: the largest route's rows. */
  width: number;
  /** The input row each of the routes * width slots reads; padding slots read row 0 (their output is unused). */
  slots: Int32Array;
  /** The slot of each output row p (the order of `sources`). */
  at: Int32Array;
  /** Slots that are padding: routes * width - sources.length. */
  padding: number;
}

/** Lays out output rows p (reading input row `sources[p]`, taking route `routes[p]` in 0..R-1) in R blocks of equal width. */
export function padByRoute(sources: Int32Array, routes: ArrayLike<number>, R: number): PaddedLayout {
  if (routes.length !== sources.length) throw new DynnError(`${routes.length} routes for ${sources.length} rows`);
  const load = new Int32Array(R);
  for (let p = 0; p < routes.length; p++) {
    const r = routes[p];
    if (!(Number.isInteger(r) && r >= 0 && r < R)) throw new DynnError(`route of row ${p} must be an integer in 0..${R - 1}, got ${r}`);
    load[r]++;
  }
  const width = Math.max(0, ...load);
  const slots = new Int32Array(R * width);
  const at = new Int32Array(sources.length);
  const next = Int32Array.from({ length: R }, (_, r) => r * width);
  for (let p = 0; p < routes.length; p++) {
    at[p] = next[routes[p]]++;
    slots[at[p]] = sources[p];
  }
  return { routes: R, width, slots, at, padding: R * width - sources.length };
}

/**
 * `dispatchFrom` as ONE call for every route: the rows are gathered into `padByRoute`'s layout, `run(part,
 * layout)` computes all blocks at once (stacked experts: a batched product, block r with route r's weights),
 * and the outputs come back in the order of `sources`.
 */
export function dispatchPadded<T, U>(
  x: T,
  sources: Int32Array,
  routes: ArrayLike<number>,
  R: number,
  run: (part: T, layout: PaddedLayout) => U,
  ops: { input: RowOps<T>; output: RowOps<U> },
): U {
  const layout = paddedFrom(x, sources, routes, R, ops.input);
  return ops.output.gather(run(ops.input.gather(x, layout.slots), layout), layout.at);
}

/** `dispatchPadded` for a `run` that answers asynchronously (ONNX Runtime). */
export async function dispatchPaddedAsync<T, U>(
  x: T,
  sources: Int32Array,
  routes: ArrayLike<number>,
  R: number,
  run: (part: T, layout: PaddedLayout) => Promise<U>,
  ops: { input: RowOps<T>; output: RowOps<U> },
): Promise<U> {
  const layout = paddedFrom(x, sources, routes, R, ops.input);
  return ops.output.gather(await run(ops.input.gather(x, layout.slots), layout), layout.at);
}

function paddedFrom<T>(x: T, sources: Int32Array, routes: ArrayLike<number>, R: number, ops: RowOps<T>): PaddedLayout {
  const n = ops.count(x);
  for (const s of sources) if (!(s >= 0 && s < n)) throw new DynnError(`row ${s} is not in a batch of ${n}`);
  if (sources.length === 0) throw new DynnError('a padded dispatch needs at least one row');
  return padByRoute(sources, routes, R);
}
