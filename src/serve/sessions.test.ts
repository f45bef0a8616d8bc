import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { saveOnnx } from '../export/export.js';
import { TemporalController, temporalPolicy } from '../control/temporal.js';
import { OnnxModel } from '../runtime/node.js';
import { Rng } from '../util/rng.js';
import { DynnServer } from './server.js';
import type { HttpError } from './errors.js';
import { SessionStore } from './sessions.js';
import { FrameBatcher } from './frames.js';
import type { OnnxMetadata } from '../export/metadata.js';
import type { StepFn } from '../runtime/session.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-sessions-'));
const ACTIONS = [0.25, 0.5, 1];
const net = createModel('mlp-w', { inputShape: [8, 8, 1], numClasses: 10 });
const policy = temporalPolicy(10, ACTIONS, { seed: 2 });
// Larger weights spread the untrained policy's plans over the actions.
policy.net.setWeights(policy.net.getWeights().map((w) => ({ ...w, data: w.data.map((v) => v * 8) })));
const file = path.join(tmp, 'temporal.onnx');
await saveOnnx(net, file, { controller: { network: policy.net, actions: ACTIONS, temporal: { start: new TemporalController(policy).start } } });
const plain = path.join(tmp, 'plain.onnx');
await saveOnnx(net, plain);
net.dispose();
policy.dispose();
const PER = 64;
const rng = new Rng(4);
const frames = Array.from({ length: 40 }, () => Float32Array.from({ length: PER }, () => rng.next()));

const servers: DynnServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});
async function serve(model: string, o: { maxSessions?: number; sessionIdleMs?: number } = {}): Promise<DynnServer> {
  const s = await DynnServer.create({ model, policy: 'fixed:1', threads: 1, ...o });
  servers.push(s);
  return s;
}
const post = (s: DynnServer, url: string, payload?: object) => s.app.inject({ method: 'POST', url, ...(payload ? { payload } : {}) });
const open = async (s: DynnServer): Promise<string> => {
  const r = await post(s, '/v1/sessions');
  assert.equal(r.statusCode, 201, r.body);
  return r.json().id;
};

test('a served session runs each frame at the u the controller planned from the previous one, as the runtime session does', async () => {
  const server = await serve(file);
  const r = await post(server, '/v1/sessions');
  assert.equal(r.statusCode, 201);
  const { id, expiresInMs, actions } = r.json();
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random UUID');
  assert.deepEqual([expiresInMs, actions], [60000, ACTIONS]);
  const model = await OnnxModel.load(file, { threads: 1 });
  const local = model.session();
  const us: number[] = [];
  try {
    let planned = 1;
    for (const frame of frames) {
      const a = await post(server, `/v1/sessions/${id}/predict`, { inputs: Array.from(frame) });
      assert.equal(a.statusCode, 200, a.body);
      const got = a.json();
      const want = await local.next(frame);
      assert.deepEqual([got.u, got.nextU, got.class, got.level], [want.u, want.nextU, want.class, want.level]);
      assert.equal(got.u, planned);
      assert.ok(Math.abs(got.flopsRatio - want.flopsRatio) < 1e-12);
      assert.equal(got.className, String(got.class));
      planned = got.nextU;
      us.push(got.u);
    }
  } finally {
    await model.dispose();
  }
  assert.ok(new Set(us).size >= 2, `the plans mix operating points (${[...new Set(us)]})`);
  // A float32 body is one frame too.
  const bin = await server.app.inject({ method: 'POST', url: `/v1/sessions/${id}/predict`, headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from(frames[0].buffer) });
  assert.equal(bin.statusCode, 200, bin.body);
  assert.match((await server.app.inject({ method: 'GET', url: '/metrics' })).body, /dynn_sessions_open 1/);
  assert.equal((await server.app.inject({ method: 'GET', url: '/healthz' })).json().sessions.open, 1);
  const d = await server.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` });
  assert.deepEqual([d.statusCode, d.json()], [200, { id, closed: true }]);
  assert.equal(server.sessions?.size, 0);
});

test('sessions refuse bad frames, unknown ids and u or budgets with clear 4xx JSON', async () => {
  const server = await serve(file);
  const id = await open(server);
  const url = `/v1/sessions/${id}/predict`;
  const cases: [object | Buffer, number, string, RegExp, string?][] = [
    [{ inputs: [1, 2, 3] }, 400, 'invalid_input', /3 values/],
    [{ inputs: Array.from({ length: 2 * PER }, () => 0.5) }, 413, 'payload_too_large', /at most 1 samples \(one frame per session call\)/],
    [{ inputs: [...Array.from({ length: PER - 1 }, () => 0.5), null] }, 400, 'invalid_input', /inputs\[63\]/],
    [{ inputs: Array.from(frames[0]), u: 0.5 }, 400, 'invalid_input', /planned by its temporal controller/],
    [Buffer.from(Float32Array.from({ length: PER }, (_, i) => (i === 7 ? NaN : 0)).buffer), 400, 'invalid_input', /value 7 of the body is NaN/, 'application/octet-stream'],
  ];
  for (const [payload, status, kind, message, type] of cases) {
    const r = await server.app.inject({ method: 'POST', url, payload, ...(type ? { headers: { 'content-type': type } } : {}) });
    assert.equal(r.statusCode, status, r.body);
    assert.equal(r.json().error, kind);
    assert.match(r.json().message, message);
  }
  // The session survives refused frames.
  assert.equal((await post(server, url, { inputs: Array.from(frames[0]) })).statusCode, 200);
  for (const [method, u] of [['POST', '/v1/sessions/nope/predict'], ['DELETE', '/v1/sessions/nope']] as const) {
    const r = await server.app.inject({ method, url: u, ...(method === 'POST' ? { payload: { inputs: Array.from(frames[0]) } } : {}) });
    assert.equal(r.statusCode, 404);
    assert.equal(r.json().error, 'unknown_session');
    assert.match(r.json().message, /no session "nope": unknown, closed, or expired/);
  }
  await server.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` });
  assert.equal((await post(server, url, { inputs: Array.from(frames[0]) })).statusCode, 404, 'a closed session is gone');
});

test('the session bound answers 429, and a closed session frees its place', async () => {
  const server = await serve(file, { maxSessions: 3 });
  const ids = [await open(server), await open(server), await open(server)];
  const r = await post(server, '/v1/sessions');
  assert.equal(r.statusCode, 429);
  assert.equal(r.json().error, 'too_many_sessions');
  assert.match(r.json().message, /3 sessions are open, the server's bound \(--max-sessions 3\)/);
  await server.app.inject({ method: 'DELETE', url: `/v1/sessions/${ids[0]}` });
  await open(server);
  assert.equal(server.sessions?.size, 3);
});

test('sessions opened and abandoned expire after the idle time: the map empties, an expired id is 404', async () => {
  const server = await serve(file, { sessionIdleMs: 200 });
  const ids: string[] = [];
  for (let i = 0; i < 200; i++) ids.push(await open(server));
  await post(server, `/v1/sessions/${ids[ids.length - 1]}/predict`, { inputs: Array.from(frames[0]) });
  assert.ok(server.sessions!.size > 0);
  // Timers are never early but may be late on a loaded machine: wait for the sweep, within a bound.
  for (const deadline = Date.now() + 10_000; server.sessions!.size > 0 && Date.now() < deadline; ) await sleep(50);
  assert.equal(server.sessions?.size, 0);
  assert.match((await server.app.inject({ method: 'GET', url: '/metrics' })).body, /dynn_sessions_open 0/);
  const r = await post(server, `/v1/sessions/${ids[0]}/predict`, { inputs: Array.from(frames[0]) });
  assert.equal(r.statusCode, 404);
  assert.match(r.json().message, /expired after 200 ms without use/);
});

test('a model without a temporal controller has no sessions: a clear 400', async () => {
  const server = await serve(plain);
  assert.equal(server.sessions, null);
  const r = await post(server, '/v1/sessions');
  assert.equal(r.statusCode, 400);
  assert.equal(r.json().error, 'no_temporal_controller');
  assert.match(r.json().message, /exported without a temporal controller/);
});

test('the controller policy refuses a temporal controller, naming the sessions instead', async () => {
  await assert.rejects(DynnServer.create({ model: file, policy: 'controller', threads: 1 }), /policy controller needs a per-input controller; .* is temporal: .* POST \/v1\/sessions/);
});

test('a frame with non-finite scores is a 422 that leaves the session’s plan unchanged', async () => {
  const server = await serve(file);
  const id = await open(server);
  const model = await OnnxModel.load(file, { threads: 1 });
  const local = model.session();
  try {
    for (const frame of frames.slice(0, 6)) {
      const bad = await post(server, `/v1/sessions/${id}/predict`, { inputs: Array(PER).fill(3e38) });
      assert.equal(bad.statusCode, 422, bad.body);
      assert.equal(bad.json().error, 'non_finite_output');
      // The refused frame planned nothing: the next good frame runs as if it had not been sent.
      const got = (await post(server, `/v1/sessions/${id}/predict`, { inputs: Array.from(frame) })).json();
      const want = await local.next(frame);
      assert.deepEqual([got.u, got.nextU, got.class], [want.u, want.nextU, want.class]);
    }
  } finally {
    await model.dispose();
  }
});

test('session frames are bounded: one pending frame per session (409), the server’s --max-queue across sessions (503)', async () => {
  let release = (): void => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const store = new SessionStore(() => ({}) as never, { maxInflight: 2 });
  const [a, b, c] = [store.add(), store.add(), store.add()];
  const pending = [store.run(a, () => gate), store.run(b, () => gate)];
  assert.equal(store.framesInFlight, 2);
  await assert.rejects(store.run(a, async () => 0), (e: HttpError) => e.statusCode === 409 && e.kind === 'session_busy' && /previous frame is still running/.test(e.message));
  await assert.rejects(store.run(c, async () => 0), (e: HttpError) => e.statusCode === 503 && e.kind === 'overloaded' && /2 session frames are running, the server's bound \(--max-queue 2\)/.test(e.message));
  release();
  await Promise.all(pending);
  assert.equal(store.framesInFlight, 0);
  // A failed frame frees its place too.
  await assert.rejects(store.run(a, async () => Promise.reject(new Error('boom'))), /boom/);
  assert.deepEqual(await Promise.all([store.run(a, async () => 1), store.run(c, async () => 2)]), [1, 2]);
  assert.equal(store.framesInFlight, 0);
  store.clear();
  // The server bounds session frames by its queue bound.
  const server = await serve(file);
  const small = await DynnServer.create({ model: file, policy: 'fixed:1', threads: 1, maxBatch: 4, maxQueue: 8 });
  servers.push(small);
  assert.equal(small.sessions?.maxInflight, 8);
  assert.equal(server.sessions?.maxInflight, 32 * 64);
});

test('session frames are answered requests but add no queue wait to /metrics', async () => {
  const server = await serve(file);
  const id = await open(server);
  const metric = async (re: RegExp) => Number(re.exec((await server.app.inject({ method: 'GET', url: '/metrics' })).body)?.[1]);
  for (const frame of frames.slice(0, 5)) assert.equal((await post(server, `/v1/sessions/${id}/predict`, { inputs: Array.from(frame) })).statusCode, 200);
  assert.equal(await metric(/^dynn_queue_wait_seconds_count (\S+)$/m), 0);
  assert.equal(await metric(/^dynn_requests_total\{outcome="ok"\} (\S+)$/m), 5);
  assert.equal(await metric(/^dynn_request_duration_seconds_count (\S+)$/m), 5);
  // /v1/predict's requests still observe theirs.
  assert.equal((await post(server, '/v1/predict', { inputs: Array.from(frames[0]) })).statusCode, 200);
  assert.equal(await metric(/^dynn_queue_wait_seconds_count (\S+)$/m), 1);
});

test('frames of many sessions share runs: the waiting ones run together, one run per planned action, each answered with its own row', async () => {
  const calls: [number, number][] = [];
  let release = (): void => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const meta = { input: { shape: [1, 1, 2] }, numClasses: 3 } as OnnxMetadata;
  let release2 = (): void => undefined;
  const gate2 = new Promise<void>((resolve) => (release2 = resolve));
  // A stand-in model: each frame's scores are [its two values, the action], its next action its first value mod 3.
  const step: StepFn<undefined> = async (x, action) => {
    const n = x.length / 2;
    calls.push([action, n]);
    if (calls.length === 1) await gate;
    if (action === 5) await gate2;
    if (action === 9) throw new Error('this run failed');
    const scores = Float32Array.from({ length: 3 * n }, (_, i) => (i % 3 === 2 ? action : x[2 * Math.floor(i / 3) + (i % 3)]));
    return { scores, classes: new Int32Array(n), u: (action + 1) / 3, level: action, ms: 1, next: Int32Array.from({ length: n }, (_, i) => x[2 * i] % 3) };
  };
  const records: number[] = [];
  const frames = new FrameBatcher(step, { ...meta, levels: [0, 1, 2].map((level) => ({ level })) } as unknown as OnnxMetadata, 4, (r) => records.push(r.batch));
  const first = frames.step(Float32Array.of(7, 7), 0, undefined);
  // Nine frames arrive while the first runs: then batches of at most 4, one run per action in each.
  const later = Array.from({ length: 9 }, (_, i) => frames.step(Float32Array.of(i, 10 + i), i % 3, undefined));
  release();
  const answers = await Promise.all(later);
  assert.deepEqual(Array.from((await first).scores), [7, 7, 0]);
  assert.deepEqual(calls, [[0, 1], [0, 2], [1, 1], [2, 1], [0, 1], [1, 2], [2, 1], [2, 1]]);
  assert.equal(frames.runs, calls.length);
  assert.deepEqual(records, calls.map((c) => c[1]), 'every run recorded with its frames');
  answers.forEach((a, i) => {
    assert.deepEqual(Array.from(a.scores), [i, 10 + i, i % 3], `frame ${i}'s own row`);
    assert.deepEqual([a.level, a.u, Array.from(a.next), Array.from(a.classes)], [i % 3, ((i % 3) + 1) / 3, [i % 3], [1]]);
  });
  // A failed run fails its own frames only: the other action's frames of the batch are answered.
  const blocker = frames.step(Float32Array.of(0, 0), 5, undefined);
  const failed = frames.step(Float32Array.of(1, 1), 9, undefined);
  const fine = frames.step(Float32Array.of(4, 5), 1, undefined);
  release2();
  await blocker;
  await assert.rejects(failed, /this run failed/);
  assert.deepEqual(Array.from((await fine).scores), [4, 5, 1]);
  assert.deepEqual(calls.slice(-3), [[5, 1], [1, 1], [9, 1]], 'the failing frame shared a batch with the fine one');
  assert.throws(() => new FrameBatcher(step, meta, 0), /max batch must be a positive integer, got 0/);
});

test('concurrent sessions on a server: each stream gets the answers its own runtime session gives', async () => {
  const server = await serve(file);
  const model = await OnnxModel.load(file, { threads: 1 });
  try {
    const ids = await Promise.all(Array.from({ length: 6 }, () => open(server)));
    const local = ids.map(() => model.session());
    const runs = async () => Number(/^dynn_inference_seconds_count (\S+)$/m.exec((await server.app.inject({ method: 'GET', url: '/metrics' })).body)?.[1]);
    const before = await runs();
    for (let t = 0; t < 5; t++) {
      const got = await Promise.all(ids.map((id, k) => post(server, `/v1/sessions/${id}/predict`, { inputs: Array.from(frames[(7 * k + t) % frames.length]) })));
      for (let k = 0; k < ids.length; k++) {
        assert.equal(got[k].statusCode, 200, got[k].body);
        const want = await local[k].next(frames[(7 * k + t) % frames.length]);
        const g = got[k].json();
        assert.deepEqual([g.u, g.nextU, g.class, g.level], [want.u, want.nextU, want.class, want.level], `stream ${k}, frame ${t}`);
        g.scores.forEach((v: number, j: number) => assert.ok(Math.abs(v - want.scores[j]) < 1e-5, `stream ${k}, frame ${t}, score ${j}`));
      }
    }
    const ran = (await runs()) - before;
    assert.ok(ran > 0 && ran < 30, `30 frames of 6 concurrent streams took ${ran} runs: the streams share them`);
  } finally {
    await model.dispose();
  }
});

test('the store checks its bounds', () => {
  assert.throws(() => new SessionStore(() => null as never, { maxInflight: 0 }), /max session frames in flight must be a positive integer, got 0/);
  assert.throws(() => new SessionStore(() => null as never, { maxSessions: 0 }), /max sessions must be a positive integer, got 0/);
  assert.throws(() => new SessionStore(() => null as never, { idleMs: 2 ** 31 }), /session idle time must be an integer number of ms/);
});
