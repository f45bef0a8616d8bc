import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeReport, type SectionSummary } from './index.js';
import { tempDir, trainTinyDynamicRun, trainTinyRun, writeCompanions } from './fixtures.js';
import { ARTIFACTS_DIR, browserSkipReason, launchBrowser, type TestBrowser } from './browser.js';

const skip = browserSkipReason();
let browser: TestBrowser | null = null;
let root: string;

before(async () => {
  if (skip) return;
  root = tempDir();
  await trainTinyRun(path.join(root, 'tiny'));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** Opens a report file and returns, per chart, its marks and drawn size, plus the page's console errors. */
async function openReport(file: string, shot: string) {
  const { page, errors } = await browser!.page();
  await page.goto(pathToFileURL(file).href);
  const charts = await page.$$eval('figure.chart', (figs) =>
    figs.map((f) => {
      const svg = f.querySelector('svg');
      const box = svg?.getBoundingClientRect();
      return { id: (f as HTMLElement).dataset.chart ?? '', width: box?.width ?? 0, height: box?.height ?? 0, marks: svg ? svg.querySelectorAll('path, rect, line, text').length : 0 };
    }),
  );
  const missing = await page.$$eval('section[data-available="false"]', (s) => s.map((x) => (x as HTMLElement).dataset.section));
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS_DIR, shot), fullPage: true });
  await page.close();
  return { charts, missing, errors };
}

function expectedCharts(sections: SectionSummary[]): string[] {
  return sections.flatMap((s) => s.charts);
}

test('the report opens from a file and draws every chart it should, with no console error', { skip }, async () => {
  const out = path.join(root, 'report.html');
  const report = await writeReport([path.join(root, 'tiny')], out, { testLimit: 100 });
  const { charts, missing, errors } = await openReport(out, 'report.png');
  assert.deepEqual(errors, []);
  assert.deepEqual(charts.map((c) => c.id), expectedCharts(report.sections));
  for (const c of charts) {
    assert.ok(c.width > 100 && c.height > 80, `${c.id} is drawn (${c.width}x${c.height})`);
    assert.ok(c.marks > 20, `${c.id} has marks`);
  }
  assert.deepEqual(missing, ['condconv-routing', 'u-distribution', 'dynamic', 'gates', 'exits', 'compare']);
});

test('with every data source present, every section draws in the browser', { skip }, async () => {
  const dir = path.join(root, 'full', 'tiny');
  cpSync(path.join(root, 'tiny'), dir, { recursive: true });
  await writeCompanions(dir);
  const out = path.join(root, 'full.html');
  const report = await writeReport([dir], out, { testLimit: 100, latency: false });
  const { charts, missing, errors } = await openReport(out, 'report-all-sections.png');
  assert.deepEqual(errors, []);
  assert.deepEqual(missing, ['condconv-routing', 'dynamic'], 'every section but those of dynamic runs and of CondConv runs');
  assert.deepEqual(charts.map((c) => c.id), expectedCharts(report.sections));
  assert.ok(charts.every((c) => c.width > 100 && c.marks > 10));
});

test('a dynamic run’s report draws its threshold sweep in the browser', { skip }, async () => {
  const dir = path.join(root, 'acs');
  await trainTinyDynamicRun(dir);
  const out = path.join(root, 'dynamic.html');
  const report = await writeReport([dir], out, { sweep: false });
  const { charts, missing, errors } = await openReport(out, 'report-dynamic.png');
  assert.deepEqual(errors, []);
  assert.ok(!missing.includes('dynamic'));
  const drawn = charts.filter((c) => c.id.startsWith('dynamic-'));
  assert.deepEqual(drawn.map((c) => c.id), report.sections.find((s) => s.name === 'dynamic')!.charts);
  assert.equal(drawn.length, 6);
  for (const c of drawn) assert.ok(c.width > 100 && c.height > 80 && c.marks > 20, `${c.id} is drawn (${c.width}x${c.height}, ${c.marks} marks)`);
});
