import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { initEngine } from '../engine/backend.js';
import { toFloat, head as firstOf } from '../data/imageset.js';
import { nhwcToNchw } from '../runtime/core.js';
import { tinySplit } from './fixtures.js';
import { SplitServer } from './server.js';
import { SplitHead, SplitTail } from './runtime.js';
import { runHead } from './head.js';
import { postFrame } from './client.js';
import { encodeFrame } from './wire.js';
import { Shaper } from './shaper.js';
import { choosePoint, LinkMonitor } from './navisplit.js';
import { BROWSER_MODULES, DIST_SRC } from './web.js';
import { HEAD_PAGE_CSP } from './page.js';

await initEngine('wasm');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-split-serve-'));
const data = await tinySplit(dir);
const server = await SplitServer.create({ dir });
const url = await server.listen();
after(() => server.close());

test('head and tail over loopback give the classes of the split model run in one process', async () => {
  const h = await SplitHead.load(dir);
  const t = await SplitTail.load(dir);
  try {
    for (const [channels, bits] of [[1, 2], [4, 4]]) {
      const r = await runHead({ dir, server: url, images: data.test, channels, bits });
      const frame = await h.run(nhwcToNchw(toFloat(data.test, 0, data.test.count), [1, 28, 28]), data.test.count, channels, bits);
      const scores = await t.run(frame);
      const local = Array.from({ length: data.test.count }, (_, i) => {
        const row = Array.from(scores.subarray(i * 10, (i + 1) * 10));
        return row.indexOf(Math.max(...row));
      });
      assert.deepEqual(r.classes, local);
      assert.equal(r.samples, data.test.count);
      assert.deepEqual(r.used, [{ channels, bits, frames: data.test.count }]);
      assert.equal(r.meanBytes, 16 + 8 + Math.ceil((channels * 49 * bits) / 8));
    }
  } finally {
    await h.release();
    await t.release();
  }
});

test('bad frames and requests are 4xx with a JSON error, and the server keeps serving', async () => {
  const h = await SplitHead.load(dir);
  const good = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 2, 4));
  await h.release();
  const post = (body: Uint8Array, type = 'application/octet-stream') =>
    fetch(new URL('/v1/tail', url), { method: 'POST', headers: { 'content-type': type }, body: new Blob([body as Uint8Array<ArrayBuffer>]) });
  const edit = (set: (v: DataView) => void) => {
    const b = good.slice();
    set(new DataView(b.buffer));
    return b;
  };
  const cases: [Uint8Array, number, RegExp, string?][] = [
    [edit((v) => v.setUint8(4, 9)), 400, /version 9 is not supported/],
    [edit((v) => v.setUint16(6, 5, true)), 400, /channels must be from 1 to 4, got 5/],
    [edit((v) => v.setUint8(5, 0)), 400, /bits must be from 1 to 16/],
    [edit((v) => v.setUint16(8, 6, true)), 400, /features are 6x7; this tail takes 7x7/],
    [edit((v) => v.setFloat32(20, NaN, true)), 400, /step NaN must be finite/],
    [edit((v) => (v.setFloat32(16, 1e38, true), v.setFloat32(20, 1e38, true))), 400, /overflows float32/],
    // Every value finite in float32 but the codes spanning -3.3e38 to 3.3e38: the tail's sums overflow whatever the
    // decoder's signs (one sign alone can be cut by its ReLU), a 422 rather than a 500.
    [edit((v) => (v.setFloat32(16, -3.3e38, true), v.setFloat32(20, 4.4e37, true))), 422, /non-finite scores for sample 0/],
    [good.subarray(0, good.length - 2), 400, /bytes; got/],
    [new Uint8Array(3), 400, /16-byte header/],
    [good, 415, /application\/octet-stream/, 'application/json'],
    [good, 415, /application\/octet-stream/, 'text/plain'],
  ];
  for (const [body, status, pattern, type] of cases) {
    const res = await post(body, type);
    assert.equal(res.status, status, String(pattern));
    const j = (await res.json()) as { error: string; message: string };
    assert.match(j.message, pattern);
    assert.ok(typeof j.error === 'string');
  }
  const big = await post(new Uint8Array(1 << 20));
  assert.equal(big.status, 413);
  const missing = await fetch(new URL('/v1/nothing', url));
  assert.equal(missing.status, 404);
  const ok = await postFrame(url, good);
  assert.equal(ok.classes.length, 1);
  const info = (await (await fetch(new URL('/v1/split', url))).json()) as { points: unknown[]; wire: { version: number } };
  assert.equal(info.points.length, 6);
  assert.equal(info.wire.version, 1);
  await assert.rejects(postFrame('http://127.0.0.1:9', good), /cannot reach the tail server/);
});

test('the token bucket: a burst passes, then messages wait at the link rate, plus the delay', () => {
  const s = new Shaper({ bandwidthMbps: 8, delayMs: 5, burstBytes: 1000 });
  // 8 Mbit/s = 1000 bytes a ms.
  assert.equal(s.bytesPerMs, 1000);
  const t = 1e9;
  s.take(0, t);
  assert.equal(s.take(1000, t), 5);
  assert.equal(s.take(3000, t), 3 + 5);
  // Its debt paid after 3 ms, the bucket refills to the burst at most.
  assert.equal(s.take(500, t + 100), 5);
  assert.throws(() => new Shaper({ bandwidthMbps: 0 }), /bandwidth must be a positive/);
  assert.throws(() => new Shaper({ bandwidthMbps: 1, delayMs: -1 }), /delay must be/);
  // Without a bucket every message pays its serialization time, however long the link was idle.
  const link = new Shaper({ bandwidthMbps: 1 });
  assert.equal(link.take(125, t), 1);
  assert.equal(link.take(125, t + 1000), 1);
});

test('NaviSplit: the link learned from message times; the most accurate bottleneck within the budget', () => {
  const m = new LinkMonitor();
  assert.equal(m.estimate(), null);
  for (const bytes of [100, 1000, 100, 1000]) m.observe(bytes, 2 + bytes / 125);
  const link = m.estimate()!;
  assert.ok(Math.abs(link.bytesPerMs - 125) < 1e-6 && Math.abs(link.overheadMs - 2) < 1e-6);
  const points = [
    { channels: 1, bits: 2, bytesPerSample: 21, accuracy: 0.6 },
    { channels: 4, bits: 4, bytesPerSample: 106, accuracy: 0.8 },
    { channels: 8, bits: 8, bytesPerSample: 400, accuracy: 0.85 },
  ];
  assert.equal(choosePoint(points, link, 100).channels, 8);
  assert.equal(choosePoint(points, link, 3.2).channels, 4);
  assert.equal(choosePoint(points, link, 1).channels, 1);
});

test('NaviSplit: after 40 frames at one size the choice stays within the budget', () => {
  const points = [
    { channels: 1, bits: 2, bytesPerSample: 21, accuracy: 0.6 },
    { channels: 4, bits: 4, bytesPerSample: 106, accuracy: 0.8 },
    { channels: 8, bits: 8, bytesPerSample: 400, accuracy: 0.85 },
  ];
  const linkMs = (bytes: number) => 2 + bytes / 125;
  const budget = 3.2;
  const m = new LinkMonitor();
  // The head's two probes, then whatever it chooses.
  m.observe(21 + 16, linkMs(21 + 16));
  m.observe(400 + 16, linkMs(400 + 16));
  for (let i = 0; i < 40; i++) {
    const link = m.estimate();
    assert.ok(link, `an estimate at frame ${i}`);
    const p = choosePoint(points, link, budget);
    assert.equal(p.channels, 4, `frame ${i}`);
    assert.ok(linkMs(p.bytesPerSample + 16) <= budget);
    m.observe(p.bytesPerSample + 16, linkMs(p.bytesPerSample + 16));
  }
  const steady = m.estimate()!;
  assert.ok(Math.abs(steady.bytesPerMs - 125) < 1e-6 && Math.abs(steady.overheadMs - 2) < 1e-6);
});

test('a frame set smaller than asked for still runs, and a mismatched data set is refused', async () => {
  await assert.rejects(runHead({ dir, server: url, images: { ...firstOf(data.test, 1), height: 14, width: 56 } }), /the head takes 28x28x1/);
  await assert.rejects(runHead({ dir, server: url, images: data.test, channels: 2 }), /both --channels and --bits/);
});

test('the head checks the tail\'s answer: not JSON, JSON without classes, no answer; a path prefix survives', async () => {
  const h = await SplitHead.load(dir);
  const frame = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 2, 4));
  await h.release();
  const answers: Record<string, ((res: http.ServerResponse) => void) | undefined> = {
    '/text/v1/tail': (res) => res.end('<html>proxy error</html>'),
    '/empty/v1/tail': (res) => res.setHeader('content-type', 'application/json').end('{"labels":["a"]}'),
    '/two/v1/tail': (res) => res.end(JSON.stringify({ classes: [1, 2], labels: ['a', 'b'], scores: [[0], [1]] })),
    '/ok/v1/tail': (res) => res.end(JSON.stringify({ classes: [3], labels: ['c'], scores: [[0, 1]] })),
    '/slow/v1/tail': () => {},
  };
  const fake = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const answer = answers[req.url ?? ''];
      if (answer) answer(res);
      else res.writeHead(404).end('no');
    });
  });
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(fake.address() as { port: number }).port}`;
  try {
    await assert.rejects(postFrame(`${base}/text`, frame), /tail server at http:\/\/127\.0\.0\.1:\d+\/text\/v1\/tail answered 200 with something that is not JSON/);
    await assert.rejects(postFrame(`${base}/empty/`, frame), /not with the tail's answer for 1 sample\(s\): classes/);
    await assert.rejects(postFrame(`${base}/two`, frame), /classes/);
    assert.deepEqual((await postFrame(`${base}/ok`, frame)).classes, [3]);
    await assert.rejects(postFrame(`${base}/slow`, frame, { timeoutMs: 50 }), /did not answer within 50 ms/);
  } finally {
    fake.closeAllConnections();
    await new Promise((r) => fake.close(r));
  }
});

test('a head.onnx and tail.onnx swapped by hand are refused at load, naming the file and its inputs', async () => {
  const swapped = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-split-swapped-'));
  try {
    for (const f of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, f), path.join(swapped, f));
    fs.copyFileSync(path.join(dir, 'head.onnx'), path.join(swapped, 'tail.onnx'));
    fs.copyFileSync(path.join(dir, 'tail.onnx'), path.join(swapped, 'head.onnx'));
    await assert.rejects(SplitTail.load(swapped), /tail\.onnx has inputs images, channels, bits; a split's tail\.onnx has codes, min, step/);
    await assert.rejects(SplitHead.load(swapped), /head\.onnx has inputs codes, min, step; a split's head\.onnx has images, channels, bits/);
  } finally {
    fs.rmSync(swapped, { recursive: true, force: true });
  }
});

test('the head page: served with its policy, with dynn\'s browser modules, head.onnx and test images, nothing else of dist', async () => {
  const get = (u: string) => server.app.inject({ method: 'GET', url: u });
  const page = await get('/');
  assert.equal(page.statusCode, 200);
  assert.equal(page.headers['content-security-policy'], HEAD_PAGE_CSP);
  assert.match(page.body, /<script type="module" src="\/static\/dynn\/split\/head-page\.js"><\/script>/);
  assert.deepEqual((await get('/head.onnx')).rawPayload, fs.readFileSync(path.join(dir, 'head.onnx')));
  for (const m of BROWSER_MODULES) assert.equal((await get(`/static/dynn/${m}`)).statusCode, 200, m);
  for (const u of ['/static/dynn/split/server.js', '/static/dynn/split/wire.js.map', '/static/dynn/split/../../package.json', '/static/dynn/%2e%2e/package.json', '/vendor/ort/ort.node.min.mjs']) {
    assert.equal((await get(u)).statusCode, 404, u);
  }
  assert.equal((await get('/vendor/ort/ort.wasm.min.mjs')).statusCode, 200);
  const samples = (await get('/v1/split/samples')).json() as { labels: number[]; images: string[]; classNames: string[] };
  assert.equal(samples.images.length, 16);
  assert.equal(Buffer.from(samples.images[3], 'base64').length, 28 * 28);
  assert.ok(samples.labels.length === 16 && samples.labels.every((l) => Number.isInteger(l) && l >= 0 && l < samples.classNames.length));
  assert.deepEqual(((await get('/v1/split')).json() as { input: unknown }).input, { layout: 'NCHW', shape: [1, 28, 28] });
  // The tail reports its own time, which the page subtracts from the request's.
  const h = await SplitHead.load(dir);
  const frame = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 1, 2));
  await h.release();
  const tailMs = (await postFrame(url, frame)).timings?.tailMs;
  assert.ok(typeof tailMs === 'number' && tailMs >= 0);
});

test('the head page\'s modules import only each other: no node module, no bare package name', () => {
  const listed = new Set<string>(BROWSER_MODULES);
  for (const m of BROWSER_MODULES) {
    const code = fs.readFileSync(path.join(DIST_SRC, m), 'utf8');
    const specifiers = [...code.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*'([^']+)'|import\(\s*'([^']+)'\s*\)|(?:^|\n)import\s*'([^']+)'/g)].map((x) => x[1] ?? x[2] ?? x[3]);
    for (const s of specifiers) {
      assert.ok(s.startsWith('.'), `${m} imports ${s}`);
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(m), s));
      assert.ok(listed.has(target), `${m} imports ${target}, which the page is not served`);
    }
  }
});
