import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import { createModel } from '../models/zoo.js';
import { nhwcToNchw } from '../runtime/core.js';
import { Rng } from '../util/rng.js';

/**
 * Test fixture: gives every BatchNorm distinct per-level statistics and a non-trivial affine map, and every
 * bias non-zero values, so a parity test fails if an export uses the wrong statistics row or folds wrongly.
 */
export function randomizeStatistics(model: Network, seed = 1): void {
  const rng = new Rng(seed);
  for (const w of model.weights()) {
    const kind = /\.(gamma|beta|running_mean|running_var|bias)$/.exec(w.name)?.[1];
    if (!kind) continue;
    const data = Float32Array.from({ length: w.variable.size }, () => {
      const r = rng.next();
      return kind === 'gamma' || kind === 'running_var' ? 0.5 + r : 0.6 * (r - 0.5);
    });
    tf.tidy(() => w.variable.assign(tf.tensor(data, w.variable.shape)));
  }
}

/** Test fixture: max |ref - got| / max(1, max |ref|), the error relative to the scale of the reference scores. */
export function relErr(ref: ArrayLike<number>, got: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`${got.length} values against ${ref.length}`);
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(ref[i] - got[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return diff / scale;
}

/**
 * Test fixture: a small `vgg-exits` (12x12x1 images, four exits) with distinct per-level BatchNorm statistics,
 * and a seeded batch of `n` normal images, as a TF.js tensor (NHWC) and as ONNX Runtime takes it (NCHW).
 */
export function smallExitNet(n: number, seed: number): { net: Network; x: tf.Tensor4D; nchw: Float32Array } {
  const net = createModel('vgg-exits', { inputShape: [12, 12, 1], groups: 4, widths: [8, 8, 16, 16], hidden: 32, exitPool: [2, 2, 2], exitHidden: 16 });
  randomizeStatistics(net, 4);
  const x = tf.randomNormal([n, 12, 12, 1], 0, 1, 'float32', seed) as tf.Tensor4D;
  return { net, x, nchw: nhwcToNchw(x.dataSync() as Float32Array, [1, 12, 12]) };
}

/** Test fixture: max |a - b| over two equally long arrays. */
export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/**
 * Test fixture: a threshold between two neighbouring values near the q-quantile of `xs`: no value sits on
 * it, so float rounding cannot move one across (exit thresholds that split a batch).
 */
export function splitAt(xs: ArrayLike<number>, q: number): number {
  const s = Float64Array.from(xs).sort();
  const i = Math.min(s.length - 2, Math.floor(q * s.length));
  return (s[i] + s[i + 1]) / 2;
}

/**
 * Test fixture: serves the files of `dir` over HTTP at `/<prefix>/<name>`, as a page would fetch an exported
 * folder (404 for anything else); `base` is the server's origin. No keep-alive: a socket the server times out
 * while fetch reuses it fails the fetch on a loaded machine.
 */
export async function serveFolder(dir: string, prefix: string): Promise<{ base: string; close: () => void }> {
  const { readFileSync } = await import('node:fs');
  const { createServer } = await import('node:http');
  const path = await import('node:path');
  const pattern = new RegExp(`^/${prefix}/([\\w.-]+)$`);
  const http = createServer((req, res) => {
    res.setHeader('connection', 'close');
    const name = pattern.exec(req.url ?? '')?.[1];
    try {
      if (!name) throw new Error('not here');
      res.end(readFileSync(path.join(dir, name)));
    } catch {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  const { port } = http.address() as { port: number };
  return { base: `http://127.0.0.1:${port}`, close: () => http.close() };
}

/**
 * Test fixture: `/v1/predict` of a served dynamic folder answers batch `x` (NCHW `shape`) with `want`'s classes,
 * FLOPs ratios and scores (3 classes, within `tol`): what the in-thread dispatcher computed.
 */
export async function assertServedLike(
  app: import('../serve/server.js').DynnServer['app'],
  x: Float32Array,
  shape: number[],
  want: { classes: ArrayLike<number>; flopsRatios: ArrayLike<number>; scores: ArrayLike<number> },
  tol: number,
): Promise<void> {
  const res = await app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: Array.from(x), shape } });
  assert.equal(res.statusCode, 200, res.body);
  const body = res.json() as import('../serve/server.js').PredictResponse;
  assert.deepEqual(body.predictions.map((q) => q.class), [...Array.from(want.classes)]);
  body.predictions.forEach((q, i) => {
    assert.ok(Math.abs(q.flopsRatio! - want.flopsRatios[i]) < 1e-9);
    assert.ok(q.scores.every((s, j) => Math.abs(s - want.scores[i * 3 + j]) < tol));
  });
  // Its gates choose each sample's compute: a request's u is refused, not silently ignored.
  const withU = await app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: Array.from(x), shape, u: 0.5 } });
  assert.equal(withU.statusCode, 400, withU.body);
  assert.match(withU.json().message, /u does not apply to \S+: its gates choose each sample's compute inside the network/);
}

/** One node of an ONNX graph as ONNX Runtime's profile saw it: its median kernel time per run (the first run, which packs weights and grows the arena, weighs no more than any other), and the rows (leading dim of its first input) of its last run. */
export interface ProfiledNode {
  name: string;
  op: string;
  us: number;
  rows: number;
}

/**
 * Runs the ONNX graph at `file` `runs` times on `feeds` (float32 or float64 data and dims; [] for a scalar) on one thread
 * with ONNX Runtime's profiler, and returns each node's median kernel time per run and its rows: where a graph's time goes
 * (benches), and how many rows each node processed (tests that count the work a dispatch does).
 */
export async function profileNodes(file: string, feeds: Record<string, { data: Float32Array | Float64Array; dims: number[] }>, runs: number): Promise<ProfiledNode[]> {
  const ort = (await import('onnxruntime-node')).default;
  const { mkdtempSync, readdirSync, readFileSync, rmSync } = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dynn-profile-'));
  try {
    const s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1, enableProfiling: true, profileFilePrefix: path.join(dir, 'p') });
    const tensors = Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, v.data instanceof Float64Array ? new ort.Tensor('float64', v.data, v.dims) : new ort.Tensor('float32', v.data, v.dims)]));
    for (let i = 0; i < runs; i++) await s.run(tensors);
    s.endProfiling();
    await s.release();
    type Event = { cat: string; name: string; dur: number; args?: { op_name?: string; input_type_shape?: Record<string, number[]>[] } };
    const events = JSON.parse(readFileSync(path.join(dir, readdirSync(dir)[0]), 'utf8')) as Event[];
    const byNode = new Map<string, ProfiledNode & { durs: number[] }>();
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
      const name = e.name.slice(0, -'_kernel_time'.length);
      const t = byNode.get(name) ?? { name, op: e.args?.op_name ?? '', us: 0, rows: NaN, durs: [] };
      t.durs.push(e.dur);
      const first = e.args?.input_type_shape?.[0];
      if (first) t.rows = Object.values(first)[0]?.[0] ?? NaN;
      byNode.set(name, t);
    }
    return [...byNode.values()].map(({ durs, ...t }) => ({ ...t, us: [...durs].sort((a, b) => a - b)[durs.length >> 1] }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
