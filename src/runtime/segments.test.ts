import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initEngine } from '../engine/backend.js';
import { assertServedLike, randomizeStatistics, serveFolder } from '../export/fixtures.js';
import { saveSegments } from '../export/segments.js';
import { MANIFEST_FILE, type SegmentsManifest } from '../export/manifest.js';
import { gatedTestNet } from '../route/fixtures.js';
import { DynnServer } from '../serve/server.js';
import { OnnxModel, openSession } from './node.js';
import type { SegmentedSession } from './segments.js';
import { serveCommand } from '../cli/serve-commands.js';
import { loadWebSegments } from './web.js';
import { captureIo } from '../cli/capture.js';
import { runCli } from '../cli/cli.js';

await initEngine('wasm');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-segrt-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const model = gatedTestNet('acs-gn');
randomizeStatistics(model, 2);
const dir = path.join(tmp, 'acs');
const manifest = await saveSegments(model, dir, { threshold: 0.3 });
model.dispose();
const images = (n: number) => Float32Array.from({ length: n * 128 }, (_, i) => Math.sin(i * 0.61) * (1 + (i % 7)));

/** A copy of the export, changed by `edit` (given the copy's folder and its manifest, which it may rewrite). */
function broken(name: string, edit: (d: string, m: SegmentsManifest) => SegmentsManifest | void): string {
  const d = path.join(tmp, name);
  cpSync(dir, d, { recursive: true });
  const m = JSON.parse(readFileSync(path.join(d, MANIFEST_FILE), 'utf8')) as SegmentsManifest;
  const changed = edit(d, m);
  if (changed) writeFileSync(path.join(d, MANIFEST_FILE), JSON.stringify(changed));
  return d;
}

test('a folder that is not a sound export fails at load with a DynnError naming the problem', async () => {
  const gate = (m: SegmentsManifest, i: number) => (m.segments[i] as Extract<SegmentsManifest['segments'][number], { kind: 'gated' }>).gate.file;
  const cases: [string, string, RegExp][] = [
    ['no manifest', broken('none', (d) => rmSync(path.join(d, MANIFEST_FILE))), /is a folder without manifest\.json: not a dynamic model exported by segments/],
    ['not JSON', broken('json', (d) => writeFileSync(path.join(d, MANIFEST_FILE), '{"format": ')), /manifest\.json: not valid JSON/],
    ['foreign format', broken('format', (_d, m) => ({ ...m, format: 'other/1' as never })), /invalid segments manifest at format/],
    ['a file outside the folder', broken('outside', (_d, m) => {
      (m.segments[0] as { graph: { file: string } }).graph.file = '../acs/00-stem.conv.onnx';
      return m;
    }), /segments\.0\.graph\.file: expected a plain \.onnx file name inside the folder/],
    ['a missing segment', broken('missing', (d, m) => rmSync(path.join(d, gate(m, 2)))), /02-b2\.gate\.onnx: no such file/],
    ['a corrupt segment', broken('corrupt', (d, m) => {
      const f = path.join(d, gate(m, 1));
      writeFileSync(f, readFileSync(f).subarray(0, 300));
    }), /01-b1\.gate\.onnx: not a valid ONNX model .*truncated or corrupt/],
    ['a segment linked from elsewhere', broken('link', (d, m) => {
      const f = path.join(d, gate(m, 1));
      renameSync(f, path.join(tmp, 'elsewhere.onnx'));
      symlinkSync(path.join(tmp, 'elsewhere.onnx'), f);
    }), /01-b1\.gate\.onnx: a segment must be a regular file in the folder, not a link or a folder/],
    ['a foreign segment (another block\'s gate)', broken('foreign', (d, m) => copyFileSync(path.join(d, gate(m, 1)), path.join(d, gate(m, 2)))), /02-b2\.gate\.onnx: weights digest mismatch/],
    ['shapes that do not chain', broken('chain', (_d, m) => {
      m.segments[2].input = [9, 4, 4];
      return m;
    }), /segments\.2\.input: \[9,4,4\] does not follow \[8,8,8\]/],
    ['shapes the graphs do not have', broken('shape', (_d, m) => {
      m.input.shape = [3, 8, 8];
      m.segments[0].input = [3, 8, 8];
      return m;
    }), /00-stem\.conv\.onnx: input 'x' has dim 1 = 2 but metadata says \[batch, 3, 8, 8\]/],
    ['the last segment is not the scores', broken('scores', (_d, m) => ({ ...m, numClasses: 4, classNames: ['a', 'b', 'c', 'd'] })), /the last segment gives \[3\], not the \[4\] class scores/],
  ];
  for (const [what, folder, pattern] of cases) {
    await assert.rejects(openSession(folder, { threads: 1 }), (err: Error) => err.name === 'DynnError' && pattern.test(err.message), what);
  }
});

test('dynn serve of the folder: predictions equal the in-thread dispatcher, with each sample\'s FLOPs ratio; only fixed:1 applies', async () => {
  const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
  const x = images(5);
  const want = await session.runRouted(x);
  await session.release();
  assert.deepEqual(manifest.threshold, 0.3);
  const inWorker = await OnnxModel.load(dir, { worker: true, threads: 1 });
  const p = await inWorker.run(x, 1);
  assert.deepEqual([...p.scores], [...want.scores]);
  assert.deepEqual([...p.flopsRatios!], [...want.flopsRatios]);
  await inWorker.dispose();

  await assert.rejects(DynnServer.create({ model: dir, policy: 'adaptive', threads: 1 }), /policy adaptive does not apply to .*acs: a dynamic model's gates choose/);
  await assert.rejects(DynnServer.create({ model: dir, policy: 'fixed:0.5', threads: 1 }), /policy fixed:0\.5 does not apply to .*acs: a dynamic model's gates choose/);
  const server = await DynnServer.create({ model: dir, threads: 1, maxBatch: 8, maxWaitMs: 1 });
  try {
    await assertServedLike(server.app, x, [5, 2, 8, 8], want, 1e-6);
    const health = (await server.app.inject({ method: 'GET', url: '/healthz' })).json() as { model: { routed?: { threshold: number; gatedBlocks: number } } };
    assert.deepEqual(health.model.routed, { threshold: 0.3, gatedBlocks: 2 });
    const bad = await server.app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: [1, 2, 3] } });
    assert.equal(bad.statusCode, 400);
  } finally {
    await server.close();
  }
});

test('dynn serve DIR starts on the folder and says it is dynamic; dynn profile refuses it', async () => {
  const io = captureIo();
  await serveCommand(dir, { port: '0', threads: '1' }, io, Promise.resolve('SIGTERM'));
  assert.match(io.stdout(), /listening on http:\/\/127\.0\.0\.1:\d+ \(test, dynamic: 2 gated blocks at threshold 0\.3, SLO 25 ms\)/);
  const profile = captureIo();
  assert.equal(await runCli(['profile', dir], profile), 1);
  assert.match(profile.stderr(), /acs is a folder .*profile measures the levels of one ONNX file/);
});

test('the web entry loads the folder from its URL and dispatches as onnxruntime-node does', async () => {
  // The folder's files over HTTP, as a page would fetch them.
  const http = await serveFolder(dir, 'acs');
  const base = http.base;
  try {
    const node = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const web = await loadWebSegments(`${base}/acs`);
    assert.equal(web.verified, true);
    const x = images(4);
    const [a, b] = [await web.runRouted(x), await node.runRouted(x)];
    assert.deepEqual(a.counts, b.counts);
    assert.ok(a.scores.every((v, i) => Math.abs(v - b.scores[i]) < 1e-4));
    await web.release();
    await node.release();
    await assert.rejects(loadWebSegments(`${base}/nothing/`), /nothing\/manifest\.json: HTTP 404/);
  } finally {
    http.close();
  }
});
