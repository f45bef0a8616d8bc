import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildReport, gatherRuns, RUN_FILES } from './index.js';
import { compareRuns } from './compare.js';
import { tempDir, trainTinyDynamicRun, trainTinyRun } from './fixtures.js';
import { runCli } from '../cli/cli.js';
import { captureIo } from '../cli/capture.js';

let root: string;
let tiny: string;
let acs: string;
let skip: string;
const N = 32;

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = captureIo();
  const code = await runCli(args, io);
  return { code, out: io.stdout(), err: io.stderr() };
}

async function save(args: string[], file: string): Promise<void> {
  const r = await cli(args);
  assert.equal(r.code, 0, r.err);
  writeFileSync(file, r.out);
}

const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'));

/** A copy of `from` named `name` whose file `file` is `edit` of the original. */
function copyWith(from: string, name: string, file: string, edit: (s: Record<string, any>) => void): string {
  const dir = path.join(root, name);
  cpSync(from, dir, { recursive: true });
  const s = readJson(path.join(dir, file));
  edit(s);
  writeFileSync(path.join(dir, file), JSON.stringify(s));
  return dir;
}

before(async () => {
  root = tempDir('dynn-compare-');
  // A throttleable run with its u sweep, a cascade and the oracle, all on the first 32 synthetic test samples.
  tiny = path.join(root, 'tiny');
  await trainTinyRun(tiny);
  const limit = ['--test-limit', String(N)];
  await save(['sweep', tiny, ...limit, '--u', '0.25,0.5,0.75,1', '--no-latency', '--json'], path.join(tiny, RUN_FILES.sweep));
  await save(['eval', tiny, '--controller', 'cascade', '--stages', '0.25,1', ...limit, '--json'], path.join(tiny, `${RUN_FILES.evalPrefix}cascade.json`));
  await save(['eval', tiny, '--controller', 'oracle', ...limit, '--json'], path.join(tiny, `${RUN_FILES.evalPrefix}oracle.json`));
  writeFileSync(
    path.join(tiny, RUN_FILES.exitSweep),
    JSON.stringify({ model: 'mlp-w', dataset: 'synthetic', testSamples: N, rule: 'entropy', u: 1, exitAccuracy: [0.5, 0.7], baseline: { accuracy: 0.7, flops: 5e5 }, points: [0.1, 0.4].map((t, i) => ({ threshold: t, accuracy: 0.3 + 0.1 * i, flops: 1e5, flopsRatio: 0.4 + 0.4 * i, exitShares: [0.5, 0.5] })) }),
  );
  // A per-sample mechanism (ACS) with its threshold sweep on the same samples, as `dynn sweep` writes it.
  acs = path.join(root, 'acs');
  await trainTinyDynamicRun(acs);
  // Another mechanism, read the same way without a line of its own: a run and sweep under the name "skip",
  // made to lose against the u curve, with times.
  skip = copyWith(acs, 'skip', RUN_FILES.sweep, (s) => {
    s.dynamic = 'skip';
    s.points = s.points.map((p: Record<string, any>, i: number) => ({ ...p, accuracy: 0.01, flopsRatio: 0.2 + 0.3 * i, latencyMs: { batch1: 1 + i, batch64: 10 + 5 * i } }));
  });
  const manifest = readJson(path.join(skip, 'checkpoint.json'));
  manifest.config.args.dynamic = 'skip';
  writeFileSync(path.join(skip, 'checkpoint.json'), JSON.stringify(manifest));
});

/**
 * The accuracy a curve reaches within a FLOPs ratio: linear between the points no cheaper point beats (computed
 * here, apart from the code under test).
 */
function linear(points: { flopsRatio: number; accuracy: number }[], r: number): number {
  const p = [...points].sort((a, b) => a.flopsRatio - b.flopsRatio).filter((q, i, all) => all.slice(0, i).every((o) => o.accuracy < q.accuracy));
  if (r >= p[p.length - 1].flopsRatio) return p[p.length - 1].accuracy;
  const i = p.findIndex((q) => q.flopsRatio >= r);
  if (i === 0) return p[0].accuracy;
  const [a, b] = [p[i - 1], p[i]];
  return a.accuracy + ((b.accuracy - a.accuracy) * (r - a.flopsRatio)) / (b.flopsRatio - a.flopsRatio);
}

test('compare: every mechanism of every run on one test set, read from the files beside the runs; the table at 30/50/70%', async () => {
  const c = compareRuns(await gatherRuns([tiny, acs, skip], { sweep: false }));
  assert.equal(c.dataset, 'synthetic');
  assert.equal(c.testSamples, N);
  assert.deepEqual(
    c.series.map((s) => `${s.run} ${s.mechanism} ${s.family}`),
    ['tiny u curve u-curve', 'tiny exits (entropy) exits', 'tiny controller cascade controller', 'tiny oracle oracle', 'acs acs-gn per-sample', 'skip skip per-sample'],
  );
  const sweep = readJson(path.join(tiny, RUN_FILES.sweep));
  const oracle = readJson(path.join(tiny, `${RUN_FILES.evalPrefix}oracle.json`));
  for (const ratio of [0.3, 0.5, 0.7]) {
    const rows = c.table.filter((r) => r.ratio === ratio);
    assert.deepEqual(rows.map((r) => `${r.run} ${r.mechanism}`), ['tiny u curve', 'tiny exits (entropy)', 'acs acs-gn', 'skip skip']);
    const u = rows[0];
    assert.ok(Math.abs(u.accuracy! - linear(sweep.points, ratio)) < 1e-9, `u curve at ${ratio}`);
    assert.ok(Math.abs(u.oracle! - linear(oracle.oracle.curve, Math.min(ratio, oracle.oracle.curve.at(-1).flopsRatio))) < 1e-9, `oracle at ${ratio}`);
    // A mechanism without a u curve of its own is read against the compared runs' u curve.
    const s = rows[3];
    assert.equal(s.uCurveRun, 'tiny');
    assert.ok(s.vsCurve! < 0);
    assert.match(c.findings.join('\n'), new RegExp(`skip skip LOSES against the u curve of tiny at ${Math.round(100 * ratio)}%: 1\\.00% against`));
    const reached = rows.filter((r) => r.accuracy !== null);
    assert.equal(rows.filter((r) => r.wins).length, 1);
    assert.equal(rows.find((r) => r.wins)!.accuracy, Math.max(...reached.map((r) => r.accuracy!)));
  }
  // Below its cheapest point, a curve does not reach a ratio: said so, not invented.
  assert.equal(c.table.find((r) => r.ratio === 0.3 && r.mechanism === 'exits (entropy)')!.accuracy, null);
  assert.match(c.findings.join('\n'), /tiny exits \(entropy\) has no point as cheap as 30% of the full FLOPs/);
  // The cascade against the u curve at its own FLOPs ratio, the same verdict `dynn eval` gave.
  const cascade = readJson(path.join(tiny, `${RUN_FILES.evalPrefix}cascade.json`));
  assert.equal(c.controllers.length, 1);
  assert.equal(c.controllers[0].below, cascade.againstCurve.below);
  assert.equal(cascade.split, 'test');
  assert.equal(cascade.samples, N);
  assert.match(cascade.verdict, /^(BELOW the fixed-u curve|the cascade controller is .* points above the fixed-u curve)/);
});

test('compare refuses runs measured on other data or test sets, a folder that is not a run, a corrupt sweep file', async () => {
  const fewer = copyWith(tiny, 'fewer', RUN_FILES.sweep, (s) => (s.testSamples = N - 1));
  const runs = await gatherRuns([tiny, fewer], { sweep: false });
  assert.throws(() => compareRuns(runs), /different test sets/);
  const r1 = await cli(['compare', tiny, fewer]);
  assert.equal(r1.code, 1);
  assert.match(r1.err, /different test sets \(32 vs 31 samples\).*tiny u curve .*fewer u curve \([^)]*sweep\.json\): synthetic, 31 test samples/);
  const other = copyWith(acs, 'other', RUN_FILES.sweep, (s) => (s.dataset = 'mnist'));
  const r2 = await cli(['compare', tiny, other]);
  assert.equal(r2.code, 1);
  // The run's own sweep file names its data set: refused by the reader before the comparison.
  assert.match(r2.err, /sweep\.json: a threshold sweep on mnist .* but the run trained on synthetic/);
  const otherData = copyWith(tiny, 'other-data', RUN_FILES.sweep, (s) => (s.dataset = 'mnist'));
  const r3 = await cli(['compare', tiny, otherData]);
  assert.match(r3.err, /measured on different data sets; compare runs on one: .*other-data u curve .*: mnist/);
  const empty = path.join(root, 'not-a-run');
  mkdirSync(empty);
  const r4 = await cli(['compare', tiny, empty]);
  assert.equal(r4.code, 1);
  assert.match(r4.err, /no checkpoint\.json in .*not-a-run/);
  const corrupt = path.join(root, 'corrupt');
  cpSync(acs, corrupt, { recursive: true });
  writeFileSync(path.join(corrupt, RUN_FILES.sweep), '{"model": "resnet38", "dynamic": "acs-gn", "points": [');
  const r5 = await cli(['compare', corrupt]);
  assert.match(r5.err, /corrupt.sweep\.json: not valid JSON/);
  const partial = copyWith(acs, 'partial', RUN_FILES.sweep, (s) => delete s.points[0].flopsRatio);
  const r6 = await cli(['compare', partial]);
  assert.match(r6.err, /partial.sweep\.json: not a threshold sweep of a dynamic run .*points\[0\]\.flopsRatio/);
  // Values that would rank: a negative FLOPs ratio would win every budget; an empty sweep has no point to read.
  const negative = copyWith(tiny, 'negative', RUN_FILES.exitSweep, (s) => (s.points[0].flopsRatio = -5));
  const r7 = await cli(['compare', negative]);
  assert.equal(r7.code, 1);
  assert.match(r7.err, /exit-sweep\.json: not an early-exit sweep .*points\.0\.flopsRatio: Too small/);
  const none = copyWith(tiny, 'no-exit-points', RUN_FILES.exitSweep, (s) => (s.points = []));
  const r8 = await cli(['compare', none]);
  assert.match(r8.err, /exit-sweep\.json: .*points/);
  for (const r of [r1, r2, r3, r4, r5, r6, r7, r8]) assert.doesNotMatch(r.err, /\n\s+at /, 'a message, not a stack');
});

test('dynn compare prints the table and findings (and --json, --out); the report of several runs draws the comparison', async () => {
  const text = await cli(['compare', tiny, acs, skip]);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /6 series on synthetic \(32 test samples\)/);
  assert.match(text.out, /which mechanism wins at 30%, 50%, 70% of the full FLOPs/);
  assert.match(text.out, /LOSES/);
  const json = await cli(['compare', tiny, skip, '--at', '0.4', '--json']);
  assert.deepEqual(JSON.parse(json.out).ratios, [0.4]);
  const out = path.join(root, 'compare.html');
  assert.equal((await cli(['compare', tiny, acs, skip, '--out', out])).code, 0);
  const html = readFileSync(out, 'utf8');
  assert.match(html, /data-section="compare" data-available="true"/);
  for (const id of ['compare-flops', 'compare-time-1', 'compare-time-64']) assert.match(html, new RegExp(`data-chart="${id}"`));
  assert.match(html, /Which mechanism wins at 30%, 50%, 70%/);
  const report = await buildReport(await gatherRuns([tiny, acs, skip], { sweep: false }));
  const s = report.sections.find((x) => x.name === 'compare')!;
  assert.ok(s.available, s.missing ?? '');
  assert.deepEqual(s.charts, ['compare-flops', 'compare-time-1', 'compare-time-64']);
  // A run measured on other data: the section says why it cannot draw, the rest of the report still draws.
  const other = copyWith(tiny, 'other-report', RUN_FILES.sweep, (x) => (x.dataset = 'mnist'));
  const mixed = await buildReport(await gatherRuns([tiny, other], { sweep: false }));
  assert.match(mixed.sections.find((x) => x.name === 'compare')!.missing!, /different data sets/);
});
