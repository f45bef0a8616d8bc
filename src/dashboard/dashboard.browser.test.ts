import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { progressRecorder, startDashboard, type RunningDashboard } from './index.js';
import { tempDir, trainTinyRun } from '../report/fixtures.js';
import { ARTIFACTS_DIR, browserSkipReason, launchBrowser, type Page, type TestBrowser } from '../report/browser.js';
import { RUN_FILES } from '../report/sources.js';
import { loadRun } from '../train/run.js';
import { loadDataset } from '../data/datasets.js';
import { saveOnnx } from '../export/export.js';
import { levelIndexFor, type OnnxMetadata } from '../export/metadata.js';
import { ModelProto } from '../export/onnx-proto.js';
import { OnnxModel } from '../runtime/node.js';
import { CASCADE_DEFAULTS } from '../control/cascade.js';

const skip = browserSkipReason();
let browser: TestBrowser | null = null;
let dashboard: RunningDashboard | null = null;
let metadata: OnnxMetadata;
let onnxFile: string;
/** Class names of the `xss` run's model: markup that must show as text. */
let hostileNames: string[];

before(async () => {
  if (skip) return;
  const runsDir = path.join(tempDir('dynn-demo-'), 'runs');
  const dir = path.join(runsDir, 'tiny');
  const recorder = progressRecorder(dir, { intervalMs: 0 });
  await trainTinyRun(dir, { epochs: 2, batchSize: 32, onStep: recorder.onStep, onEpoch: recorder.onEpoch });
  await recorder.close();
  await trainTinyRun(path.join(runsDir, 'vanilla'), { schedule: 'vanilla' });
  const { model } = await loadRun(dir);
  try {
    onnxFile = path.join(dir, RUN_FILES.onnx);
    const classNames = (await loadDataset('synthetic', { testLimit: 1 })).classNames;
    metadata = await saveOnnx(model, onnxFile, { classNames });
    // The same run with a model file from someone else: its class names carry markup.
    const xss = path.join(runsDir, 'xss');
    cpSync(dir, xss, { recursive: true });
    hostileNames = classNames.map((c, i) => (i % 2 ? `${c} <b>bold</b>` : `<img src=x onerror="window.__xss=(window.__xss||0)+1">${i}`));
    await saveOnnx(model, path.join(xss, RUN_FILES.onnx), { classNames: hostileNames });
    // The same model as exported before dynn stored a weights digest: it loads, unverified.
    const old = path.join(runsDir, 'unverified');
    cpSync(dir, old, { recursive: true });
    const m = ModelProto.decode(readFileSync(onnxFile));
    m.metadata_props = m.metadata_props.filter((p: { key?: string | null }) => p.key !== 'dynn.weightsSha256');
    writeFileSync(path.join(old, RUN_FILES.onnx), ModelProto.encode(m).finish());
  } finally {
    model.dispose();
  }
  dashboard = await startDashboard({ runsDir, port: 0, samples: 8 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await dashboard?.close();
});

async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, name), fullPage: true });
}

interface Readout {
  u: string;
  flops: number;
  ms: number;
  prediction: string;
  controller: string;
  demo: { input: number[]; u: number; scores: number[] };
}

async function readout(page: Page): Promise<Readout> {
  return page.evaluate(() => {
    const el = (id: string) => document.getElementById(id)!;
    return {
      u: el('u-value').textContent ?? '',
      flops: Number(el('flops').dataset.flops),
      ms: Number(el('latency').dataset.ms),
      prediction: el('prediction').textContent ?? '',
      controller: el('controller-status').textContent ?? '',
      demo: (window as unknown as { dynnDemo: Readout['demo'] }).dynnDemo,
    };
  });
}

/** Waits until the readout shows a result for utilization `u` (the level's own u as text). */
async function waitForU(page: Page, u: number): Promise<void> {
  await page.waitForFunction((text) => document.getElementById('u-value')?.textContent === text && document.getElementById('status')?.textContent === 'ready', u.toFixed(3), { timeout: 20_000 });
}

test('the dashboard lists the runs in the browser', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/');
  assert.deepEqual(await page.$$eval('tr[data-run]', (rows) => rows.map((r) => (r as HTMLElement).dataset.run)), ['tiny', 'unverified', 'vanilla', 'xss']);
  await shot(page, 'dashboard.png');
  await page.click('tr[data-run="tiny"] a[href$="/live"]');
  await page.waitForSelector('figure.chart svg');
  assert.deepEqual(await page.$$eval('figure.chart', (f) => f.map((x) => (x as HTMLElement).dataset.chart)), ['live-loss', 'live-speed', 'training-loss', 'training-accuracy', 'training-speed']);
  assert.match((await page.locator('#live-state').textContent()) ?? '', /^done: epoch 2 \/ 2, step 8 \/ 8/);
  await shot(page, 'dashboard-live.png');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the demo runs the ONNX model in the browser: the u slider changes u, FLOPs and measured latency', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/runs/tiny/demo');
  const top = metadata.levels[metadata.levels.length - 1];
  await waitForU(page, top.u);
  const first = await readout(page);
  assert.match(first.prediction, /^pattern \d \(\d+\.\d%\)$/);
  assert.equal(first.flops, top.flops);
  assert.ok(first.ms > 0);

  const low = metadata.levels[levelIndexFor(metadata.levels, 0.3)];
  assert.notEqual(low.u, top.u);
  await page.locator('#u-slider').fill('0.3');
  await waitForU(page, low.u);
  const second = await readout(page);
  assert.equal(second.flops, low.flops, 'the FLOPs of the level the slider selects');
  assert.ok(second.flops < first.flops);
  assert.notEqual(second.ms, first.ms, 'latency measured again');
  assert.match(second.prediction, /^pattern \d/);

  // The same input and u through onnxruntime-node: the browser ran the same model.
  const node = await OnnxModel.load(onnxFile, { threads: 1 });
  try {
    const p = await node.run(Float32Array.from(second.demo.input), second.demo.u);
    assert.equal(p.u, low.u);
    p.scores.forEach((s, i) => assert.ok(Math.abs(s - second.demo.scores[i]) < 1e-4, `score ${i}: node ${s}, browser ${second.demo.scores[i]}`));
  } finally {
    await node.dispose();
  }
  await shot(page, 'demo.png');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the controller switch hands u to the confidence cascade', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/runs/tiny/demo');
  await waitForU(page, metadata.levels[metadata.levels.length - 1].u);
  await page.locator('#threshold').fill('0.999');
  await page.locator('#controller-toggle').check();
  await page.waitForFunction(() => /^cascade/.test(document.getElementById('controller-status')?.textContent ?? ''), null, { timeout: 20_000 });
  const r = await readout(page);
  const stages = [...new Set(CASCADE_DEFAULTS.stages.map((u) => levelIndexFor(metadata.levels, u)))].map((i) => metadata.levels[i]);
  // The cascade's rule: stages in turn until the top probability reaches the threshold; every stage run is paid for.
  const tried = [...r.controller.matchAll(/u=([\d.]+) p=([\d.]+)/g)].map((m) => ({ u: Number(m[1]), p: Number(m[2]) }));
  assert.ok(tried.length >= 1 && tried.length <= stages.length);
  tried.forEach((t, i) => assert.equal(t.u, Number(stages[i].u.toFixed(2))));
  tried.slice(0, -1).forEach((t) => assert.ok(t.p <= 0.999));
  if (tried.length < stages.length) assert.ok(tried[tried.length - 1].p >= 0.99);
  assert.equal(r.demo.u, stages[tried.length - 1].u);
  assert.equal(r.flops, stages.slice(0, tried.length).reduce((a, l) => a + l.flops, 0));
  assert.deepEqual(errors, []);
  await page.close();
});

test('class names from the model file show as text in the demo: their markup never runs', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/runs/xss/demo');
  await waitForU(page, metadata.levels[metadata.levels.length - 1].u);
  const shown = await page.$$eval('#probs .name', (els) => els.map((e) => e.textContent ?? ''));
  assert.deepEqual([...shown].sort(), [...hostileNames].sort());
  assert.equal(await page.$$eval('#probs img, #probs b, #prediction img', (els) => els.length), 0, 'no element made from a class name');
  assert.ok(hostileNames.includes((await page.locator('#prediction').textContent())!.replace(/ \(\d+\.\d%\)$/, '')));
  assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined, 'no script from a class name ran');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the demo says in one line of text when the model it runs is unverified', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/runs/unverified/demo');
  await waitForU(page, metadata.levels[metadata.levels.length - 1].u);
  const note = page.locator('#verify-note');
  assert.ok(await note.isVisible());
  assert.equal(await note.textContent(), 'unverified model: the model was exported before dynn stored a weights digest');
  await page.goto(dashboard!.url + '/runs/tiny/demo');
  await waitForU(page, metadata.levels[metadata.levels.length - 1].u);
  assert.equal(await page.locator('#verify-note').isVisible(), false, 'no note for a verified model');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the demo page of a run without model.onnx says how to make one', { skip }, async () => {
  const { page, errors } = await browser!.page();
  await page.goto(dashboard!.url + '/runs/vanilla/demo');
  assert.match((await page.locator('#no-model').textContent()) ?? '', /dynn export \S+vanilla --onnx \S+vanilla\/model\.onnx/);
  assert.deepEqual(errors, []);
  await page.close();
});
