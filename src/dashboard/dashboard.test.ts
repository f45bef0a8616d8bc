import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { createDashboard, listRuns, readProgress, progressRecorder, startDashboard, MAX_STEPS, type ProgressRecorder } from './index.js';
import { readInside } from './runs.js';
import { demoPage } from './pages.js';
import { overLimit, request, slowClient } from '../util/http-fixtures.js';
import { tempDir, trainTinyDynamicRun, trainTinyRun, writeCompanions } from '../report/fixtures.js';
import { RUN_FILES } from '../report/sources.js';
import { loadDataset } from '../data/datasets.js';
import { runCli } from '../cli/cli.js';

let root: string;
let runsDir: string;
let app: FastifyInstance;
let recorder: ProgressRecorder;
const steps: number[] = [];

before(async () => {
  root = tempDir('dynn-dashboard-');
  runsDir = path.join(root, 'runs');
  recorder = progressRecorder(path.join(runsDir, 'tiny'), { intervalMs: 0 });
  await trainTinyRun(path.join(runsDir, 'tiny'), {
    onStep: (p) => {
      steps.push(p.step + 1);
      recorder.onStep(p);
    },
    onEpoch: recorder.onEpoch,
  });
  await recorder.close();
  await writeCompanions(path.join(runsDir, 'tiny'));
  mkdirSync(path.join(runsDir, 'group', 'starting'), { recursive: true });
  writeFileSync(path.join(runsDir, 'group', 'starting', RUN_FILES.progress), JSON.stringify({ format: 'dynn-progress/1', state: 'training', startedAt: new Date().toISOString(), updatedAt: new Date().toISOString(), epochs: 3, stepsPerEpoch: 10, last: null, steps: [] }));
  app = await createDashboard({ runsDir, samples: 6 });
});

after(async () => {
  await app?.close();
});

test('the progress recorder writes every step of a training run, then "done"', async () => {
  const p = await readProgress(path.join(runsDir, 'tiny'));
  assert.ok(p);
  assert.equal(p.state, 'done');
  assert.equal(p.epochs, 1);
  assert.deepEqual(p.steps.map((s) => s.step), steps);
  assert.equal(p.last?.step, steps[steps.length - 1]);
  assert.ok(p.steps.every((s) => Number.isFinite(s.loss) && s.u > 0 && s.u <= 1));
});

test('the progress recorder thins old steps evenly once it holds MAX_STEPS', async () => {
  const dir = path.join(root, 'thin');
  const r = progressRecorder(dir, { intervalMs: 60_000 });
  const n = MAX_STEPS + 10;
  for (let i = 1; i <= n; i++) r.onStep({ epoch: 0, epochs: 1, step: i - 1, steps: n, loss: 1 / i, accuracy: 0.5, samplesPerSec: 100, u: 0.5 });
  await r.close();
  const p = (await readProgress(dir))!;
  assert.ok(p.steps.length <= MAX_STEPS);
  assert.equal(p.last?.step, n);
  assert.equal(p.steps[p.steps.length - 1].step, n, 'the newest step is kept');
  const gaps = new Set(p.steps.slice(1, MAX_STEPS / 2).map((s, i) => s.step - p.steps[i].step));
  assert.deepEqual([...gaps], [2], 'thinned to every other step');
});

test('a malformed progress file is a clear error', async () => {
  const dir = path.join(root, 'badprogress');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, RUN_FILES.progress), '{"format": "dynn-progress/1"}');
  await assert.rejects(readProgress(dir), /progress\.json: not a dynn progress file/);
});

test('the run list holds training runs (also nested, also just started), not controller or gates checkpoints', async () => {
  const runs = await listRuns(runsDir);
  assert.deepEqual(runs.map((r) => r.name), ['group/starting', 'tiny']);
  const tiny = runs.find((r) => r.name === 'tiny')!;
  assert.equal(tiny.model, 'mlp-w');
  assert.equal(tiny.epochs, 1);
  assert.equal(tiny.live, 'done');
  assert.equal(tiny.hasOnnx, false);
  const starting = runs.find((r) => r.name === 'group/starting')!;
  assert.equal(starting.model, null);
  assert.equal(starting.plannedEpochs, 3);
  await assert.rejects(listRuns(path.join(root, 'nope')), /runs folder .*nope does not exist/);
});

test('the index page lists each run with links to its report, live page and demo', async () => {
  const res = await app.inject('/');
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /text\/html/);
  assert.match(res.body, /<tr data-run="tiny">/);
  assert.match(res.body, /href="\/runs\/tiny\/report"/);
  assert.match(res.body, /href="\/runs\/tiny\/live"/);
  assert.match(res.body, /href="\/runs\/group%2Fstarting\/demo"/);
  const api = await app.inject('/api/runs');
  assert.deepEqual(api.json().runs.map((r: { name: string }) => r.name), ['group/starting', 'tiny']);
});

test('a run’s report page is built from its files without measuring anything', async () => {
  const res = await app.inject('/runs/tiny/report');
  assert.equal(res.statusCode, 200);
  assert.match(res.body, /data-section="training" data-available="true"/);
  assert.match(res.body, /data-section="accuracy-u" data-available="false"/);
  assert.match(res.body, /data-section="gates" data-available="true"/);
  const saved = await app.inject('/runs/tiny/report.html');
  assert.equal(saved.statusCode, 404);
  assert.match(saved.body, /dynn report \S+tiny --out/);
  const starting = await app.inject('/runs/group%2Fstarting/report');
  assert.equal(starting.statusCode, 404);
  assert.match(starting.body, /no checkpoint yet/);
});

test('the live page shows per-step and per-epoch curves', async () => {
  const page = await app.inject('/runs/tiny/live');
  assert.equal(page.statusCode, 200);
  const live = await app.inject('/api/runs/tiny/live');
  const body = live.json();
  assert.equal(body.live, 'done');
  for (const id of ['live-loss', 'live-speed', 'training-loss', 'training-accuracy', 'training-speed']) assert.match(body.html, new RegExp(`data-chart="${id}"><svg`), id);
  assert.match(body.html, /data-state="done"/);
  const starting = (await app.inject('/api/runs/group%2Fstarting/live')).json();
  assert.match(starting.html, /no step yet/);
  assert.match(starting.html, /No checkpoint yet/);
});

test('without model.onnx the demo page says how to export one', async () => {
  const res = await app.inject('/runs/tiny/demo');
  assert.equal(res.statusCode, 200);
  assert.match(res.body, /id="no-model"/);
  assert.match(res.body, /dynn export \S+tiny --onnx \S+tiny\/model\.onnx/);
  const model = await app.inject('/api/runs/tiny/model');
  assert.equal(model.statusCode, 404);
  assert.match(model.json().error, /no model\.onnx .*dynn export/);
});

test('test images come from the run’s data set, as stored', async () => {
  const res = await app.inject('/api/runs/tiny/samples?count=4');
  assert.equal(res.statusCode, 200);
  const body = res.json();
  const data = await loadDataset('synthetic', { testLimit: 4 });
  assert.deepEqual(body.labels, Array.from(data.test.labels));
  assert.deepEqual(body.classNames, data.classNames);
  const per = data.test.height * data.test.width * data.test.channels;
  body.images.forEach((b64: string, i: number) => assert.deepEqual(new Uint8Array(Buffer.from(b64, 'base64')), data.test.images.subarray(i * per, (i + 1) * per)));
  const bad = await app.inject('/api/runs/tiny/samples?count=1000');
  assert.equal(bad.statusCode, 400);
  assert.match(bad.json().error, /count must be an integer in \[1, 64\]/);
});

test('only listed runs and onnxruntime-web’s own files are served', async () => {
  for (const url of ['/runs/nope/report', '/runs/..%2F..%2Fetc/report', '/runs/%2Fetc/live', '/api/runs/nope/model']) {
    const res = await app.inject(url);
    assert.equal(res.statusCode, 404, url);
  }
  const ort = await app.inject('/vendor/ort/ort.wasm.min.mjs');
  assert.equal(ort.statusCode, 200);
  assert.match(ort.headers['content-type'] as string, /javascript/);
  const wasm = await app.inject('/vendor/ort/ort-wasm-simd-threaded.wasm');
  assert.equal(wasm.headers['content-type'], 'application/wasm');
  assert.deepEqual([...wasm.rawPayload.subarray(0, 4)], [0, 0x61, 0x73, 0x6d], 'a WebAssembly binary');
  for (const url of ['/vendor/ort/package.json', '/vendor/ort/..%2Fpackage.json', '/vendor/ort/ort.node.min.js']) assert.equal((await app.inject(url)).statusCode, 404, url);
  assert.equal((await app.inject('/static/demo.js')).statusCode, 200);
});

test('dynn dashboard refuses a missing runs folder and a bad port', async () => {
  let err = '';
  const io = { out: () => {}, err: (t: string) => (err += t), errIsTTY: false };
  assert.equal(await runCli(['dashboard', '--runs', path.join(root, 'nope'), '--port', '0'], io), 1);
  assert.match(err, /runs folder .*nope does not exist/);
  err = '';
  assert.equal(await runCli(['dashboard', '--runs', runsDir, '--port', '70000'], io), 1);
  assert.match(err, /--port must be an integer/);
});

const EVIL = '<img src=x onerror=alert(1)>';
const SECRET = 'root:x:0:0:SECRET-OUTSIDE-THE-RUNS-FOLDER';

/** A runs folder beside the shared one: copies of the tiny run, one named like markup, and links out of it. */
async function hostileRuns(): Promise<{ root: string; runs: string; dash: FastifyInstance }> {
  const root = path.join(tempDir('dynn-dashboard-sec-'), 'home');
  const runs = path.join(root, 'runs');
  const outside = path.join(root, 'outside');
  mkdirSync(runs, { recursive: true });
  mkdirSync(outside, { recursive: true });
  writeFileSync(path.join(outside, 'passwd'), SECRET);
  const tiny = path.join(runsDir, 'tiny');
  cpSync(tiny, path.join(outside, 'run'), { recursive: true });
  cpSync(tiny, path.join(runs, 'plain'), { recursive: true });
  cpSync(tiny, path.join(runs, EVIL), { recursive: true });
  cpSync(tiny, path.join(runs, 'linked-file'), { recursive: true });
  symlinkSync(path.join(outside, 'passwd'), path.join(runs, 'linked-file', 'report.html'));
  symlinkSync(path.join(outside, 'passwd'), path.join(runs, 'linked-file', RUN_FILES.onnx));
  symlinkSync(path.join(outside, 'run'), path.join(runs, 'linked-run'));
  // Links that stay inside the runs folder are followed.
  symlinkSync(path.join(runs, 'plain'), path.join(runs, 'alias'));
  symlinkSync(path.join('..', 'plain', 'checkpoint.json'), path.join(runs, EVIL, 'same-folder-link.json'));
  return { root, runs, dash: await createDashboard({ runsDir: runs }) };
}

test('text from run folders (names, errors) goes into every page as text, never markup', async () => {
  const { dash } = await hostileRuns();
  try {
    const name = encodeURIComponent(EVIL);
    const pages = ['/', `/runs/${name}/report`, `/runs/${name}/live`, `/runs/${name}/demo`, `/runs/${name}/report.html`, '/runs/%3Cscript%3Ealert(1)%3C%2Fscript%3E/report'];
    for (const url of pages) {
      const res = await dash.inject(url);
      assert.ok([200, 404].includes(res.statusCode), `${url}: ${res.statusCode}`);
      assert.ok(!res.body.includes('<img src=x') && !res.body.includes('<script>alert'), `${url} holds markup from a file name`);
    }
    assert.match((await dash.inject('/')).body, /<tr data-run="&lt;img src=x onerror=alert\(1\)&gt;">/);
    assert.match((await dash.inject(`/runs/${name}/report`)).body, /<h1>dynn report: &lt;img src=x onerror=alert\(1\)&gt;<\/h1>/);
    const live = (await dash.inject(`/api/runs/${name}/live`)).json();
    assert.ok(!live.html.includes('<img src=x'));
    const run = (await listRuns(runsDir)).find((r) => r.name === 'tiny')!;
    const demo = demoPage({ ...run, hasOnnx: true }, { ortUrl: '/o.mjs', wasmPaths: '/', samples: 1, cascade: { stages: [0.5, 1], threshold: 0.9 }, controllers: [EVIL] });
    assert.match(demo, /learned controller of this run \(&lt;img src=x onerror=alert\(1\)&gt;\)/, 'escaped once: shown as typed');
  } finally {
    await dash.close();
  }
});

test('no file outside the runs folder is served, whatever links or .. in a path say', async () => {
  const { root, runs, dash } = await hostileRuns();
  try {
    const listed = (await dash.inject('/api/runs')).json().runs as { name: string; dir: string; refused?: string }[];
    assert.deepEqual(listed.map((r) => r.name).sort(), [EVIL, 'alias', 'linked-file', 'plain'].sort(), 'the linked run dir outside is not listed');
    assert.match(listed.find((r) => r.name === 'linked-file')!.refused!, /^linked-file\/(model\.onnx|report\.html) links outside the runs folder/);
    const refused = ['report.html', RUN_FILES.onnx, 'report', 'live', 'demo'].map((f) => `/runs/linked-file/${f}`).concat(['/api/runs/linked-file/model', '/api/runs/linked-file/live']);
    // Never-leaks checks only: these match no route (or no listed run), so they 404 whatever the file checks do.
    const noRoute = [
      '/runs/linked-run/report.html',
      `/runs/linked-run/${RUN_FILES.onnx}`,
      '/runs/..%2Foutside%2Frun/report',
      '/runs/%2e%2e/report.html',
      '/runs/%2e%2e%2foutside%2frun/model.onnx',
      '/runs/plain/..%2F..%2Foutside%2Fpasswd',
      '/runs/../outside/passwd',
      '/runs/plain/../../outside/passwd',
      '/vendor/ort/%2e%2e%2f%2e%2e%2fpackage.json',
    ];
    for (const url of [...refused, ...noRoute]) {
      const res = await dash.inject(url);
      assert.ok(res.statusCode === 403 || res.statusCode === 404, `${url}: ${res.statusCode}`);
      assert.ok(!res.body.includes('SECRET'), `${url} served a file outside the runs folder`);
    }
    for (const url of refused) assert.equal((await dash.inject(url)).statusCode, 403, url);
    assert.equal((await dash.inject('/runs/alias/report')).statusCode, 200, 'a link inside the runs folder is followed');
    assert.equal(await readInside(runs, path.join(runs, 'linked-file', 'report.html')), null);
    assert.equal(await readInside(runs, path.join(runs, 'plain', '..', '..', 'outside', 'passwd')), null);
    assert.ok(await readInside(runs, path.join(runs, 'alias', 'checkpoint.json')));
    assert.ok(root);
  } finally {
    await dash.close();
  }
});

test('a linked folder inside the runs folder is looked into: a link in it that leaves the folder refuses the run', async () => {
  const { root, runs, dash } = await hostileRuns();
  try {
    // runs/r/ctrl -> runs/stash, and runs/stash/checkpoint.json -> a checkpoint outside: r's report would read it.
    const r = path.join(runs, 'r');
    cpSync(path.join(runs, 'plain'), r, { recursive: true });
    mkdirSync(path.join(runs, 'stash'));
    symlinkSync(path.join(root, 'outside', 'run', 'checkpoint.json'), path.join(runs, 'stash', 'checkpoint.json'));
    rmSync(path.join(r, 'ctrl'), { recursive: true });
    symlinkSync(path.join(runs, 'stash'), path.join(r, 'ctrl'));
    const listed = (await dash.inject('/api/runs')).json().runs as { name: string; refused?: string }[];
    assert.match(listed.find((x) => x.name === 'r')?.refused ?? '', /^r\/ctrl\/checkpoint\.json links outside the runs folder/);
    for (const url of ['/runs/r/report', '/runs/r/demo', '/runs/r/live', '/api/runs/r/live', '/runs/stash/report']) {
      const res = await dash.inject(url);
      assert.equal(res.statusCode, 403, url);
      assert.ok(!res.body.includes('SECRET'), url);
    }
    assert.equal((await dash.inject('/runs/alias/report')).statusCode, 200, 'a linked folder whose files stay inside is still served');
  } finally {
    await dash.close();
  }
});

test('a run file swapped for a link out between the check and the read is not served', async () => {
  const { root, runs, dash } = await hostileRuns();
  await dash.close();
  const file = path.join(runs, 'plain', 'report.html');
  const link = path.join(runs, 'plain', 'swap.tmp');
  writeFileSync(file, 'INSIDE');
  let done = false;
  // Swaps report.html between a regular file and a link to the secret outside, as fast as the event loop allows.
  const swapper = (async () => {
    for (let i = 0; !done; i++) {
      if (i % 2) {
        writeFileSync(link, 'INSIDE');
      } else {
        rmSync(link, { force: true });
        symlinkSync(path.join(root, 'outside', 'passwd'), link);
      }
      renameSync(link, file);
      await new Promise((r) => setTimeout(r, i % 2 ? 0 : 2));
    }
  })();
  const seen = new Set<string>();
  try {
    for (let i = 0; i < 400; i++) {
      const got = await readInside(runs, file);
      seen.add(got ? got.bytes.toString() : 'refused');
    }
  } finally {
    done = true;
    await swapper;
  }
  assert.ok(!seen.has(readFileSync(path.join(root, 'outside', 'passwd'), 'utf8')), 'read the file outside');
  assert.ok(seen.has('INSIDE'), 'the file inside was served');
});

test('metadata from a run folder is validated: a hostile or malformed checkpoint is one unreadable run, shown as text', async () => {
  const { runs, dash } = await hostileRuns();
  try {
    const edit = (name: string, change: (meta: { epoch: unknown; history: { loss: unknown }[] }) => void) => {
      const dir = path.join(runs, name);
      cpSync(path.join(runs, 'plain'), dir, { recursive: true });
      const file = path.join(dir, 'checkpoint.json');
      const manifest = JSON.parse(readFileSync(file, 'utf8'));
      change(manifest.meta);
      writeFileSync(file, JSON.stringify(manifest));
    };
    edit('xss-epoch', (m) => void (m.epoch = EVIL));
    edit('bad-loss', (m) => void (m.history[m.history.length - 1].loss = 'x'));
    const index = await dash.inject('/');
    assert.equal(index.statusCode, 200);
    assert.ok(!index.body.includes('<img src=x'), 'markup from metadata in the index');
    for (const name of ['xss-epoch', 'bad-loss']) {
      const row = index.body.split('\n').find((l) => l.startsWith(`<tr data-run="${name}">`))!;
      assert.match(row, /<span class="muted" title="[^"]*is not a valid training run: meta\.(epoch|history\[\d+\]\.loss)[^"]*">unreadable<\/span>/, name);
    }
    const api = (await dash.inject('/api/runs')).json().runs as { name: string; error?: string; epochs: unknown }[];
    assert.match(api.find((r) => r.name === 'xss-epoch')!.error!, /is not a valid training run: meta\.epoch/);
    assert.equal(api.find((r) => r.name === 'xss-epoch')!.epochs, 0);
    assert.match(api.find((r) => r.name === 'bad-loss')!.error!, /meta\.history\[\d+\]\.loss/);
    for (const url of ['/runs/xss-epoch/live', '/runs/xss-epoch/report', '/runs/xss-epoch/demo', '/runs/bad-loss/report']) {
      const res = await dash.inject(url);
      assert.ok([200, 404].includes(res.statusCode), `${url}: ${res.statusCode}`);
      assert.ok(!res.body.includes('<img src=x'), `${url} holds markup from the metadata`);
    }
    const live = (await dash.inject('/api/runs/xss-epoch/live')).json();
    assert.ok(!live.html.includes('<img src=x'));
    assert.match(live.html, /<div class="missing-box">[^<]*is not a valid training run: meta\.epoch/);
  } finally {
    await dash.close();
  }
});

test('the dashboard pages escape run values even if they bypass validation', async () => {
  const run = (await listRuns(runsDir)).find((r) => r.name === 'tiny')!;
  const hostile = { ...run, epochs: EVIL as unknown as number, plannedEpochs: EVIL as unknown as number, lastLoss: EVIL as unknown as number, lastAccuracy: EVIL as unknown as number, live: EVIL as unknown as 'done', hasOnnx: false };
  const { indexPage, livePage } = await import('./pages.js');
  const { liveFragment } = await import('./live.js');
  const dir = path.join(tempDir('dynn-dashboard-esc-'), 'run');
  for (const html of [indexPage(runsDir, [hostile]), livePage(hostile, '', 1000), await liveFragment({ ...hostile, dir, model: null })]) {
    assert.ok(!html.includes('<img src=x'), html.slice(0, 200));
  }
  assert.match(await liveFragment({ ...hostile, dir, model: null }), /&lt;img src=x onerror=alert\(1\)&gt; epoch\(s\) in the checkpoint/);
});

test('/api/runs shows paths relative to the runs folder, never where it is on disk', async () => {
  const { root, dash } = await hostileRuns();
  try {
    const res = await dash.inject('/api/runs');
    assert.ok(!res.body.includes(root), 'no absolute path');
    const runs = res.json().runs as { name: string; dir: string }[];
    for (const r of runs) assert.equal(r.dir, r.name);
    assert.equal(res.json().runsDir, undefined);
    const missing = await dash.inject('/api/runs/nope/live');
    assert.equal(missing.statusCode, 404);
    assert.equal(missing.json().error, 'no run "nope" in the runs folder');
  } finally {
    await dash.close();
  }
});

test('DNS rebinding: the dashboard answers a request naming another host with 403', async () => {
  for (const url of ['/', '/api/runs', '/runs/tiny/report', '/static/demo.js']) {
    const res = await app.inject({ url, headers: { host: 'rebound.attacker.example:8080' } });
    assert.equal(res.statusCode, 403, url);
    assert.match(res.body, /Host (&quot;|\\?")rebound\.attacker\.example:8080(&quot;|\\?") is not allowed: this server answers only to localhost/, url);
  }
  assert.match((await app.inject({ url: '/api/runs', headers: { host: 'x.example' } })).json().error, /DNS rebinding/);
  for (const host of ['localhost:8080', '127.0.0.1', '[::1]:8080']) assert.equal((await app.inject({ url: '/api/runs', headers: { host } })).statusCode, 200, host);
  // Over a real socket too (inject has none, so only its no-socket branch ran above).
  const dash = await startDashboard({ runsDir, port: 0 });
  try {
    const { port } = dash.app.server.address() as AddressInfo;
    const reply = await new Promise<string>((resolve, reject) => {
      let got = '';
      const sock = net.connect(port, '127.0.0.1', () => sock.end('GET /api/runs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n'));
      sock.on('data', (d) => (got += d));
      sock.on('end', () => resolve(got));
      sock.on('error', reject);
    });
    assert.match(reply, /^HTTP\/1\.1 403 /);
    assert.match(reply, /Host \\?"evil\.example\\?" is not allowed/);
    assert.equal((await request(dash.url, { path: '/api/runs' })).status, 200, 'its own host still answered');
  } finally {
    await dash.close();
  }
  const allowed = await createDashboard({ runsDir, allowedHosts: ['dash.example.com'] });
  assert.equal((await allowed.inject({ url: '/api/runs', headers: { host: 'dash.example.com' } })).statusCode, 200);
  await allowed.close();
});

test('the dashboard cuts off a slowloris client while serving others, and closes connections over its bound', async () => {
  const dash = await startDashboard({ runsDir, port: 0, headersTimeoutMs: 300, requestTimeoutMs: 1000, maxConnections: 4 });
  try {
    const slow = slowClient(dash.url, { intervalMs: 40, maxMs: 8000 });
    for (let i = 0; i < 3; i++) assert.equal((await request(dash.url, { path: '/api/runs' })).status, 200);
    const r = await slow;
    assert.ok(r.closedAfterMs !== null && r.closedAfterMs < 4000, `closed after ${r.closedAfterMs} ms, ${r.bytesSent} bytes`);
    const { held, extraClosed } = await overLimit(dash.url, dash.app.server, 4);
    assert.equal(held, 4);
    assert.ok(extraClosed, 'the fifth connection was closed');
    assert.equal((await request(dash.url, { path: '/' })).status, 200, 'the dashboard stays up');
  } finally {
    await dash.close();
  }
});

test('dynn dashboard on a port in use or an unknown host says so, without a stack', async () => {
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as AddressInfo).port;
  let err = '';
  const io = { out: () => {}, err: (t: string) => (err += t), errIsTTY: false };
  try {
    assert.equal(await runCli(['dashboard', '--runs', runsDir, '--port', String(port)], io), 1);
    assert.equal(err, `dynn: port ${port} on 127.0.0.1 is in use; choose another with --port\n`);
  } finally {
    busy.close();
  }
  err = '';
  assert.equal(await runCli(['dashboard', '--runs', runsDir, '--port', '0', '--host', 'no.such.host.invalid'], io), 1);
  assert.match(err, /^dynn: cannot resolve the host "no\.such\.host\.invalid" to listen on; give an address of this machine with --host \(e\.g\. 127\.0\.0\.1\)\n$/);
  err = '';
  assert.equal(await runCli(['dashboard', '--runs', runsDir, '--port', '0', '--allowed-hosts', 'a/b'], io), 1);
  assert.match(err, /allowed host "a\/b" is not a host name/);
});

test('a dynamic run’s page shows its threshold sweep; a corrupt, foreign or hostile sweep file is a message on the page', async () => {
  const dynRuns = path.join(tempDir('dynn-dashboard-dynamic-'), 'runs');
  const good = path.join(dynRuns, 'acs');
  await trainTinyDynamicRun(good);
  const sweep = JSON.parse(readFileSync(path.join(good, RUN_FILES.sweep), 'utf8'));
  const variant = (name: string, text: string) => {
    cpSync(good, path.join(dynRuns, name), { recursive: true });
    writeFileSync(path.join(dynRuns, name, RUN_FILES.sweep), text);
  };
  variant('not-json', '{"model": "resnet38", "dynamic": "acs-gn", "points": [');
  variant('bad-field', JSON.stringify({ ...sweep, points: [{ ...sweep.points[0], histogram: 'x' }] }));
  variant('foreign', JSON.stringify({ ...sweep, dynamic: 'acs-dg' }));
  variant('hostile', JSON.stringify({ ...sweep, classNames: sweep.classNames.map((n: string, i: number) => (i === 2 ? EVIL : i === 3 ? `</script>${EVIL}` : n)) }));
  variant('other-data', JSON.stringify({ ...sweep, dataset: EVIL }));
  const dash = await createDashboard({ runsDir: dynRuns });
  try {
    const page = async (name: string) => {
      const res = await dash.inject(`/runs/${name}/report`);
      assert.equal(res.statusCode, 200, `${name}: ${res.body.slice(0, 300)}`);
      assert.doesNotMatch(res.body, /\n\s+at |internal error/, `${name}: no stack`);
      assert.ok(!res.body.includes('<img src=x'), `${name}: markup from the sweep file`);
      const m = res.body.match(/<section id="sec-dynamic" data-section="dynamic" data-available="(true|false)">([\s\S]*?)<\/section>/)!;
      return { available: m[1] === 'true', body: m[2], charts: (m[2].match(/<figure class="chart"/g) ?? []).length };
    };
    const ok = await page('acs');
    assert.ok(ok.available);
    assert.equal(ok.charts, 6, 'accuracy vs FLOPs, histogram, skip rates, FLOPs and accuracy per class, skips per class and block');
    assert.match(ok.body, /groups skipped per class and block/);
    assert.match(ok.body, /<td>0\.5 \(trained\)<\/td>/);
    for (const [name, pattern] of [
      ['not-json', /not-json\/sweep\.json: not valid JSON/],
      ['bad-field', /bad-field\/sweep\.json: not a threshold sweep of a dynamic run .*points\[0\]\.histogram/],
      ['foreign', /a threshold sweep of resnet38 with acs-dg gates, but the run is resnet38 with acs-gn gates/],
      ['other-data', /a threshold sweep on &lt;img src=x onerror=alert\(1\)&gt; \(\d+ classes\), but the run trained on/],
    ] as const) {
      const p = await page(name);
      assert.equal(p.available, false, name);
      assert.match(p.body, /<div class="missing-box"><strong>Not available\.<\/strong>/);
      assert.match(p.body, pattern, name);
      assert.match(p.body, /remake it with <code>dynn sweep|not valid JSON/);
      const demo = await dash.inject(`/runs/${name}/demo`);
      assert.equal(demo.statusCode, 200, `${name}: the demo page does not read the sweep`);
    }
    const hostile = await page('hostile');
    assert.ok(hostile.available);
    assert.match(hostile.body, /<td>&lt;img src=x onerror=alert\(1\)&gt;<\/td>/, 'a class name shown as typed');
    assert.equal((await dash.inject('/')).statusCode, 200);
  } finally {
    await dash.close();
  }
});
