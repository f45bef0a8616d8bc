import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { cpSync } from 'node:fs';
import { buildReport, gatherRuns, writeReport, sections, SECTION_ORDER, RUN_FILES, trainCommandLine, pageHtml } from './index.js';
import { tempDir, trainTinyRun, writeCompanions } from './fixtures.js';
import { readCheckpointInfo, trainedModelArgs } from '../checkpoint/checkpoint.js';
import { loadRun, type TrainMeta } from '../train/run.js';
import { loadDataset } from '../data/datasets.js';
import { evaluate } from '../eval/evaluate.js';
import { buildCli, runCli } from '../cli/cli.js';
import { trainOptionsFrom } from '../cli/commands.js';
import { resolveModelArgs } from '../models/registry.js';
import '../models/zoo.js'; // registers the models resolveModelArgs reads
import type { ModelArgs } from '../models/types.js';
import { captureIo } from '../cli/capture.js';
import * as tf from '@tensorflow/tfjs-core';

let root: string;
let run: string;

before(async () => {
  root = tempDir();
  run = path.join(root, 'tiny');
  await trainTinyRun(run);
});

/** The data-section attributes and chart counts of a report page. */
function sectionsOf(html: string): Map<string, { available: boolean; charts: number; body: string }> {
  const out = new Map<string, { available: boolean; charts: number; body: string }>();
  for (const m of html.matchAll(/<section id="sec-[^"]+" data-section="([^"]+)" data-available="(true|false)">([\s\S]*?)<\/section>/g)) {
    out.set(m[1], { available: m[2] === 'true', charts: (m[3].match(/<figure class="chart"/g) ?? []).length, body: m[3] });
  }
  return out;
}

test('a report of a run draws every section whose data exists, with SVG charts, and says what is missing elsewhere', async () => {
  const out = path.join(root, 'report.html');
  const report = await writeReport([run], out, { testLimit: 120, latency: true });
  const html = readFileSync(out, 'utf8');
  const found = sectionsOf(html);
  assert.deepEqual([...found.keys()], SECTION_ORDER);
  for (const name of ['training', 'accuracy-u', 'accuracy-flops', 'latency-u', 'per-class']) {
    assert.equal(found.get(name)?.available, true, name);
    assert.ok(found.get(name)!.charts >= 1, name);
  }
  for (const [name, hint] of [['u-distribution', /dynn eval RUN --controller/], ['gates', /dynn gates train/], ['exits', /--thresholds/]] as const) {
    assert.equal(found.get(name)?.available, false, name);
    assert.match(found.get(name)!.body, /Not available\./);
    assert.match(found.get(name)!.body, hint);
  }
  for (const svg of html.match(/<figure class="chart"[\s\S]*?<\/figure>/g) ?? []) {
    assert.match(svg, /<svg[^>]*width="\d+"/);
    assert.match(svg, /<path[^>]* d="M/, 'every chart draws marks');
  }
  assert.deepEqual(report.sections.filter((s) => s.available).map((s) => s.name), ['training', 'accuracy-u', 'accuracy-flops', 'latency-u', 'per-class']);
  // Nothing to fetch: no scripts with a source, no stylesheet links, no URLs but the SVG namespaces.
  assert.doesNotMatch(html, /<script[^>]+src=/);
  assert.doesNotMatch(html, /<link[^>]+stylesheet/);
  const urls = (html.match(/https?:\/\/[^\s"'<>)]+/g) ?? []).filter((u) => !/^http:\/\/www\.w3\.org\//.test(u));
  assert.deepEqual(urls, []);
});

test('the accuracy table of a computed sweep matches an independent evaluation of the run', async () => {
  const runs = await gatherRuns([run], { testLimit: 150, latency: false, us: [0.5, 1] });
  const report = await buildReport(runs);
  const { model } = await loadRun(run);
  const data = await loadDataset('synthetic', { testLimit: 150 });
  try {
    for (const u of [0.5, 1]) {
      const acc = evaluate(model, data.test, u).accuracy;
      const cell = `<td>${u.toFixed(3)}</td><td>${(100 * acc).toFixed(2)}%</td>`;
      assert.ok(report.html.includes(cell), `accuracy at u=${u}: expected ${cell}`);
    }
  } finally {
    model.dispose();
  }
  assert.equal(runs[0].sweep?.testSamples, 150);
  assert.match(runs[0].sweep!.command, /^dynn sweep \S+ --u 0\.5,1 --dataset synthetic --gating nested --test-limit 150 --no-latency --json$/);
  const latency = report.sections.find((s) => s.name === 'latency-u')!;
  assert.equal(latency.available, false, 'no latency measured, no latency chart');
});

test('the Pareto front marks exactly the points no other point beats at lower or equal FLOPs', async () => {
  const dir = path.join(root, 'pareto');
  cpSync(run, dir, { recursive: true });
  const pts = [
    [0.2, 1e5],
    [0.5, 2e5],
    [0.4, 3e5],
    [0.7, 4e5],
    [0.7, 5e5],
    [0.9, 6e5],
  ].map(([accuracy, flops], i) => ({ u: (i + 1) / 6, accuracy, perClassAccuracy: [accuracy], flops, flopsRatio: flops / 6e5, params: 1, latencyMs: { batch1: null, batch128: null } }));
  writeFileSync(path.join(dir, RUN_FILES.sweep), JSON.stringify({ model: 'mlp-w', dataset: 'synthetic', points: pts }));
  const runs = await gatherRuns([dir], { sweep: false });
  const content = sections.get('accuracy-flops').render(runs);
  const table = content.tables[0];
  const marked = table.rows.filter((r) => r[5] === '*').map((r) => r[2]);
  const expected = pts.filter((p) => !pts.some((q) => q !== p && q.flops <= p.flops && q.accuracy >= p.accuracy && (q.flops < p.flops || q.accuracy > p.accuracy))).map((p) => `u=${p.u.toFixed(3)}`);
  assert.deepEqual(marked, expected);
});

test('every section draws once its data source exists: controllers, gates, exits, ONNX latency', async () => {
  const dir = path.join(root, 'full', 'tiny');
  cpSync(run, dir, { recursive: true });
  await writeCompanions(dir);
  const runs = await gatherRuns([dir], { testLimit: 100 });
  assert.equal(runs[0].controllers.length, 2, 'eval file and controller checkpoint');
  assert.equal(runs[0].gates.length, 1);
  const report = await buildReport(runs);
  // Drawn from runs of other kinds: a dynamic run's threshold sweep (dynamic.test.ts), a CondConv run's routing (condconv.test.ts).
  for (const s of report.sections) if (s.name !== 'dynamic' && s.name !== 'condconv-routing') assert.ok(s.available, `${s.name}: ${s.missing ?? ''}`);
  assert.match(report.sections.find((s) => s.name === 'dynamic')!.missing!, /no run is dynamic \(`dynn train --dynamic NAME`\)/, 'drawn from a dynamic run’s threshold sweep (dynamic.test.ts)');
  const found = sectionsOf(report.html);
  assert.equal(found.get('u-distribution')!.charts, 2);
  assert.equal(found.get('gates')!.charts, 3, 'gates against nested, gate pattern, complexity');
  assert.equal(runs[0].gatesEvals[0]?.name, 'reinforce');
  assert.match(found.get('u-distribution')!.body, /oracle’s u distribution is not recorded/);
  assert.match(found.get('latency-u')!.body, /ONNX Runtime batch 64|ratio @64/);
  assert.match(report.html, /dynn eval \S+ --controller cascade --json &gt; \S+eval-cascade\.json/);
});

test('without a sweep file and with sweep: false, the sweep sections say what is missing and how to make it', async () => {
  const dir = path.join(root, 'nosweep');
  cpSync(run, dir, { recursive: true });
  const report = await buildReport(await gatherRuns([dir], { sweep: false }));
  const s = report.sections.find((x) => x.name === 'accuracy-u')!;
  assert.equal(s.available, false);
  assert.match(s.missing!, /dynn sweep \S+nosweep --json > \S+sweep\.json/);
  assert.ok(report.sections.find((x) => x.name === 'training')!.available);
});

test('saveSweep writes RUN/sweep.json and the next report reads it instead of measuring', async () => {
  const dir = path.join(root, 'saved');
  cpSync(run, dir, { recursive: true });
  const first = await gatherRuns([dir], { testLimit: 50, latency: false, us: [0.25, 1], saveSweep: true });
  assert.ok(existsSync(path.join(dir, RUN_FILES.sweep)));
  const second = await gatherRuns([dir], { sweep: false });
  assert.equal(second[0].sweep?.source.kind, 'file');
  assert.deepEqual(second[0].sweep!.points.map((p) => p.accuracy), first[0].sweep!.points.map((p) => p.accuracy));
  assert.ok(second[0].sweep!.points.every((p) => Number.isNaN(p.latencyMs.batch1)), 'null latency in JSON reads back as NaN');
  assert.deepEqual(second[0].sweep!.classNames, first[0].sweep!.classNames);
});

test('bad input fails with a clear error and leaves an existing report untouched', async () => {
  const out = path.join(root, 'keep.html');
  const old = pageHtml('old', 'old report');
  writeFileSync(out, old);
  await assert.rejects(writeReport([path.join(root, 'nope')], out), /nope/);
  const bad = path.join(root, 'bad');
  cpSync(run, bad, { recursive: true });
  writeFileSync(path.join(bad, RUN_FILES.sweep), '{"dataset": "synthetic", "points": [{"u": 2}]}');
  await assert.rejects(writeReport([bad], out, { sweep: false }), /sweep\.json: not a sweep .*points\.0/);
  writeFileSync(path.join(bad, RUN_FILES.sweep), '{oops');
  await assert.rejects(writeReport([bad], out, { sweep: false }), /sweep\.json: not valid JSON/);
  await assert.rejects(writeReport([path.join(root, 'full', 'tiny', 'ctrl')], out), /controller checkpoint, not a training run/);
  await assert.rejects(buildReport([], { sections: ['bogus'] }), /unknown report section "bogus"; expected one of/);
  await assert.rejects(gatherRuns([]), /no runs given/);
  assert.equal(readFileSync(out, 'utf8'), old);
});

test('the training command line read back by the CLI gives the options the run recorded', async () => {
  const info = await readCheckpointInfo(run);
  const meta = info.meta as unknown as TrainMeta;
  const line = trainCommandLine(run, meta, info.config.args);
  assert.match(line, /^dynn train /);
  const cli = buildCli(captureIo());
  const parsed = cli.parse(['node', 'dynn', ...line.split(' ').slice(1)], { run: false });
  const o = trainOptionsFrom(parsed.options);
  for (const key of ['model', 'dataset', 'trainLimit', 'epochs', 'batchSize', 'optimizer', 'lr', 'lrSchedule', 'schedule', 'gating', 'seed'] as const) {
    assert.deepEqual(o[key], meta.options[key], key);
  }
  assert.equal(o.modelArgs.groups, info.config.args.groups);
  assert.equal(parsed.options.out, run);
  // A run's channel rounding is part of what it trained.
  const rounded = trainCommandLine(run, meta, { ...info.config.args, channelMultiple: 16 });
  assert.equal(trainOptionsFrom(cli.parse(['node', 'dynn', ...rounded.split(' ').slice(1)], { run: false }).options).modelArgs.channelMultiple, 16);
  const stem = trainCommandLine(run, meta, { ...info.config.args, channelMultiple: 16, throttleStem: true });
  assert.match(stem, / --throttle-stem /);
  assert.equal(trainOptionsFrom(cli.parse(['node', 'dynn', ...stem.split(' ').slice(1)], { run: false }).options).modelArgs.throttleStem, true);
  const both = trainCommandLine(run, meta, { ...info.config.args, channelMultiple: 16, throttleBoth: true });
  assert.match(both, / --throttle-both /);
  assert.equal(trainOptionsFrom(cli.parse(['node', 'dynn', ...both.split(' ').slice(1)], { run: false }).options).modelArgs.throttleBoth, true);
  assert.doesNotMatch(line, /--throttle-stem|--throttle-both/);
});

test('a run\'s model arguments come back from its command line, for each kind of model the flags make', async () => {
  const meta = (await readCheckpointInfo(run)).meta as unknown as TrainMeta;
  const cli = buildCli(captureIo());
  const cases: [string, ModelArgs][] = [
    ['vgg-w', { groups: 4, channelMultiple: 16, throttleBoth: true }],
    ['vgg-w', { dynamic: 'width', widthRoutes: 3, gateWidth: 8 }],
    ['vgg-w', { dynamic: 'resolution', resolutions: [28, 21, 14] }],
    ['resnet38', { dynamic: 'acs-gn', gateScale: 2, decisions: 'channel' }],
    ['resnet-d', { dynamic: 'skip' }],
    ['resnet-d', { dynamic: 'spatial' }],
    ['mlp-moe', { experts: 6, topK: 2, switchWeight: 0.1, loadWeight: 0.5, overflow: 'residual', priority: 'batch', evalCapacityFactor: 2 }],
    ['vgg-moe', {}],
    ['vgg-condconv', { experts: 3, routing: 'softmax', temperature: 5, annealEpochs: 2 }],
    ['multi-branch', { branches: 'vgg-w:widths=4,4,8,8:hidden=16,vgg-w' }],
  ];
  for (const [model, args] of cases) {
    const resolved = resolveModelArgs(model, args);
    const line = trainCommandLine(run, { ...meta, options: { ...meta.options, model } }, resolved);
    const o = trainOptionsFrom(cli.parse(['node', 'dynn', ...line.split(' ').slice(1)], { run: false }).options);
    assert.equal(o.model, model);
    assert.deepEqual(resolveModelArgs(model, o.modelArgs), resolved, line);
  }
  // A mixture saved before its priority was recorded ran in batch order: its line says so (the default is score).
  const { priority: _, ...legacy } = resolveModelArgs('mlp-moe', {});
  assert.match(trainCommandLine(run, { ...meta, options: { ...meta.options, model: 'mlp-moe' } }, trainedModelArgs(legacy)), / --priority batch /);
});

test('an existing --out is replaced only when it is a page dynn wrote, or with --force; a folder is named as one', async () => {
  const out = path.join(root, 'guarded.html');
  writeFileSync(out, '{"format": "dynn-checkpoint"}');
  await assert.rejects(writeReport([run], out, { sweep: false }), /guarded\.html exists and is not a page dynn wrote; give another --out, or --force to replace it/);
  assert.equal(readFileSync(out, 'utf8'), '{"format": "dynn-checkpoint"}');
  const io = captureIo();
  assert.equal(await runCli(['compare', run, '--out', out], io), 1);
  assert.match(io.stderr(), /is not a page dynn wrote/);
  assert.equal(await runCli(['report', run, '--no-sweep', '--out', out, '--force'], captureIo()), 0);
  assert.match(readFileSync(out, 'utf8'), /^<!doctype html>/);
  // Its own page again (compare's pages are built the same way), without --force.
  await writeReport([run], out, { sweep: false });
  await assert.rejects(writeReport([run], root, { sweep: false }), /--out .* is a folder; give the HTML file to write/);
  // A run's own file, even with --force; a page from before the generator tag, by its title.
  await assert.rejects(writeReport([run], path.join(run, 'checkpoint.json'), { sweep: false, force: true }), /checkpoint\.json is a file of the run in/);
  writeFileSync(out, '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>dynn report: tiny</title>');
  await writeReport([run], out, { sweep: false });
});

test('dynn report writes the page and lists its sections; usage errors are clear', async () => {
  const io = captureIo();
  const out = path.join(root, 'cli.html');
  assert.equal(await runCli(['report', run, '--no-sweep', '--out', out], io), 0, io.stderr());
  assert.match(io.stdout(), /Training curves: 3 charts/);
  assert.match(io.stdout(), /Accuracy against utilization: not available/);
  assert.match(readFileSync(out, 'utf8'), /dynn report \S+tiny --no-sweep --out \S+cli\.html/);
  const json = captureIo();
  assert.equal(await runCli(['report', run, '--no-sweep', '--sections', 'training', '--out', out, '--json'], json), 0);
  assert.deepEqual(JSON.parse(json.stdout()).sections.map((s: { name: string }) => s.name), ['training']);
  const e1 = captureIo();
  assert.equal(await runCli(['report', run], e1), 1);
  assert.match(e1.stderr(), /report needs --out FILE/);
  const e0 = captureIo();
  assert.equal(await runCli(['report', '--out', out], e0), 1);
  assert.match(e0.stderr(), /report needs one or more run directories/);
  const e3 = captureIo();
  assert.equal(await runCli(['report', path.join(root, 'nope'), '--sections', 'training,bogus', '--out', out], e3), 1);
  assert.match(e3.stderr(), /unknown report section "bogus"/, 'sections are checked before any run is read');
  const e2 = captureIo();
  assert.equal(await runCli(['report', run, '--out', out, '--test-limit', '0'], e2), 1);
  assert.match(e2.stderr(), /--test-limit must be an integer >= 1/);
});

test('building reports leaves no tensors behind', async () => {
  const before = tf.memory().numTensors;
  await gatherRuns([run], { testLimit: 40, latency: false, us: [1] });
  assert.equal(tf.memory().numTensors, before);
});
