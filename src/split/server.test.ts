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
import { loadSplitMeta } from './store.js';
import { SplitServer } from './server.js';
import { SplitHead, SplitTail } from './runtime.js';
import { predictSet } from './train.js';
import { runHead } from './head.js';
import { postFrame } from './client.js';
import { encodeFrame } from './wire.js';
import { Shaper } from './shaper.js';
import { choosePoint, LinkMonitor } from './navisplit.js';
import { BROWSER_MODULES, DIST_SRC } from './web.js';
import { HEAD_PAGE_CSP } from './page.js';

await initEngine('wasm');

// One folder of two split points: pool1 (8x14x14 features) is split 0, pool2 (16x7x7) split 1.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-split-serve-'));
const inProcess: { at: string; channels: number; bits: number; classes: number[] }[] = [];
const data = await tinySplit(dir, {
  at: ['pool1', 'pool2'],
  // The split model in TF.js, in this process: what the two processes over loopback must answer.
  inspect: (r, d) => {
    for (const [i, at] of ['pool1', 'pool2'].entries()) {
      for (const [channels, bits] of [[1, 2], [4, 4]]) {
        inProcess.push({ at, channels, bits, classes: Array.from(predictSet(d.test, (x) => r.splits[i].split.predict(x, channels, bits))) });
      }
    }
  },
});
const server = await SplitServer.create({ dir });
const url = await server.listen();
after(() => server.close());

test('a folder of two split points: head and tail over loopback give the in-process split model\'s classes at each', async () => {
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'split.json'), 'utf8'));
  assert.equal(meta.format, 'dynn-split/2');
  assert.deepEqual(fs.readdirSync(dir).sort(), ['head.pool1.onnx', 'head.pool2.onnx', 'split.json', 'tail.pool1.onnx', 'tail.pool2.onnx']);
  assert.deepEqual(meta.points.map((p: { at: string }) => p.at), [...Array(6).fill('pool1'), ...Array(6).fill('pool2')]);
  for (const s of meta.splits) assert.ok(s.measured.headMs > 0 && s.measured.tailMs > 0 && s.tailFlops > 0, JSON.stringify(s));
  // pool2's head runs more of the network than pool1's.
  assert.ok(meta.points[6].headFlops > meta.points[0].headFlops);
  for (const ref of inProcess) {
    const r = await runHead({ dir, server: url, images: data.test, at: ref.at, channels: ref.channels, bits: ref.bits });
    const same = r.classes.filter((c, i) => c === ref.classes[i]).length;
    // A feature on a rounding boundary may round the other way in float32 ONNX arithmetic; classes agree.
    assert.ok(same >= data.test.count - 1, `${ref.at} ${ref.channels}x${ref.bits}: ${same}/${data.test.count} classes agree`);
    assert.equal(r.samples, data.test.count);
    assert.deepEqual(r.used, [{ at: ref.at, channels: ref.channels, bits: ref.bits, frames: data.test.count }]);
    const side = ref.at === 'pool1' ? 196 : 49;
    assert.equal(r.meanBytes, 16 + 8 + Math.ceil((ref.channels * side * ref.bits) / 8));
  }
  await assert.rejects(runHead({ dir, server: url, images: data.test, channels: 1, bits: 2 }), /this split has 2 split points \(pool1, pool2\); give --at with --channels and --bits/);
  await assert.rejects(runHead({ dir, server: url, images: data.test, at: 'c3.conv' }), /unknown split point "c3\.conv"; this split has pool1, pool2/);
});

test('a version 1 folder (one split point, head.onnx and tail.onnx) still loads, serves v1 and v2 frames and runs its head', async () => {
  const old = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-split-v1-'));
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'split.json'), 'utf8'));
    const s = m.splits[1];
    const v1 = {
      ...m,
      format: 'dynn-split/1',
      at: s.at,
      features: s.features,
      bottleneck: s.bottleneck,
      points: m.points.filter((p: { at: string }) => p.at === s.at).map(({ at: _at, headFlops: _f, ...p }: Record<string, unknown>) => p),
      wire: { ...m.wire, version: 1 },
    };
    delete v1.splits;
    fs.writeFileSync(path.join(old, 'split.json'), JSON.stringify(v1));
    fs.copyFileSync(path.join(dir, s.head), path.join(old, 'head.onnx'));
    fs.copyFileSync(path.join(dir, s.tail), path.join(old, 'tail.onnx'));
    const loaded = await loadSplitMeta(old);
    assert.deepEqual(loaded.splits.map((x) => [x.at, x.head, x.tail]), [['pool2', 'head.onnx', 'tail.onnx']]);
    assert.ok(loaded.points.every((p) => p.at === 'pool2'));
    const oldServer = await SplitServer.create({ dir: old });
    const oldUrl = await oldServer.listen();
    try {
      const r = await runHead({ dir: old, server: oldUrl, images: data.test, channels: 4, bits: 4 });
      const ref = inProcess.find((x) => x.at === 'pool2' && x.channels === 4)!.classes;
      assert.ok(r.classes.filter((c, i) => c === ref[i]).length >= data.test.count - 1);
      assert.deepEqual(r.used, [{ at: 'pool2', channels: 4, bits: 4, frames: data.test.count }]);
      const h = await SplitHead.load(old);
      const frame = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 2, 4));
      await h.release();
      const v1Frame = frame.slice();
      const view = new DataView(v1Frame.buffer);
      view.setUint8(4, 1);
      view.setUint32(12, 1, true);
      assert.deepEqual((await postFrame(oldUrl, v1Frame)).classes, (await postFrame(oldUrl, frame)).classes);
    } finally {
      await oldServer.close();
    }
  } finally {
    fs.rmSync(old, { recursive: true, force: true });
  }
});

test('bad frames and requests are 4xx with a JSON error, and the server keeps serving', async () => {
  const h = await SplitHead.load(dir);
  // A pool2 frame (split 1).
  const good = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 2, 4, 1));
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
    [edit((v) => v.setUint16(14, 7, true)), 400, /unknown split point 7; this tail serves 0 \(pool1\), 1 \(pool2\)/],
    [edit((v) => (v.setUint8(4, 1), v.setUint32(12, 1, true))), 400, /a version 1 frame names no split point; this tail serves 2/],
    // A pool2 frame sent as pool1's: its 7x7 features are not pool1's 14x14.
    [edit((v) => v.setUint16(14, 0, true)), 400, /features are 7x7; this tail takes 14x14 at pool1/],
    [edit((v) => v.setUint16(6, 5, true)), 400, /channels must be from 1 to 4, got 5/],
    [edit((v) => v.setUint8(5, 0)), 400, /bits must be from 1 to 16/],
    [edit((v) => v.setUint16(8, 6, true)), 400, /features are 6x7; this tail takes 7x7 at pool2/],
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
  const big = await post(new Uint8Array(4 << 20));
  assert.equal(big.status, 413);
  const missing = await fetch(new URL('/v1/nothing', url));
  assert.equal(missing.status, 404);
  const ok = await postFrame(url, good);
  assert.equal(ok.classes.length, 1);
  const info = (await (await fetch(new URL('/v1/split', url))).json()) as { splits: { id: number; at: string }[]; points: unknown[]; wire: { version: number } };
  assert.deepEqual(info.splits.map((x) => [x.id, x.at]), [[0, 'pool1'], [1, 'pool2']]);
  assert.equal(info.points.length, 12);
  assert.equal(info.wire.version, 2);
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
    fs.copyFileSync(path.join(dir, 'head.pool2.onnx'), path.join(swapped, 'tail.pool2.onnx'));
    fs.copyFileSync(path.join(dir, 'tail.pool2.onnx'), path.join(swapped, 'head.pool2.onnx'));
    await assert.rejects(SplitTail.load(swapped), /tail\.pool2\.onnx has inputs images, channels, bits; a split's tail\.onnx has codes, min, step/);
    await assert.rejects(SplitHead.load(swapped), /head\.pool2\.onnx has inputs codes, min, step; a split's head\.onnx has images, channels, bits/);
    // split.json is input: a graph named by a path, not a file of the folder, is refused.
    const m = JSON.parse(fs.readFileSync(path.join(swapped, 'split.json'), 'utf8'));
    m.splits[0].head = '../head.onnx';
    fs.writeFileSync(path.join(swapped, 'split.json'), JSON.stringify(m));
    await assert.rejects(SplitHead.load(swapped), /split\.json is not a valid split: splits\.0\.head: a file name in the split folder/);
    // A split point left without an operating point (points deleted by hand) is refused by name.
    const kept = JSON.parse(fs.readFileSync(path.join(dir, 'split.json'), 'utf8'));
    kept.points = kept.points.filter((p: { at: string }) => p.at !== 'pool2');
    fs.writeFileSync(path.join(swapped, 'split.json'), JSON.stringify(kept));
    await assert.rejects(SplitHead.load(swapped), /split\.json: split point pool2 has no operating point/);
  } finally {
    fs.rmSync(swapped, { recursive: true, force: true });
  }
});

test('the head page: served with its policy, with dynn\'s browser modules, the first split point\'s head and test images, nothing else of dist', async () => {
  const get = (u: string) => server.app.inject({ method: 'GET', url: u });
  const page = await get('/');
  assert.equal(page.statusCode, 200);
  assert.equal(page.headers['content-security-policy'], HEAD_PAGE_CSP);
  assert.match(page.body, /<script type="module" src="\/static\/dynn\/split\/head-page\.js"><\/script>/);
  assert.deepEqual((await get('/head.pool1.onnx')).rawPayload, fs.readFileSync(path.join(dir, 'head.pool1.onnx')));
  assert.equal((await get('/head.pool2.onnx')).statusCode, 404);
  assert.match(page.body, /head\.pool1\.onnx<\/code>, the first of the split's 2 split point\(s\)/);
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
  const frame = encodeFrame(await h.run(nhwcToNchw(toFloat(data.test, 0, 1), [1, 28, 28]), 1, 1, 2, 1));
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
