// The web runtime's sessions in Chromium on onnxruntime-web: dynn's own dist modules, loaded as ES modules
// with an import map (no bundler), run a temporal model frame by frame as TF.js's runTemporal does.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initEngine } from '../engine/backend.js';
import { MixedRunner } from '../control/runner.js';
import { runTemporal, sequencesOf } from '../control/temporal.js';
import { browserSkipReason, launchBrowser, type TestBrowser } from '../report/browser.js';
import { tempDir } from '../report/fixtures.js';
import { frameOf, temporalFixture, type TemporalFixture } from './temporal-fixtures.js';
import { levelIndexFor } from '../export/metadata.js';

const skip = browserSkipReason();
const require = createRequire(import.meta.url);
let browser: TestBrowser | null = null;
let server: Server | null = null;
let origin = '';
let fx: TemporalFixture;

const PAGE = `<!doctype html><meta charset="utf-8">
<script src="/pb/dist/protobuf.min.js"></script>
<script type="importmap">{"imports": {"onnxruntime-web": "/ort/ort.wasm.min.mjs", "zod": "/zod/index.js", "protobufjs": "/shim/protobuf.mjs"}}</script>
<script type="module">
import * as ort from 'onnxruntime-web';
ort.env.wasm.wasmPaths = '/ort/';
window.dynnWeb = await import('/dist/src/runtime/web.js');
</script>`;

/** Test-only static files: the page, dynn's dist, zod, protobufjs and onnxruntime-web, each under its own prefix. */
function files(model: string): Map<string, string> {
  return new Map([
    ['/dist/', path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')],
    ['/zod/', path.dirname(require.resolve('zod'))],
    ['/pb/', path.dirname(require.resolve('protobufjs'))],
    ['/ort/', path.dirname(require.resolve('onnxruntime-web'))],
    ['/model/', path.dirname(model)],
  ]);
}

const TYPES: Record<string, string> = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html' };

before(async () => {
  if (skip) return;
  await initEngine('wasm');
  fx = await temporalFixture(tempDir('dynn-web-'));
  const roots = files(fx.file);
  server = createServer(async (req, res) => {
    const url = decodeURIComponent((req.url ?? '/').split('?')[0]);
    const send = (status: number, body: string | Buffer, type = 'text/plain') => res.writeHead(status, { 'content-type': type }).end(body);
    if (url === '/favicon.ico') return send(204, '');
    if (url === '/') return send(200, PAGE, 'text/html');
    if (url === '/shim/protobuf.mjs') return send(200, 'export default globalThis.protobuf;', 'text/javascript');
    const prefix = [...roots.keys()].find((p) => url.startsWith(p));
    if (!prefix) return send(404, 'no');
    const root = roots.get(prefix)!;
    const file = path.resolve(root, url.slice(prefix.length));
    if (!file.startsWith(root + path.sep)) return send(403, 'no');
    try {
      send(200, await readFile(file), TYPES[path.extname(file)] ?? 'application/octet-stream');
    } catch {
      send(404, 'no');
    }
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  origin = `http://localhost:${(server.address() as AddressInfo).port}`;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
});

test('onnxruntime-web sessions choose the u and classes of TF.js’s runTemporal, the model verified in the page', { skip }, async () => {
  const { set, model, controller, meta } = fx;
  const runner = new MixedRunner(model);
  const ref = runTemporal(controller, runner, set);
  runner.dispose();
  const seqs = sequencesOf(set).slice(0, 2);
  const frames = seqs.map((seq) => Array.from(seq, (f) => Array.from(frameOf(set, f))));
  const { page, errors } = await browser!.page();
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => (window as unknown as { dynnWeb?: unknown }).dynnWeb !== undefined, undefined, { timeout: 30_000 });
  const got = await page.evaluate(async (streams) => {
    type Step = { u: number; class: number; nextU: number; flopsRatio: number };
    type Web = { loadWebModel(url: string): Promise<{ verified: boolean; session(): { next(x: Float32Array, o: object): Promise<Step> } }> };
    const web = (window as unknown as { dynnWeb: Web }).dynnWeb;
    const m = await web.loadWebModel('/model/stream.onnx');
    const out: Step[][] = [];
    for (const frames of streams) {
      const s = m.session();
      const steps: Step[] = [];
      for (const f of frames) {
        const { u, class: c, nextU, flopsRatio } = await s.next(Float32Array.from(f), { layout: 'NHWC' });
        steps.push({ u, class: c, nextU, flopsRatio });
      }
      out.push(steps);
    }
    return { verified: m.verified, out };
  }, frames);
  await page.close();
  assert.deepEqual(errors, []);
  assert.equal(got.verified, true, 'the weights digest, the controller’s included, checked with WebCrypto');
  seqs.forEach((seq, q) =>
    seq.forEach((f, t) => {
      const step = got.out[q][t];
      // The u that ran: the representative u of the exported level TF.js ran the action at.
      const levelU = (u: number) => meta.levels[levelIndexFor(meta.levels, u)].u;
      assert.equal(step.u, levelU(ref.u[f]), `sequence ${q} frame ${t}: u`);
      assert.equal(step.class, ref.predictions[f], `sequence ${q} frame ${t}: class`);
      if (t + 1 < seq.length) assert.equal(step.nextU, levelU(ref.u[seq[t + 1]]));
      assert.ok(step.flopsRatio > meta.controller!.flopsRatio);
    }),
  );
  assert.ok(new Set(seqs.flatMap((seq) => Array.from(seq, (f) => ref.u[f]))).size >= 2, 'the run mixes operating points');
});
