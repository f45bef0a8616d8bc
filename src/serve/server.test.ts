import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { saveOnnx } from '../export/export.js';
import { maxDiff, randomizeStatistics } from '../export/fixtures.js';
import { levelIndexFor } from '../export/metadata.js';
import { OnnxModel } from '../runtime/node.js';
import { nhwcToNchw } from '../runtime/core.js';
import { latencyTablePath, LATENCY_FORMAT, saveLatencyTable } from '../runtime/profile.js';
import { Rng } from '../util/rng.js';
import { serveCommand } from '../cli/serve-commands.js';
import { Policy } from '../control/policy.js';
import { greedyActions } from '../control/bandit.js';
import { DynnServer, predictResponseText, type PredictResponse } from './server.js';
import { LATE_SHARE, PLAN_STEP } from './policy.js';
import { SERVE_NODE_FLAGS } from './node-flags.js';
import { overLimit, request, slowClient } from '../util/http-fixtures.js';
import { createServer, type AddressInfo } from 'node:net';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-serve-'));
const file = path.join(tmp, 'vgg.onnx');
// Three channels so the NHWC layout differs from NCHW.
const net = createModel('vgg-w', { inputShape: [8, 8, 3], groups: 4, widths: [8, 8, 16, 16], hidden: 32 });
randomizeStatistics(net, 3);
const meta = await saveOnnx(net, file, { classNames: Array.from({ length: 10 }, (_, i) => `class-${i}`) });
// The same network exported with an (untrained) bandit controller: its choices follow its initial weights,
// and seed 0 sends random inputs to all three actions (about 40/20/40%), so the SLO cap below has choices
// above level 1 to change.
const ctrlFile = path.join(tmp, 'vgg-ctrl.onnx');
const ACTIONS = [0.2, 0.6, 1];
const ctrlPolicy = new Policy({ inputShape: net.inputShape, actions: ACTIONS, seed: 0 });
await saveOnnx(net, ctrlFile, { controller: { network: ctrlPolicy.net, actions: ACTIONS } });
net.dispose();
const [C, H, W] = meta.input.shape;
const PER = C * H * W;
const K = meta.levels.length;

// A synthetic latency table: level i takes 100(i+1) ms at batch 1 and 400(i+1) ms at batch 64. ONNX Runtime is
// far faster on this tiny model, so the online correction keeps the factor at 1, and the gaps between levels
// leave room for queue waits of tens of ms on a busy machine.
const tableMs = (i: number) => ({ '1': 100 * (i + 1), '64': 400 * (i + 1) });
for (const f of [file, ctrlFile]) {
  await saveLatencyTable(f, {
    format: LATENCY_FORMAT,
    modelSha256: createHash('sha256').update(readFileSync(f)).digest('hex'),
    measuredAt: new Date().toISOString(),
    host: { cpus: 2, cpuModel: 'synthetic', threads: 1 },
    reps: 1,
    batches: [1, 64],
    levels: meta.levels.map((l, i) => ({ u: l.u, level: l.level, flopsRatio: l.flopsRatio, latencyMs: tableMs(i) })),
  });
}

const rng = new Rng(5);
const images = (n: number) => Float32Array.from({ length: n * PER }, () => rng.next() * 2 - 1);
/** NCHW flat -> nested [N][C][H][W]. */
function nest(x: Float32Array, n: number, dims = [C, H, W]): unknown[] {
  const rec = (off: number, k: number): unknown[] | number => {
    if (k === dims.length) return x[off];
    const step = dims.slice(k + 1).reduce((a, b) => a * b, 1);
    return Array.from({ length: dims[k] }, (_, i) => rec(off + i * step, k + 1));
  };
  return Array.from({ length: n }, (_, i) => rec(i * PER, 0));
}
function nchwToNhwc(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let n = 0; n < x.length / PER; n++)
    for (let c = 0; c < C; c++) for (let y = 0; y < H; y++) for (let v = 0; v < W; v++) out[n * PER + (y * W + v) * C + c] = x[n * PER + (c * H + y) * W + v];
  return out;
}

const reference = await OnnxModel.load(file, { threads: 1 });
const server = await DynnServer.create({ model: file, policy: 'adaptive', sloMs: 350, maxBatch: 16, maxWaitMs: 1, threads: 1 });
const url = await server.listen({ port: 0 });
after(async () => {
  await server.close();
  await reference.dispose();
});

async function post(body: unknown, o: { query?: string; type?: string; raw?: boolean; at?: string } = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${o.at ?? url}/v1/predict${o.query ?? ''}`, {
    method: 'POST',
    headers: { 'content-type': o.type ?? 'application/json' },
    body: o.raw ? (body as BodyInit) : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}
const binary = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

test('the response text is what JSON.stringify gives for the response object', () => {
  const rng = new Rng(5);
  const names = ['T-shirt/top', 'a "quoted" \\ name', 'é'];
  const round = (ms: number) => Math.round(ms * 1000) / 1000;
  for (const flops of [false, true]) {
    const n = 5;
    const c = 3;
    const res = {
      // Tiny, huge and signed-zero values too: the text must be JSON.stringify's for each.
      scores: Float32Array.from({ length: n * c }, (_, i) => [-0, 1e-30, -3e38][i] ?? (rng.next() - 0.5) * 10 ** rng.int(12)),
      classes: Int32Array.from({ length: n }, (_, i) => (i === n - 1 ? 7 : rng.int(c))),
      numClasses: c,
      u: Float64Array.from({ length: n }, (_, i) => (i === 0 ? NaN : rng.next())),
      level: Int32Array.from({ length: n }, () => rng.int(9)),
      ...(flops ? { flopsRatio: Float64Array.from({ length: n }, () => rng.next()) } : {}),
      queueMs: 1.23456789,
      inferenceMs: 0,
      batchSize: 64,
      readyAt: 0,
    };
    const object: PredictResponse = {
      predictions: Array.from(res.classes, (cls, i) => ({
        class: cls,
        className: names[cls] ?? String(cls),
        u: res.u[i],
        level: res.level[i],
        scores: Array.from(res.scores.subarray(i * c, (i + 1) * c)),
        ...(res.flopsRatio ? { flopsRatio: res.flopsRatio[i] } : {}),
      })),
      timings: { queueMs: round(res.queueMs), inferenceMs: round(res.inferenceMs), totalMs: round(9.87654321) },
      batchSize: res.batchSize,
    };
    assert.equal(predictResponseText(res, 9.87654321, names.map((x) => JSON.stringify(x))), JSON.stringify(object));
  }
});

test('JSON (nested, flat, NHWC) and binary predictions equal OnnxModel.run', async () => {
  const x = images(3);
  for (const u of [meta.levels[0].u, 0.55, 1]) {
    const want = await reference.run(x, u);
    const bodies: [string, unknown, { query?: string; type?: string; raw?: boolean }][] = [
      ['nested NCHW', { inputs: nest(x, 3), u }, {}],
      ['flat', { inputs: Array.from(x), shape: [3, C, H, W], u }, {}],
      ['nested NHWC', { inputs: nest(nchwToNhwc(x), 3, [H, W, C]), u, layout: 'NHWC' }, {}],
      ['binary', binary(x), { type: 'application/octet-stream', raw: true, query: `?u=${u}` }],
      ['binary NHWC', binary(nchwToNhwc(x)), { type: 'application/octet-stream', raw: true, query: `?u=${u}&layout=NHWC&shape=3,${H},${W},${C}` }],
    ];
    for (const [name, body, o] of bodies) {
      const { status, json } = await post(body, o);
      assert.equal(status, 200, `${name}: ${JSON.stringify(json)}`);
      const r = json as unknown as PredictResponse;
      assert.equal(r.predictions.length, 3);
      const scores = r.predictions.flatMap((p) => p.scores);
      assert.ok(maxDiff(scores, want.scores) <= 1e-5 * Math.max(1, ...Array.from(want.scores, Math.abs)), `${name} at u=${u}`);
      assert.deepEqual(r.predictions.map((p) => p.class), Array.from(want.classes), name);
      assert.deepEqual(r.predictions.map((p) => p.className), Array.from(want.classes, (c) => `class-${c}`));
      assert.deepEqual(r.predictions.map((p) => p.u), [want.u, want.u, want.u], 'the u actually used');
      assert.deepEqual(r.predictions.map((p) => p.level), [want.level, want.level, want.level]);
      assert.ok(r.timings.totalMs >= r.timings.queueMs && r.timings.inferenceMs > 0 && r.batchSize >= 3, JSON.stringify(r.timings));
    }
  }
  // One image without a batch dimension.
  const one = images(1);
  const { json } = await post({ inputs: nest(one, 1)[0], u: 1 });
  const want = await reference.run(one, 1);
  assert.deepEqual((json as unknown as PredictResponse).predictions.map((p) => p.class), [want.classes[0]]);
});

test('the adaptive policy honours the SLO, a request’s budgetMs and its own u', async () => {
  // Alone (batch 1): the SLO of 350 ms fits 300 ms (level 2) but not 400 ms, with room for a wait of up to 50 ms.
  const fit = (budget: number) => Math.max(0, Math.min(K - 1, Math.floor((budget - 50) / 100) - 1));
  const levelOf = async (extra: Record<string, unknown>) => {
    const { status, json } = await post({ inputs: Array.from(images(1)), ...extra });
    assert.equal(status, 200, JSON.stringify(json));
    return (json as unknown as PredictResponse).predictions[0];
  };
  assert.equal(fit(350), 2);
  assert.equal((await levelOf({})).u, meta.levels[fit(350)].u);
  assert.equal((await levelOf({ budgetMs: 250 })).u, meta.levels[fit(250)].u);
  assert.equal((await levelOf({ budgetMs: 50 })).u, meta.levels[0].u, 'nothing fits: the cheapest level');
  assert.equal((await levelOf({ budgetMs: 10000 })).u, meta.levels[K - 1].u);
  for (const u of [0.3, 0.8, 1]) assert.equal((await levelOf({ u })).u, meta.levels[levelIndexFor(meta.levels, u)].u, `u=${u}`);
  assert.equal(server.policy.estimator?.factor, 1);
});

const BAD: [string, () => Promise<{ status: number; json: Record<string, unknown> }>, number, string, RegExp][] = [
  ['nested wrong width', () => post({ inputs: [nest(images(1), 1)[0]].map((s) => (s as number[][][]).map((ch) => ch.map((row) => row.slice(1)))) }), 400, 'invalid_input', /inputs\[0\]\[0\]\[0\] must be an array of 8 \(W\), got 7 entries/],
  ['nested too deep', () => post({ inputs: [nest(images(1), 1)] }), 400, 'invalid_input', /nested 5 deep/],
  ['flat partial sample', () => post({ inputs: Array.from(images(1)).slice(1) }), 400, 'invalid_input', /191 values, not a whole number of samples of CxHxW = \[3,8,8\]/],
  ['flat wrong shape', () => post({ inputs: Array.from(images(1)), shape: [1, 8, 8, 3] }), 400, 'invalid_input', /shape \[1,8,8,3\] does not fit the model/],
  ['infinite value', () => post('{"inputs": [' + Array(PER).fill('1e999').join(',') + ']}', { raw: true }), 400, 'invalid_input', /inputs\[0\] is Infinity, not a finite number/],
  ['null value', () => post({ inputs: [...Array(PER - 1).fill(0), null] }), 400, 'invalid_input', /inputs\[191\] is null, not a finite number/],
  ['string value', () => post({ inputs: ['NaN', ...Array(PER - 1).fill(0)] }), 400, 'invalid_input', /inputs\[0\] is "NaN", not a finite number/],
  ['binary NaN', () => post(binary(images(1).fill(NaN, 3, 4)), { raw: true, type: 'application/octet-stream' }), 400, 'invalid_input', /value 3 of the body is NaN/],
  ['binary odd length', () => post(Buffer.alloc(PER * 4 + 2), { raw: true, type: 'application/octet-stream' }), 400, 'invalid_input', /770 bytes, not a whole number of float32/],
  ['binary empty', () => post(Buffer.alloc(0), { raw: true, type: 'application/octet-stream' }), 400, 'invalid_input', /the body is empty/],
  ['u zero', () => post({ inputs: Array.from(images(1)), u: 0 }), 400, 'invalid_input', /body u: u must be in \(0, 1\]/],
  ['u above 1', () => post({ inputs: Array.from(images(1)), u: 1.5 }), 400, 'invalid_input', /u must be in \(0, 1\]/],
  ['u string', () => post({ inputs: Array.from(images(1)), u: 'high' }), 400, 'invalid_input', /u must be a number in \(0, 1\]/],
  ['u in query', () => post(binary(images(1)), { raw: true, type: 'application/octet-stream', query: '?u=abc' }), 400, 'invalid_input', /query u: u must be a number/],
  ['u twice', () => post({ inputs: Array.from(images(1)), u: 1 }, { query: '?u=0.5' }), 400, 'invalid_input', /u is given both in the query string and in the body/],
  ['budget negative', () => post({ inputs: Array.from(images(1)), budgetMs: -3 }), 400, 'invalid_input', /budgetMs must be > 0/],
  ['budget huge', () => post({ inputs: Array.from(images(1)), budgetMs: 1e9 }), 400, 'invalid_input', /budgetMs must be <= 600000/],
  ['unknown field', () => post({ inputs: Array.from(images(1)), temperature: 2 }), 400, 'invalid_input', /Unrecognized key: "temperature"/],
  ['unknown query', () => post({ inputs: Array.from(images(1)) }, { query: '?foo=1' }), 400, 'invalid_input', /query: Unrecognized key: "foo"/],
  ['no inputs', () => post({ u: 1 }), 400, 'invalid_input', /inputs must be a non-empty array/],
  ['body not an object', () => post([1, 2, 3]), 400, 'invalid_input', /the JSON body must be an object/],
  ['invalid JSON', () => post('{"inputs": [1, 2', { raw: true }), 400, 'invalid_json', /JSON/],
  ['a __proto__ key', () => post('{"inputs": [0.1], "__proto__": {"x": 1}}', { raw: true }), 400, 'invalid_json', /or it has a "__proto__" key or a "constructor" key holding "prototype" \(refused\)/],
  ['empty JSON', () => post('', { raw: true }), 400, 'invalid_json', /empty/i],
  ['too many samples', () => post(binary(images(17)), { raw: true, type: 'application/octet-stream' }), 413, 'payload_too_large', /at most 16 samples/],
  ['oversized body', () => post(Buffer.alloc(8 << 20), { raw: true, type: 'application/octet-stream' }), 413, 'payload_too_large', /too large/i],
  ['wrong content type', () => post('hello', { raw: true, type: 'text/plain' }), 415, 'unsupported_media_type', /application\/json or application\/octet-stream/],
  ['form content type', () => post('inputs=1', { raw: true, type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type', /application\/json or application\/octet-stream/],
  ['float32 overflow', () => post({ inputs: [3.5e38, ...Array(PER - 1).fill(0)] }), 400, 'invalid_input', /inputs\[0\] is 3\.5e\+38, outside the float32 range/],
  ['float32 overflow, nested', () => post({ inputs: nest(images(1).fill(0), 1, [C, H, W]).map((s) => ((s as number[][][])[2][7][1] = -1e39, s)) }), 400, 'invalid_input', /inputs\[0\]\[2\]\[7\]\[1\] is -1e\+39, outside the float32 range/],
  ['deeply nested value', () => post('{"inputs": [' + Array(PER - 1).fill('0').join(',') + ',' + '['.repeat(50_000) + ']'.repeat(50_000) + ']}', { raw: true }), 400, 'invalid_input', /inputs\[191\] is an array of 1, not a finite number/],
  ['deeply nested inputs', () => post('{"inputs": ' + '['.repeat(50_000) + '0' + ']'.repeat(50_000) + '}', { raw: true }), 400, 'invalid_input', /nested 50000 deep/],
  ['huge JSON', () => post('{"inputs": [' + '0,'.repeat(600_000) + '0]}', { raw: true }), 413, 'payload_too_large', /too large/i],
  ['non-finite scores (JSON)', () => post({ inputs: Array(PER).fill(3e38) }), 422, 'non_finite_output', /^the model produced non-finite scores for sample 0 \(class \d is (NaN|-?Infinity)\)/],
  ['non-finite scores (binary)', () => post(binary(images(2).fill(-3e38, PER)), { raw: true, type: 'application/octet-stream' }), 422, 'non_finite_output', /^the model produced non-finite scores for sample 1 /],
];

test('every bad input gets the right 4xx and message, and the server keeps serving', async () => {
  for (const [name, send, status, kind, message] of BAD) {
    const r = await send();
    assert.equal(r.status, status, `${name}: ${JSON.stringify(r.json)}`);
    assert.equal(r.json.error, kind, name);
    assert.match(String(r.json.message), message, name);
  }
  for (const [method, route] of [['GET', '/nope'], ['GET', '/v1/predict'], ['DELETE', '/healthz']]) {
    const res = await fetch(`${url}${route}`, { method });
    assert.equal(res.status, 404);
    assert.match(((await res.json()) as { message: string }).message, new RegExp(`no route ${method} ${route}; routes: POST /v1/predict`));
  }
  const ok = await post({ inputs: Array.from(images(2)) });
  assert.equal(ok.status, 200);
  const [good, nonFinite] = await Promise.all([post({ inputs: Array.from(images(1)) }), post({ inputs: Array(PER).fill(3e38) })]);
  assert.deepEqual([good.status, nonFinite.status], [200, 422], 'a request batched with one whose scores overflow is answered');
  const health = await fetch(`${url}/healthz`);
  assert.equal(health.status, 200);
  assert.equal(((await health.json()) as { status: string }).status, 'ok');
});

/** Parses Prometheus text exposition: every line a comment (HELP/TYPE) or `name{labels} value`. */
function parseProm(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      assert.match(line, /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$/, line);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)$/.exec(line);
    assert.ok(m, `not Prometheus text: ${line}`);
    out.set(m[1] + (m[2] ?? ''), Number(m[3].replace('Inf', 'Infinity')));
  }
  return out;
}

test('concurrent requests are micro-batched, and /metrics is Prometheus text with the counts', async () => {
  const s = await DynnServer.create({ model: file, policy: 'fixed:1', maxBatch: 16, maxWaitMs: 30, threads: 1 });
  const at = await s.listen({ port: 0 });
  try {
    const n = 40;
    const res = await Promise.all(Array.from({ length: n }, () => post({ inputs: Array.from(images(1)) }, { at })));
    assert.ok(res.every((r) => r.status === 200));
    const sizes = res.map((r) => (r.json as unknown as PredictResponse).batchSize);
    assert.ok(Math.max(...sizes) > 1, `batch sizes ${sizes}`);
    assert.ok(Math.max(...sizes) <= 16);
    await post({ inputs: [1] }, { at });
    await post('{', { at, raw: true });
    await fetch(`${at}/missing`);
    const metrics = await fetch(`${at}/metrics`);
    assert.match(metrics.headers.get('content-type') ?? '', /^text\/plain/);
    const m = parseProm(await metrics.text());
    assert.equal(m.get('dynn_requests_total{outcome="ok"}'), n);
    assert.equal(m.get('dynn_requests_total{outcome="error"}'), 3);
    assert.equal(m.get('dynn_errors_total{kind="invalid_input"}'), 1);
    assert.equal(m.get('dynn_errors_total{kind="invalid_json"}'), 1);
    assert.equal(m.get('dynn_errors_total{kind="not_found"}'), 1);
    assert.equal(m.get('dynn_batch_size_sum'), n, 'every sample ran once');
    const runs = m.get('dynn_batch_size_count') as number;
    assert.ok(runs < n && runs >= Math.ceil(n / 16), `${runs} runs for ${n} concurrent requests`);
    assert.equal(m.get('dynn_batch_size_bucket{le="1"}') !== runs, true, 'some runs held more than one sample');
    assert.equal(m.get('dynn_request_duration_seconds_count'), n);
    assert.equal(m.get('dynn_utilization_count'), n);
    assert.equal(m.get('dynn_utilization_bucket{le="1"}'), n);
    assert.equal(m.get(`dynn_utilization_bucket{le="${meta.levels[K - 2].u}"}`), 0, 'fixed:1 ran every sample at u = 1');
    assert.equal(m.get('dynn_queue_depth'), 0);
    assert.ok((m.get('dynn_process_resident_memory_bytes') as number) > 0);
  } finally {
    await s.close();
  }
});

test('no memory kept across requests: the heap stays flat over many requests', async () => {
  const v8 = await import('node:v8');
  const vm = await import('node:vm');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const body = binary(images(16));
  const burst = () => Promise.all(Array.from({ length: 20 }, () => post(body, { raw: true, type: 'application/octet-stream' })));
  // Unreachable ArrayBuffers are swept in the background: collect, wait, collect again.
  const settle = async () => {
    for (let i = 0; i < 3; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  for (let i = 0; i < 10; i++) await burst();
  await settle();
  // Typed-array contents live outside the JS heap: count them too.
  const used = () => process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
  const before = used();
  for (let i = 0; i < 25; i++) await burst(); // 500 requests, 8000 samples (6 MB of images)
  await settle();
  const grown = used() - before;
  assert.ok(grown < 2 << 20, `heap grew ${(grown / 1e6).toFixed(2)} MB over 500 requests`);
});

test('the controller policy: the bandit exported in the model picks u per input in ONNX Runtime, the SLO caps it', async () => {
  const s = await DynnServer.create({ model: ctrlFile, policy: 'controller', sloMs: 400, maxBatch: 16, threads: 1 });
  const at = await s.listen({ port: 0 });
  try {
    const x = images(12);
    // Reference: the same policy in TF.js on the NHWC images, greedy action per sample.
    const p = tf.tidy(() => ctrlPolicy.probabilities(tf.tensor4d(nchwToNhwc(x), [12, H, W, C])).dataSync() as Float32Array);
    const chosen = Array.from(greedyActions(p, ACTIONS.length), (k) => meta.levels[levelIndexFor(meta.levels, ACTIONS[k])].u);
    const generous = await post(binary(x), { at, raw: true, type: 'application/octet-stream', query: '?budgetMs=10000' });
    assert.deepEqual((generous.json as unknown as PredictResponse).predictions.map((q) => q.u), chosen);
    // Under the server's SLO the choice is capped: a batch of 12 takes 100(i+1)(1 + 3 * 11/63) = 152(i+1) ms
    // at level i in the synthetic table, so 400 ms fits level 1 for any wait under 95 ms, and never level 2.
    const capped = await post(binary(x), { at, raw: true, type: 'application/octet-stream' });
    assert.deepEqual((capped.json as unknown as PredictResponse).predictions.map((q) => q.u), chosen.map((u) => Math.min(u, meta.levels[1].u)));
    assert.ok(chosen.some((u) => u > meta.levels[1].u), 'the cap changed some choices');
  } finally {
    await s.close();
    ctrlPolicy.dispose();
  }
  // A model exported without a controller cannot serve the controller policy.
  await assert.rejects(DynnServer.create({ model: file, policy: 'controller', threads: 1 }), /policy controller needs a model exported with its controller: dynn export RUN --onnx .*vgg\.onnx --controller DIR/);
});

test('startup: a missing latency table is a clear error, --profile measures one, fixed needs none', async () => {
  const bare = path.join(tmp, 'bare.onnx');
  copyFileSync(file, bare);
  await assert.rejects(DynnServer.create({ model: bare }), /policy adaptive needs the latency table beside the model .*run `dynn profile .*bare\.onnx.*--profile/);
  await assert.rejects(DynnServer.create({ model: bare, policy: 'controller' }), /policy controller needs the latency table/);
  await assert.rejects(DynnServer.create({ model: bare, policy: 'fixed:2' }), /policy fixed needs a utilization in \(0, 1\]/);
  await assert.rejects(DynnServer.create({ model: bare, policy: 'fixed:1', maxQueue: 2 }), /max queue must be an integer >= max batch/);
  await assert.rejects(DynnServer.create({ model: path.join(tmp, 'nope.onnx'), policy: 'fixed:1' }), /nope\.onnx: no such file/);
  const fixed = await DynnServer.create({ model: bare, policy: 'fixed:0.5', threads: 1, maxWaitMs: 20 });
  assert.equal(fixed.table, null);
  const at = await fixed.listen({ port: 0 });
  // A budget cannot be honoured without a table: that request is refused, the one batched with it is served.
  const [plain, budget] = await Promise.all([post({ inputs: Array.from(images(1)) }, { at }), post({ inputs: Array.from(images(1)), budgetMs: 5 }, { at })]);
  assert.equal(plain.status, 200);
  assert.equal(budget.status, 400);
  assert.match(String(budget.json.message), /budgetMs needs the latency table beside the model; run `dynn profile/);
  await fixed.close();
  const lines: string[] = [];
  const profiled = await DynnServer.create({ model: bare, profile: true, profileReps: 2, maxBatch: 4, threads: 1, log: (l) => lines.push(l) });
  assert.ok(existsSync(latencyTablePath(bare)));
  assert.deepEqual(profiled.table?.batches, [1, 4]);
  assert.match(lines.join('\n'), /no latency table beside .*bare\.onnx; measuring one/);
  await profiled.close();
});

test('late answers under the SLO lower the share of it the adaptive policy plans for; answers with their own u or budget do not', async () => {
  // An SLO no answer can meet: each answer under it is late.
  const s = await DynnServer.create({ model: file, policy: 'adaptive', sloMs: 0.001, maxBatch: 16, maxWaitMs: 1, threads: 1 });
  const at = await s.listen({ port: 0 });
  const share = async () => ((await (await fetch(`${at}/healthz`)).json()) as { latency: { planShare: number } }).latency.planShare;
  /** The share once the answers' hooks have run (they run as each answer finishes sending). */
  const settled = async (want: number) => {
    for (let i = 0; i < 100 && Math.abs((await share()) - want) > 1e-9; i++) await new Promise((r) => setTimeout(r, 10));
    return share();
  };
  assert.equal(await share(), 1);
  for (let i = 0; i < 3; i++) assert.equal((await post({ inputs: Array.from(images(1)) }, { at })).status, 200);
  const lowered = 1 - 3 * PLAN_STEP * (1 - LATE_SHARE);
  assert.ok(Math.abs((await settled(lowered)) - lowered) < 1e-9);
  assert.equal((await post({ inputs: Array.from(images(1)), u: 1 }, { at })).status, 200);
  assert.equal((await post({ inputs: Array.from(images(1)), budgetMs: 0.001 }, { at })).status, 200);
  // One more answer under the SLO: the share falls by exactly one step, so the two before it did not count.
  assert.equal((await post({ inputs: Array.from(images(1)) }, { at })).status, 200);
  const once = lowered - PLAN_STEP * (1 - LATE_SHARE);
  assert.ok(Math.abs((await settled(once)) - once) < 1e-9, 'a request’s own u or budget is not the server’s SLO');
  await s.close();
  // A fixed level does not plan for the SLO: no share to learn or report.
  const fixed = await DynnServer.create({ model: file, policy: 'fixed:1', sloMs: 0.001, maxBatch: 16, threads: 1 });
  const fat = await fixed.listen({ port: 0 });
  assert.equal((await post({ inputs: Array.from(images(1)) }, { at: fat })).status, 200);
  const latency = ((await (await fetch(`${fat}/healthz`)).json()) as { latency: Record<string, number> }).latency;
  assert.equal('planShare' in latency, false);
  assert.equal(fixed.policy.estimator!.planShare, 1);
  await fixed.close();
});

test('graceful shutdown: queued requests are answered, then the server stops', async () => {
  const s = await DynnServer.create({ model: file, policy: 'fixed:1', maxBatch: 8, maxWaitMs: 60_000, threads: 1 });
  const at = await s.listen({ port: 0 });
  const pending = Array.from({ length: 6 }, () => post({ inputs: Array.from(images(1)) }, { at }));
  const depth = async () => ((await (await fetch(`${at}/healthz`)).json()) as { queueDepth: number }).queueDepth;
  while ((await depth()) < 6) await new Promise((r) => setTimeout(r, 10));
  const t = performance.now();
  const closed = s.close();
  // A request that starts now gets the server's own 503 body; /healthz says it is shutting down.
  const late = await s.app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: Array.from(images(1)) } });
  assert.equal(late.statusCode, 503);
  assert.deepEqual(late.json(), { error: 'shutting_down', message: 'the server is shutting down' });
  await closed;
  assert.ok(performance.now() - t < 10_000, 'keep-alive connections do not hold the close open');
  const res = await Promise.all(pending);
  assert.deepEqual(res.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
  await assert.rejects(fetch(`${at}/healthz`));
});

test('dynn serve: starts from the CLI, serves, and shuts down on SIGTERM', async () => {
  // In-process, with the shutdown signal injected.
  let out = '';
  const io = { out: (t: string) => void (out += t), err: () => {}, errIsTTY: false };
  let stop!: (s: string) => void;
  const running = serveCommand(file, { port: '0', policy: 'fixed:0.5', json: true, threads: '1' }, io, new Promise((r) => (stop = r)));
  while (!out.includes('\n')) await new Promise((r) => setTimeout(r, 20));
  const info = JSON.parse(out) as { url: string; policy: string };
  assert.equal(info.policy, 'fixed:0.5');
  assert.equal((await post({ inputs: Array.from(images(1)) }, { at: info.url })).status, 200);
  stop('SIGTERM');
  await running;
  await assert.rejects(serveCommand(file, { port: '70000' }, io), /--port must be an integer/);
  await assert.rejects(serveCommand(file, { policy: 'fast' }, io), /unknown policy "fast"/);
  await assert.rejects(serveCommand(file, { policy: 'controller', port: '0' }, io), /policy controller needs a model exported with its controller/);

  // A real process and a real signal: `dynn serve` restarts node with its flags and hands the signal on.
  const served = await serveProcess();
  assert.equal((await post({ inputs: Array.from(images(1)) }, { at: served.url })).status, 200);
  if (served.server !== undefined) assert.ok(commandLine(served.server).includes(SERVE_NODE_FLAGS), commandLine(served.server));
  served.child.kill('SIGTERM');
  assert.equal(await served.exited, 0, served.stderr());
  assert.match(served.stderr(), /SIGTERM: finishing queued requests and shutting down/);
  // Node started with values of its own keeps them: no restart.
  const own = await serveProcess(['--max-semi-space-size=8', '--initial_old_space_size=300']);
  assert.equal(own.server, undefined);
  own.child.kill('SIGTERM');
  assert.equal(await own.exited, 0, own.stderr());
});

/** `dynn serve` in a process of its own (node's `flags` before the script) and, where it restarted node, the server's pid (Linux). */
async function serveProcess(flags: string[] = []) {
  const main = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  const child = spawn(process.execPath, [...flags, main, 'serve', file, '--port', '0', '--json', '--threads', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.includes('\n')) resolve();
    });
    child.on('exit', () => reject(new Error(`serve exited early: ${stderr}`)));
  });
  const children = `/proc/${child.pid}/task/${child.pid}/children`;
  const server = existsSync(children) ? Number(readFileSync(children, 'utf8').trim()) || undefined : undefined;
  return { child, exited, url: (JSON.parse(stdout) as { url: string }).url, server, stderr: () => stderr };
}

const commandLine = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');

/** Waits up to 20 s for process `pid` to end (Linux). */
async function gone(pid: number): Promise<boolean> {
  const deadline = Date.now() + 20_000;
  while (existsSync(`/proc/${pid}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return !existsSync(`/proc/${pid}`);
}

test('a restarted server: a signal to both processes (systemd, pkill) still ends it cleanly; it shuts down when its first process dies, even while starting', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
  const both = await serveProcess();
  assert.ok(both.server !== undefined, 'dynn serve restarted node');
  process.kill(both.server, 'SIGTERM');
  both.child.kill('SIGTERM');
  assert.equal(await both.exited, 0, both.stderr());
  assert.equal(both.stderr().match(/finishing queued requests/g)?.length, 1, both.stderr());

  const served = await serveProcess();
  served.child.kill('SIGKILL');
  await served.exited;
  assert.ok(await gone(served.server!), 'the server outlived its first process');

  // Killed before the server has even loaded its model.
  const main = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  const early = spawn(process.execPath, [main, 'serve', file, '--port', '0', '--threads', '1'], { stdio: 'ignore' });
  const children = `/proc/${early.pid}/task/${early.pid}/children`;
  let server: number | undefined;
  for (let i = 0; i < 400 && !server; i++) {
    server = existsSync(children) ? Number(readFileSync(children, 'utf8').trim()) || undefined : undefined;
    if (!server) await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(server !== undefined, 'dynn serve restarted node');
  early.kill('SIGKILL');
  assert.ok(await gone(server), 'a server whose first process died while it started kept running');
});

test('DNS rebinding: a request naming another host gets 403 forbidden_host; --allowed-hosts admits a name', async () => {
  const port = new URL(url).port;
  for (const path of ['/healthz', '/metrics', '/nope']) {
    const r = await request(url, { path, host: `rebound.attacker.example:${port}` });
    assert.equal(r.status, 403, path);
    assert.equal(JSON.parse(r.body).error, 'forbidden_host');
    assert.match(JSON.parse(r.body).message, /^Host "rebound\.attacker\.example:\d+" is not allowed: this server answers only to localhost, 127\.0\.0\.1, \[::1\]/);
  }
  const predict = await request(url, { path: '/v1/predict', method: 'POST', host: 'attacker.example' });
  assert.equal(predict.status, 403);
  assert.equal((await request(url, { path: '/healthz', host: `localhost:${port}` })).status, 200);

  let out = '';
  const io = { out: (t: string) => void (out += t), err: () => {}, errIsTTY: false };
  let stop!: (s: string) => void;
  const running = serveCommand(file, { port: '0', policy: 'fixed:1', json: true, threads: '1', allowedHosts: 'dynn.example.com' }, io, new Promise((r) => (stop = r)));
  while (!out.includes('\n')) await new Promise((r) => setTimeout(r, 20));
  const at = (JSON.parse(out) as { url: string }).url;
  assert.equal((await request(at, { path: '/healthz', host: 'dynn.example.com' })).status, 200);
  assert.equal((await request(at, { path: '/healthz', host: 'other.example.com' })).status, 403);
  stop('SIGTERM');
  await running;
});

test('a slowloris client is cut off at the headers timeout while others are served; connections over the bound are closed', async () => {
  const s = await DynnServer.create({ model: file, policy: 'fixed:1', threads: 1, headersTimeoutMs: 300, requestTimeoutMs: 1000, maxConnections: 4 });
  const at = await s.listen({ port: 0 });
  try {
    const slow = slowClient(at, { intervalMs: 40, maxMs: 8000 });
    for (let i = 0; i < 3; i++) assert.equal((await request(at, { path: '/healthz' })).status, 200);
    const r = await slow;
    assert.ok(r.closedAfterMs !== null && r.closedAfterMs < 4000, `closed after ${r.closedAfterMs} ms, ${r.bytesSent} bytes`);
    const { held, extraClosed } = await overLimit(at, s.app.server, 4);
    assert.equal(held, 4);
    assert.ok(extraClosed, 'the fifth connection was closed');
    assert.equal((await post({ inputs: Array.from(images(1)) }, { at })).status, 200, 'the server stays up');
  } finally {
    await s.close();
  }
});

test('dynn serve on a port in use or an unknown host: a DynnError with what to do, and the model is released', async () => {
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as AddressInfo).port;
  const io = { out: () => {}, err: () => {}, errIsTTY: false };
  try {
    await assert.rejects(serveCommand(file, { port: String(port), policy: 'fixed:1', threads: '1' }, io), new RegExp(`^DynnError: port ${port} on 127\\.0\\.0\\.1 is in use; choose another with --port$`));
  } finally {
    busy.close();
  }
  await assert.rejects(
    serveCommand(file, { port: '0', host: 'no.such.host.invalid', policy: 'fixed:1', threads: '1' }, io),
    /^DynnError: cannot resolve the host "no\.such\.host\.invalid" to listen on; give an address of this machine with --host/,
  );
});
