// The split head in Chromium: the page `dynn serve DIR` serves for a split folder runs head.onnx in onnxruntime-web
// and sends its frames to that same server's tail; its classes and bytes are the node head's.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { initEngine } from '../engine/backend.js';
import { loadDataset } from '../data/datasets.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { nhwcToNchw } from '../runtime/core.js';
import { mkdirSync } from 'node:fs';
import { ARTIFACTS_DIR, browserSkipReason, launchBrowser, type Page, type TestBrowser } from '../report/browser.js';
import { tempDir } from '../report/fixtures.js';
import { tinySplit } from './fixtures.js';
import { runHead } from './head.js';
import { SplitHead, SplitTail } from './runtime.js';
import { bytesPerSample } from './wire.js';
import type { PageState } from './head-page.js';

const skip = browserSkipReason();
const main = path.join(path.dirname(fileURLToPath(import.meta.url)), '../cli/main.js');
let browser: TestBrowser | null = null;
let serve: ChildProcess | null = null;
let url = '';
let dir = '';
/** The test images the page offers: the split's data set as the server loads it for the page. */
let shown: ImageSet;
let classNames: string[];


before(async () => {
  if (skip) return;
  await initEngine('wasm');
  dir = tempDir('dynn-split-web-');
  await tinySplit(dir);
  const data = await loadDataset('synthetic', { trainLimit: 1, testLimit: 16 });
  shown = data.test;
  classNames = data.classNames;
  // A real `dynn serve DIR`, in its own process, as a user starts it.
  serve = spawn(process.execPath, [main, 'serve', dir, '--port', '0', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: serve!.stdout! }).once('line', resolve);
    serve!.once('exit', (code) => reject(new Error(`dynn serve exited with ${code}`)));
  });
  url = (JSON.parse(line) as { url: string }).url;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  if (serve && serve.exitCode === null) {
    const exited = new Promise((resolve) => serve!.once('exit', resolve));
    serve.kill('SIGTERM');
    await exited;
  }
});

/** The page's state once its last run ended (`runs` reached `n`). */
async function afterRun(page: Page, n: number): Promise<PageState> {
  await page.waitForFunction((k) => (window as unknown as { dynnSplit?: PageState }).dynnSplit?.runs === k, n, { timeout: 30_000 });
  return page.evaluate(() => (window as unknown as { dynnSplit: PageState }).dynnSplit);
}

async function open(): Promise<{ page: Page; errors: string[] }> {
  const { page, errors } = await browser!.page();
  await page.goto(url + '/');
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'ready', null, { timeout: 30_000 });
  return { page, errors };
}

/** A test image as a PNG file, grey 8-bit. */
function png(i: number): Buffer {
  const p = new PNG({ width: shown.width, height: shown.height, colorType: 0, inputColorType: 0, inputHasAlpha: false });
  const per = shown.width * shown.height;
  p.data = Buffer.from(shown.images.subarray(i * per, (i + 1) * per));
  return PNG.sync.write(p, { colorType: 0, inputColorType: 0, inputHasAlpha: false });
}

test('the browser head sends every test image through the chosen bottleneck: the classes and bytes of the node head and of the split run in one process', { skip }, async () => {
  const { page, errors } = await open();
  assert.equal(await page.locator('#samples canvas').count(), 16);
  const value = await page.$$eval('#point option', (os) => os.find((o) => o.textContent!.startsWith('2 ch x 4 bit:'))?.getAttribute('value'));
  await page.locator('#point').selectOption(value!);
  await page.click('#send-all');
  const s = await afterRun(page, 1);
  assert.equal(s.error, null);
  assert.equal(s.rows.length, 16);
  const node = await runHead({ dir, server: url, images: shown, channels: 2, bits: 4 });
  assert.deepEqual(s.rows.map((r) => r.class), node.classes);
  // The same bottleneck in one process: head.onnx then tail.onnx in onnxruntime-node, no wire.
  const h = await SplitHead.load(dir);
  const t = await SplitTail.load(dir);
  try {
    const scores = await t.run(await h.run(nhwcToNchw(toFloat(shown, 0, 16), [1, 28, 28]), 16, 2, 4));
    const local = Array.from({ length: 16 }, (_, i) => {
      const row = Array.from(scores.subarray(i * 10, (i + 1) * 10));
      return row.indexOf(Math.max(...row));
    });
    assert.deepEqual(s.rows.map((r) => r.class), local);
  } finally {
    await h.release();
    await t.release();
  }
  for (const [i, r] of s.rows.entries()) {
    assert.equal(r.bytes, 16 + bytesPerSample(2, 7, 7, 4));
    assert.deepEqual([r.channels, r.bits, r.className, r.label], [2, 4, classNames[r.class], classNames[shown.labels[i]]]);
    assert.ok(r.headMs > 0 && r.tailMs !== null && r.tailMs >= 0 && r.httpMs >= 0 && r.totalMs >= r.headMs + r.tailMs);
  }
  assert.equal(await page.locator('#results tbody tr').count(), 16);
  assert.match((await page.locator('#summary').textContent()) ?? '', /^16 frame\(s\): 73\.00 B a frame \(the image itself: 784 B raw\); mean ms: head [\d.]+, link [\d.]+, HTTP [\d.]+, tail [\d.]+, total [\d.]+; \d+ of 16 labelled image\(s\) right$/);

  // A picked file: the same pixels as test image 5, so the same class; a file that is no image is an error in the page.
  await page.setInputFiles('#files', { name: 'five.png', mimeType: 'image/png', buffer: png(5) });
  const picked = await afterRun(page, 2);
  assert.deepEqual([picked.rows[16].name, picked.rows[16].label, picked.rows[16].class], ['five.png', null, node.classes[5]]);
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, 'split-head.png'), fullPage: true });
  await page.setInputFiles('#files', { name: 'junk.png', mimeType: 'image/png', buffer: Buffer.from('not a png') });
  await page.waitForFunction(() => /junk\.png is not an image this browser can decode/.test(document.getElementById('status')?.textContent ?? ''));
  assert.deepEqual(errors, []);
  await page.close();
});

test('with a latency budget the page probes the smallest and the largest bottleneck, then NaviSplit picks; the shaped link waits', { skip }, async () => {
  const { page, errors } = await open();
  await page.locator('#point').selectOption('budget');
  await page.locator('#bandwidth').fill('1');
  await page.locator('#delay').fill('2');
  await page.locator('#budget').fill('1000');
  await page.click('#send-all');
  const s = await afterRun(page, 1);
  assert.equal(s.error, null);
  const sizes = s.rows.map((r) => r.bytes);
  assert.equal(sizes[0], Math.min(...sizes));
  assert.equal(sizes[1], Math.max(...sizes));
  // 1 Mbit/s is 125 bytes a ms: every frame waits its bytes at that rate plus the 2 ms delay (timers fire late, never early).
  for (const r of s.rows) assert.ok(r.linkMs >= 2 + r.bytes / 125 - 0.5, `link ${r.linkMs} ms for ${r.bytes} B`);
  // A budget every point meets: after the probes, the most accurate point.
  const points = (await (await fetch(new URL('/v1/split', url))).json()) as { points: { channels: number; bits: number; accuracy: number }[] };
  const best = points.points.reduce((a, p) => (p.accuracy > a.accuracy ? p : a));
  assert.deepEqual([s.rows[15].channels, s.rows[15].bits], [best.channels, best.bits]);
  await page.locator('#bandwidth').fill('-3');
  await page.click('#send-all');
  const bad = await afterRun(page, 2);
  assert.match(bad.error ?? '', /bandwidth must be a positive number of Mbit\/s, got -3/);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a bad tail answer is an error in the page, not a crash; labels from the answer show as text', { skip }, async () => {
  const { page, errors } = await open();
  const answers = [
    { status: 200, contentType: 'text/html', body: '<html>proxy error</html>' },
    { status: 500, contentType: 'application/json', body: '{"error":"internal","message":"internal error"}' },
    { status: 200, contentType: 'application/json', body: '{"classes":[1]}' },
  ];
  const patterns = [/answered 200 with something that is not JSON/, /answered 500: \{"error":"internal"/, /not with the tail's answer for 1 sample\(s\): labels/];
  let next = 0;
  await page.route('**/v1/tail', (route) => route.fulfill(answers[next]));
  for (const [i, pattern] of patterns.entries()) {
    next = i;
    await page.locator('#samples canvas').first().click();
    const s = await afterRun(page, i + 1);
    assert.match(s.error ?? '', pattern);
    assert.match((await page.locator('#status').getAttribute('class')) ?? '', /error/);
    assert.equal(s.rows.length, 0);
  }
  // A label with markup: text in the table, never an element.
  const hostile = '<img src=x onerror="window.__xss=1">';
  await page.unroute('**/v1/tail');
  await page.route('**/v1/tail', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ classes: [3], labels: [hostile], scores: [[0]], timings: { tailMs: 0.5 } }) }));
  await page.locator('#samples canvas').first().click();
  const s = await afterRun(page, 4);
  assert.equal(s.error, null);
  assert.equal(await page.locator('#results td.class').first().textContent(), hostile);
  assert.equal(await page.locator('#results img').count(), 0);
  assert.equal(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss), undefined);
  // The real tail again: the page goes on.
  await page.unroute('**/v1/tail');
  await page.locator('#samples canvas').nth(1).click();
  const again = await afterRun(page, 5);
  assert.equal(again.error, null);
  assert.equal(again.rows.length, 2);
  // Chromium logs each refused request (the 500) as a console error; nothing else may be logged.
  assert.deepEqual(errors.filter((e) => !/Failed to load resource: the server responded with a status of 500/.test(e)), []);
  await page.close();
});
