import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { buildReport, gatherRuns, writeReport, sections, RUN_FILES, pageHtml } from './index.js';
import { tempDir, trainTinyDynamicRun, trainTinyRun } from './fixtures.js';
import { loadRun } from '../train/run.js';
import { loadDataset } from '../data/datasets.js';
import { evaluateRouted, type RoutedEval } from '../eval/routed.js';

let root: string;
let run: string;
let sweepText: string;

before(async () => {
  root = tempDir('dynn-dynamic-report-');
  run = path.join(root, 'acs');
  await trainTinyDynamicRun(run);
  sweepText = readFileSync(path.join(run, RUN_FILES.sweep), 'utf8');
});

/** A copy of the run whose sweep file is `edit` of the real one (or `text` as given). */
function withSweep(name: string, edit: ((s: Record<string, any>) => void) | string): string {
  const dir = path.join(root, name);
  cpSync(run, dir, { recursive: true });
  let text = edit as string;
  if (typeof edit === 'function') {
    const s = JSON.parse(sweepText);
    edit(s);
    text = JSON.stringify(s);
  }
  writeFileSync(path.join(dir, RUN_FILES.sweep), text);
  return dir;
}

/** The body of one report section. */
function section(html: string, name: string): string {
  const m = html.match(new RegExp(`<section id="sec-${name}" data-section="${name}" data-available="(true|false)">([\\s\\S]*?)</section>`));
  assert.ok(m, `section ${name}`);
  return m[0];
}

test('the report of a dynamic run draws its threshold sweep: accuracy vs FLOPs, FLOPs histogram, skip rates, per-class compute', async () => {
  const runs = await gatherRuns([run], { sweep: false });
  const d = runs[0].dynamic!;
  assert.deepEqual(d.points.map((p) => p.threshold), [0.5, 0, 1]);
  assert.equal(d.trained.threshold, 0.5, 'the trained threshold, recorded by dynn sweep');
  const report = await buildReport(runs);
  const s = report.sections.find((x) => x.name === 'dynamic')!;
  assert.ok(s.available);
  assert.deepEqual(s.charts, ['dynamic-accuracy-flops', 'dynamic-histogram-acs', 'dynamic-skips-acs', 'dynamic-class-flops-acs', 'dynamic-class-accuracy-acs', 'dynamic-class-skips-acs']);
  const body = section(report.html, 'dynamic');
  assert.equal((body.match(/<figure class="chart"[\s\S]*?<path[^>]* d="M/g) ?? []).length, 6, 'every chart draws marks');
  // Reference values: the trained threshold evaluated again, independently of the sweep file.
  const { model } = await loadRun(run);
  const data = await loadDataset('synthetic', { testLimit: 32 });
  let e: RoutedEval;
  try {
    e = evaluateRouted(model, data.test, { threshold: 0.5 });
  } finally {
    model.dispose();
  }
  assert.ok(body.includes(`<td>0.5 (trained)</td><td>${(100 * e.accuracy).toFixed(2)}%</td><td>${e.flopsRatio.toFixed(3)}</td>`), 'the trained row holds its accuracy and FLOPs ratio');
  const bins = Array.from(body.matchAll(/<tr><td>(0\.\d-\d\.\d|0\.9\+)<\/td><td>(\d+)<\/td>/g), (m) => Number(m[2]));
  assert.equal(bins.length, 10);
  assert.deepEqual(bins, d.trained.histogram);
  assert.equal(bins.reduce((a, b) => a + b, 0), 32);
  const expected = Array.from({ length: 10 }, (_, i) => e.sampleRatios.filter((r) => Math.min(9, Math.floor(r * 10)) === i).length);
  assert.deepEqual(bins, expected, 'the histogram counts each sample’s own FLOPs ratio');
  // Threshold 0 skips nothing and threshold 1 skips every group, in all 18 gated blocks.
  const skipRows = Array.from(body.matchAll(/<tr><td>(s\d\.b\d)<\/td><td>([^<]+)<\/td><td>([^<]+)<\/td><td>([^<]+)<\/td><\/tr>/g));
  assert.equal(skipRows.length, 18);
  for (const [, , , open, closed] of skipRows) assert.deepEqual([open, closed], ['0.00%', '100.00%']);
  for (let c = 0; c < 10; c++) {
    const cell = `<td>pattern ${c}</td><td>${Number.isFinite(e.classFlops[c]) ? e.classFlops[c].toFixed(3) : '-'}</td><td>${Number.isFinite(e.perClassAccuracy[c]) ? (100 * e.perClassAccuracy[c]).toFixed(2) + '%' : '-'}</td>`;
    assert.ok(body.includes(cell), `class ${c}: ${cell}`);
  }
  // Which blocks each class skips: one row per class, a cell per gated block, as evaluated again.
  const grid = body.match(/<caption>[^<]*groups skipped per class and block[\s\S]*?<\/table>/)![0];
  for (let c = 0; c < 10; c++) {
    const cells = Object.keys(e.skipRates).map((b) => (Number.isFinite(e.classSkipRates[b][c]) ? `${(100 * e.classSkipRates[b][c]).toFixed(2)}%` : '-'));
    assert.ok(grid.includes(`<tr><td>pattern ${c}</td>${cells.map((x) => `<td>${x}</td>`).join('')}</tr>`), `class ${c}`);
  }
  assert.match(body, /the backbone&#39;s u-curve is not drawn \(not measured, and sweep\.json holds the gates&#39; threshold sweep\)/);
  assert.match(body, /dynn sweep \S+acs --thresholds 0,1 --test-limit 32 --json &gt; \S+sweep\.json/);
});

test('with the backbone measured at fixed u, its curve sits beside the gates’ on the same FLOPs axis', async () => {
  const runs = await gatherRuns([run], { us: [0.5, 1], testLimit: 32, latency: false });
  assert.equal(runs[0].sweep?.source.kind, 'computed');
  const spec = sections.get('dynamic').render(runs).charts[0].spec as { data: { values: { series: string; label: string; flopsRatio: number }[] } };
  const rows = spec.data.values;
  assert.deepEqual([...new Set(rows.map((r) => r.series))], ['acs · gates', 'acs · backbone, no gate', 'acs · backbone at fixed u']);
  // At u = 1 the backbone runs every channel and no gate: ratio 1 like the backbone's own point, not 1 plus the gates' share.
  const u1 = rows.find((r) => r.label === 'u=1.000')!;
  assert.ok(Math.abs(u1.flopsRatio - 1) < 1e-5, String(u1.flopsRatio));
  const open = rows.find((r) => r.label === 'threshold 0')!;
  assert.ok(open.flopsRatio > 1, 'threshold 0 runs every channel and the gates');
});

test('--save-sweep does not write the backbone’s u-sweep over the threshold sweep', async () => {
  const dir = withSweep('save', (s) => s);
  const before = readFileSync(path.join(dir, RUN_FILES.sweep), 'utf8');
  const messages: string[] = [];
  const runs = await gatherRuns([dir], { us: [1], testLimit: 16, latency: false, saveSweep: true, onProgress: (m) => messages.push(m) });
  assert.ok(runs[0].sweep && runs[0].dynamic);
  assert.equal(readFileSync(path.join(dir, RUN_FILES.sweep), 'utf8'), before);
  assert.ok(messages.some((m) => /not saved: sweep\.json holds the gates' threshold sweep/.test(m)));
});

test('a corrupt or foreign threshold sweep fails the report with a message naming the file and the field', async () => {
  const out = path.join(root, 'keep.html');
  const old = pageHtml('old', 'old report');
  writeFileSync(out, old);
  const cases: [string, ((s: Record<string, any>) => void) | string, RegExp][] = [
    ['not-json', '{"model": "resnet38", "dynamic": ', /sweep\.json: not valid JSON .*expected a threshold sweep of a dynamic run/],
    ['bad-field', (s) => void (s.points[1].accuracy = 7), /sweep\.json: not a threshold sweep of a dynamic run .*: points\[1\]\.accuracy: .*remake it with `dynn sweep/],
    ['bad-histogram', (s) => void (s.points[0].histogram = [1, 2]), /points\[0\]\.histogram/],
    ['bad-classes', (s) => void s.points[2].classFlops.pop(), /points\[2\]\.classFlops: 9 classes, expected 10/],
    ['bad-class-skips', (s) => void s.points[0].classSkipRates['s0.b0'].pop(), /points\[0\]\.classSkipRates\.s0\.b0: 9 classes, expected 10/],
    ['foreign-block', (s) => void (s.points[0].classSkipRates.nowhere = s.points[0].classSkipRates['s0.b0']), /points\[0\]\.classSkipRates\.nowhere: a block with no skip rate/],
    ['no-points', (s) => void (s.points = []), /points: /],
    ['foreign', (s) => void (s.dynamic = 'acs-dg'), /a threshold sweep of resnet38 with acs-dg gates, but the run is resnet38 with acs-gn gates/],
    ['other data', (s) => void (s.dataset = 'mnist'), /a threshold sweep on mnist \(\d+ classes\), but the run trained on \S+ \(\d+ classes\)/],
    ['array', '[1, 2]', /not a threshold sweep of a dynamic run .*\(root\)/],
    ['bad-routes', (s) => void (s.points[0].routes = { sw: [[1, 0]] }), /points\[0\]\.routes\.sw: 1 classes, expected 10/],
  ];
  for (const [name, edit, pattern] of cases) {
    await assert.rejects(writeReport([withSweep(name, edit)], out, { sweep: false }), pattern, name);
  }
  assert.equal(readFileSync(out, 'utf8'), old);
  // Leniently (the dashboard), the section says what is wrong and the rest of the report stands.
  const lenient = await gatherRuns([path.join(root, 'bad-field')], { sweep: false, lenient: true });
  const report = await buildReport(lenient);
  const s = report.sections.find((x) => x.name === 'dynamic')!;
  assert.equal(s.available, false);
  assert.match(s.missing!, /bad-field: .*sweep\.json: not a threshold sweep .*points\[1\]\.accuracy/);
  assert.ok(report.sections.find((x) => x.name === 'training')!.available);
});

test('a switch’s routes per class (multi-branch, resolution, width) draw as a stacked chart and a class x route table', async () => {
  const dir = withSweep('routes', (s) => {
    for (const p of s.points) p.routes = { sw: s.classNames.map((_: string, c: number) => (c % 2 ? [0.25, 0.75] : [1, 0])) };
  });
  const runs = await gatherRuns([dir], { sweep: false });
  const report = await buildReport(runs);
  const s = report.sections.find((x) => x.name === 'dynamic')!;
  assert.ok(s.charts.includes('dynamic-routes-routes-sw'));
  const body = section(report.html, 'dynamic');
  assert.match(body, /which route each class took at sw/);
  assert.match(body, /<td>[^<]*<\/td><td>25\.00%<\/td><td>75\.00%<\/td>/);
});

test('a u-sweep beside a dynamic run draws as its backbone; a threshold sweep beside a static run is refused', async () => {
  const dir = withSweep('u-sweep', JSON.stringify({ model: 'resnet38', dataset: 'synthetic', points: [{ u: 1, accuracy: 0.5, perClassAccuracy: [0.5], flops: 1e6, flopsRatio: 1, params: 1, latencyMs: { batch1: null, batch128: null } }] }));
  const [r] = await gatherRuns([dir], { sweep: false });
  assert.equal(r.dynamic, null);
  assert.match(r.dynamicMissing!, /holds the backbone's sweep over u, not the gates' threshold sweep/);
  assert.equal(r.sweep?.points.length, 1);
  const plain = path.join(root, 'plain');
  await trainTinyRun(plain, { trainLimit: 64, testLimit: 20 });
  writeFileSync(path.join(plain, RUN_FILES.sweep), sweepText);
  await assert.rejects(gatherRuns([plain], { sweep: false }), /sweep\.json: a threshold sweep of a model with gates, but \S+plain has none/);
  const report = await buildReport(await gatherRuns([plain], { sweep: false, lenient: true }));
  assert.match(report.sections.find((x) => x.name === 'dynamic')!.missing!, /no run is dynamic/);
});

const EVIL = '<img src=x onerror=alert(1)>';

test('text from the sweep file is escaped in the report: class names, block names', async () => {
  const dir = withSweep('hostile', (s) => {
    s.classNames[3] = EVIL;
    s.classNames[4] = `</script>${EVIL}`;
    const rename = <T>(rates: Record<string, T>) => Object.fromEntries(Object.entries(rates).map(([k, v], i) => [i === 0 ? EVIL : k, v]));
    for (const p of s.points) {
      p.skipRates = rename(p.skipRates);
      p.classSkipRates = rename(p.classSkipRates);
    }
  });
  const html = (await buildReport(await gatherRuns([dir], { sweep: false }))).html;
  assert.ok(!html.includes('<img src=x'), 'markup from the sweep file');
  assert.ok(!html.includes('</script><img'), 'a script element closed by the sweep file');
  assert.match(html, /<td>&lt;img src=x onerror=alert\(1\)&gt;<\/td><td>[\d.]+<\/td>/, 'the class name, shown as typed');
  assert.match(html, /&lt;img src=x onerror=alert\(1\)&gt;/);
});

test('gathering and drawing a dynamic run leaves no tensors behind', async () => {
  const before = tf.memory().numTensors;
  await buildReport(await gatherRuns([run], { us: [1], testLimit: 8, latency: false }));
  assert.equal(tf.memory().numTensors, before);
});
