import path from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { fixed, lineChart, quantitative, round, type Row } from './charts.js';
import { CHART_SIZE } from './vega.js';
import { againstCurve, bestMixAccuracy, interpolateAccuracy, type CurvePoint } from '../control/curve.js';
import { paretoFront } from '../control/select.js';
import { DynnError } from '../util/errors.js';
import { RUN_FILES } from './sources.js';
import type { ReportSection, RunData, SectionContent } from './types.js';

// Every run's operating points on one axis (accuracy against the FLOPs ratio, and against measured time), read
// from what `dynn sweep`, `dynn eval` and the per-sample mechanisms already save beside the runs. No TF.js.

/** The FLOPs ratios the "which mechanism wins" table is read at. */
export const COMPARE_RATIOS = [0.3, 0.5, 0.7];

/** Where a series comes from; curves are interpolated between their points, the others are single points. */
export type CompareFamily = 'u-curve' | 'exits' | 'per-sample' | 'controller' | 'oracle';

/** One operating point of a series. */
export interface ComparePoint {
  /** The setting that gives it: `u=0.5`, `threshold 0.35`, a controller's name. */
  label: string;
  accuracy: number;
  /** Mean FLOPs over the run's full network (u = 1, nothing skipped), gates and controllers included. */
  flopsRatio: number;
  /** Measured latency of one batch in ms, keyed by batch size, where measured. */
  latencyMs: Record<string, number>;
}

/** The operating points of one mechanism of one run. */
export interface CompareSeries {
  run: string;
  /** The run's registered model (`vgg-w`, `resnet38`, ...). */
  model: string;
  /** `u curve`, `exits (entropy)`, the per-sample mechanism (`acs-gn`, ...), `controller NAME`, `oracle`. */
  mechanism: string;
  family: CompareFamily;
  /** The file the points were read from. */
  file: string;
  dataset: string;
  /** Test samples it was measured on; null when the file does not say. */
  testSamples: number | null;
  points: ComparePoint[];
  /** What a reader must know about its numbers (masked execution, a budget curve). */
  note?: string;
}

/** One mechanism at one FLOPs ratio, against the u curve and the oracle at the same ratio. */
export interface RatioRow {
  ratio: number;
  run: string;
  mechanism: string;
  family: CompareFamily;
  /** Accuracy within this FLOPs ratio (its Pareto front, interpolated); null below the mechanism's cheapest point. */
  accuracy: number | null;
  /** Set when the ratio lies above the mechanism's costliest useful point: its most accurate point, at this FLOPs ratio. */
  capped?: number;
  /** The u curve used as reference: the run's own, else one of the same model, else the best of the runs at this ratio. */
  uCurveRun: string | null;
  uCurve: number | null;
  /** The oracle's ceiling at this ratio (its FLOPs-budget curve), chosen as the u curve is. */
  oracle: number | null;
  /** accuracy - uCurve (negative: the mechanism loses). */
  vsCurve: number | null;
  /** The most accurate deployable mechanism at this ratio. */
  wins: boolean;
}

/** What `dynn compare` reports. */
export interface Comparison {
  dataset: string;
  /** Test samples, when every file that says agrees. */
  testSamples: number | null;
  series: CompareSeries[];
  ratios: number[];
  table: RatioRow[];
  /** Controllers against their run's u curve (or the best u curve) at their own FLOPs ratio. */
  controllers: { run: string; mechanism: string; accuracy: number; flopsRatio: number; uCurve: number | null; gap: number | null; below: boolean }[];
  /** Plain sentences: which mechanism wins at each ratio, where one loses against the u curve. */
  findings: string[];
  /** What was left out and why. */
  notes: string[];
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
const pts = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}`;

/** The series of one run, from the files gathered beside it (`gatherRun` with `sweep: false`). */
function runSeries(run: RunData, notes: string[]): CompareSeries[] {
  const out: CompareSeries[] = [];
  const rel = (f: string) => path.join(run.dir, f);
  if (run.sweep) {
    out.push({
      run: run.name,
      model: run.model,
      mechanism: 'u curve',
      family: 'u-curve',
      file: run.sweep.source.kind === 'file' ? run.sweep.source.path : rel(RUN_FILES.sweep),
      dataset: run.sweep.dataset,
      testSamples: run.sweep.testSamples ?? null,
      points: run.sweep.points.map((p) => ({ label: `u=${p.u}`, accuracy: p.accuracy, flopsRatio: p.flopsRatio, latencyMs: { '1': p.latencyMs.batch1, '128': p.latencyMs.batch128 } })),
    });
  }
  if (run.dynamic) {
    const d = run.dynamic;
    out.push({
      run: run.name,
      model: run.model,
      mechanism: d.mechanism,
      family: 'per-sample',
      file: d.path,
      dataset: d.dataset,
      testSamples: d.testSamples,
      points: d.points.map((p) => ({ label: `threshold ${p.threshold}`, accuracy: p.accuracy, flopsRatio: p.flopsRatio, latencyMs: { '1': p.latencyMs.batch1, '64': p.latencyMs.batch64 } })),
      ...(d.execution === 'masked' ? { note: 'executed masked (every channel computed): its times are the masked ones' } : {}),
    });
  } else if (run.dynamicMissing) notes.push(`${run.name}: ${run.dynamicMissing}`);
  if (run.exits) {
    const e = run.exits;
    out.push({
      run: run.name,
      model: run.model,
      mechanism: `exits (${e.rule})`,
      family: 'exits',
      file: rel(RUN_FILES.exitSweep),
      dataset: e.dataset,
      testSamples: e.testSamples ?? null,
      points: e.points.map((p) => ({ label: `threshold ${Array.isArray(p.threshold) ? p.threshold.join(':') : p.threshold}`, accuracy: p.accuracy, flopsRatio: p.flopsRatio, latencyMs: {} })),
      note: 'FLOPs over the last exit alone',
    });
  }
  let oracle: CompareSeries | null = null;
  for (const c of run.controllers) {
    if (c.split !== undefined && c.split !== 'test') {
      const evalFile = path.join(run.dir, `${RUN_FILES.evalPrefix}${c.name}.json`);
      // A checkpoint's validation result is left out quietly once its test-set evaluation is beside the run.
      if (!run.controllers.some((o) => o.file === evalFile)) {
        notes.push(`${run.name}: controller ${c.name} left out: evaluated on the ${c.split === 'val' ? 'validation' : c.split} split, not the test set; \`dynn eval ${run.dir} --controller DIR --json > ${evalFile}\` evaluates it there`);
      }
      continue;
    }
    const file = c.file ?? rel(c.samples);
    const common = { run: run.name, model: run.model, file, dataset: c.dataset ?? run.meta.dataset, testSamples: c.testSamples ?? null };
    if (c.dataset === undefined) notes.push(`${run.name}: ${file} does not record its data set and test samples (written before \`dynn eval --json\` did); taken as the run's ${common.dataset} test set`);
    if (c.controller !== 'oracle') out.push({ ...common, mechanism: `controller ${c.name}`, family: 'controller', points: [{ label: c.name, accuracy: c.accuracy, flopsRatio: c.meanFlopsRatio, latencyMs: {} }] });
    // One oracle per run: `dynn eval --controller oracle`'s, else one with its FLOPs-budget curve, else the first.
    if (!oracle || c.controller === 'oracle' || (c.oracle.curve && oracle.points.length === 1)) {
      const ceiling = { label: 'oracle (lowest right u)', accuracy: c.oracle.accuracy, flopsRatio: c.oracle.meanFlopsRatio, latencyMs: {} };
      const curve = (c.oracle.curve ?? []).map((p, k) => ({ label: `oracle within budget ${k + 1}`, accuracy: p.accuracy, flopsRatio: p.flopsRatio, latencyMs: {} }));
      oracle = { ...common, mechanism: 'oracle', family: 'oracle', points: [...curve, ceiling], note: 'reads the labels: a ceiling, not deployable' };
    }
  }
  if (oracle) out.push(oracle);
  return out;
}

/** Checks that every series was measured on one data set and one test set; a DynnError naming them otherwise. */
function checkSameTestSet(series: CompareSeries[]): { dataset: string; testSamples: number | null } {
  const where = (s: CompareSeries) => `${s.run} ${s.mechanism} (${s.file}): ${s.dataset}${s.testSamples !== null ? `, ${s.testSamples} test samples` : ''}`;
  const datasets = [...new Set(series.map((s) => s.dataset))];
  if (datasets.length > 1) throw new DynnError(`the runs were measured on different data sets; compare runs on one: ${series.map(where).join('; ')}`);
  const counts = [...new Set(series.map((s) => s.testSamples).filter((n): n is number => n !== null))];
  if (counts.length > 1) {
    throw new DynnError(`the runs were measured on different test sets (${counts.join(' vs ')} samples); remake the files with the same --test-limit: ${series.map(where).join('; ')}`);
  }
  return { dataset: datasets[0], testSamples: counts[0] ?? null };
}

/** A series' points as measured. */
const curveOf = (s: CompareSeries): CurvePoint[] => s.points.map((p) => ({ accuracy: p.accuracy, flopsRatio: p.flopsRatio }));

/**
 * A series' Pareto front (a costlier point that is less accurate is never the one to run); what it achieves
 * within a FLOPs budget is `bestMixAccuracy` of it: the best point, or mix of two, at that cost or less.
 */
const frontOf = (s: CompareSeries): CurvePoint[] => paretoFront(curveOf(s).map((p, i) => ({ name: String(i), kind: s.family, params: {}, ...p })));

/** The oracle's accuracy at a FLOPs ratio: its budget curve when recorded, else its ceiling where it fits. */
function oracleAt(s: CompareSeries, ratio: number): number | null {
  const curve = s.points.filter((p) => p.label.startsWith('oracle within'));
  if (curve.length) {
    const a = interpolateAccuracy(curve, ratio);
    return Number.isFinite(a) ? a : null;
  }
  const c = s.points[s.points.length - 1];
  return c.flopsRatio <= ratio ? c.accuracy : null;
}

/**
 * Compares the runs' operating points: every series on one test set (refused otherwise), each curve
 * interpolated at `ratios` against the u curve and the oracle at the same ratio, the controllers against the
 * u curve at their own ratio, and plain findings where a mechanism loses.
 */
export function compareRuns(runs: RunData[], ratios: number[] = COMPARE_RATIOS): Comparison {
  const notes: string[] = [];
  const series = runs.flatMap((r) => runSeries(r, notes));
  for (const r of runs) if (!series.some((s) => s.run === r.name)) notes.push(`${r.name}: nothing to compare beside it: \`dynn sweep ${r.dir} --json > ${path.join(r.dir, RUN_FILES.sweep)}\` (and \`dynn eval ${r.dir} --controller oracle --json > ${path.join(r.dir, `${RUN_FILES.evalPrefix}oracle.json`)}\`) make some`);
  if (!series.length) throw new DynnError(`nothing to compare: no run has a sweep, an exit sweep or a controller evaluation beside it (${runs.map((r) => r.dir).join(', ')})`);
  const { dataset, testSamples } = checkSameTestSet(series);
  const uCurves = series.filter((s) => s.family === 'u-curve');
  const oracles = series.filter((s) => s.family === 'oracle');
  const curves = series.filter((s) => s.family === 'u-curve' || s.family === 'per-sample' || s.family === 'exits');
  const finite = (x: number) => (Number.isFinite(x) ? x : null);
  /** The references of a series: its run's own, else those of runs of the same model, else all. */
  const referencesOf = (of: CompareSeries, pool: CompareSeries[]): CompareSeries[] => {
    const own = pool.filter((s) => s.run === of.run);
    if (own.length) return own;
    const same = pool.filter((s) => s.model === of.model);
    return same.length ? same : pool;
  };
  /** The reference u curve at a ratio: the most accurate of the series' references. */
  const uCurveAt = (of: CompareSeries, ratio: number): { run: string; accuracy: number } | null => {
    const cands = referencesOf(of, uCurves).map((s) => ({ run: s.run, accuracy: bestMixAccuracy(frontOf(s), ratio) })).filter((c) => Number.isFinite(c.accuracy));
    return cands.sort((a, b) => b.accuracy - a.accuracy)[0] ?? null;
  };
  const oracleOf = (of: CompareSeries, ratio: number): number | null => {
    const vals = referencesOf(of, oracles).map((s) => oracleAt(s, ratio)).filter((x): x is number => x !== null);
    return vals.length ? Math.max(...vals) : null;
  };

  const table: RatioRow[] = [];
  const findings: string[] = [];
  for (const ratio of ratios) {
    const rows: RatioRow[] = curves.map((s) => {
      const c = frontOf(s);
      const accuracy = finite(bestMixAccuracy(c, ratio));
      const top = Math.max(...c.map((p) => p.flopsRatio));
      const ref = uCurveAt(s, ratio);
      const u = s.family === 'u-curve' ? { run: s.run, accuracy: accuracy ?? NaN } : ref;
      return {
        ratio,
        run: s.run,
        mechanism: s.mechanism,
        family: s.family,
        accuracy,
        ...(accuracy !== null && ratio > top ? { capped: top } : {}),
        uCurveRun: u?.run ?? null,
        uCurve: u ? finite(u.accuracy) : null,
        oracle: oracleOf(s, ratio),
        vsCurve: accuracy !== null && u && Number.isFinite(u.accuracy) && s.family !== 'u-curve' ? accuracy - u.accuracy : null,
        wins: false,
      };
    });
    const reached = rows.filter((r) => r.accuracy !== null);
    const best = reached.sort((a, b) => b.accuracy! - a.accuracy!)[0];
    if (best) {
      best.wins = true;
      findings.push(`At ${Math.round(100 * ratio)}% of the full FLOPs, ${best.run} ${best.mechanism} is the most accurate: ${pct(best.accuracy!)}${best.capped !== undefined ? ` (its best point, at ${best.capped.toFixed(3)})` : ''}.`);
    } else findings.push(`At ${Math.round(100 * ratio)}% of the full FLOPs, no mechanism has a point this cheap.`);
    for (const r of rows) {
      if (r.vsCurve !== null && r.vsCurve < -1e-9) findings.push(`${r.run} ${r.mechanism} LOSES against the u curve${r.uCurveRun !== r.run ? ` of ${r.uCurveRun}` : ''} at ${Math.round(100 * ratio)}%: ${pct(r.accuracy!)} against ${pct(r.uCurve!)} (${pts(r.vsCurve)} points).`);
      if (r.accuracy === null && r.family !== 'u-curve') findings.push(`${r.run} ${r.mechanism} has no point as cheap as ${Math.round(100 * ratio)}% of the full FLOPs.`);
    }
    table.push(...rows);
  }

  const controllers = series
    .filter((s) => s.family === 'controller')
    .map((s) => {
      const p = s.points[0];
      const own = uCurves.find((u) => u.run === s.run);
      const gap = own ? againstCurve(curveOf(own), p) : null;
      const row = { run: s.run, mechanism: s.mechanism, accuracy: p.accuracy, flopsRatio: p.flopsRatio, uCurve: gap?.curveAccuracy ?? null, gap: gap?.gap ?? null, below: gap?.below ?? false };
      if (!own) notes.push(`${s.run} ${s.mechanism}: its run has no u curve (sweep.json) to place it against`);
      else if (row.below) findings.push(`${s.run} ${s.mechanism} sits BELOW its u curve: ${pct(p.accuracy)} at FLOPs ratio ${p.flopsRatio.toFixed(3)}, where the u curve gives ${pct(row.uCurve!)} (${pts(row.gap!)} points).`);
      else if (row.gap !== null) findings.push(`${s.run} ${s.mechanism} sits on or above its u curve: ${pct(p.accuracy)} at FLOPs ratio ${p.flopsRatio.toFixed(3)} (${pts(row.gap)} points).`);
      return row;
    });
  for (const s of series) if (s.note) notes.push(`${s.run} ${s.mechanism}: ${s.note}.`);
  if (new Set(curves.map((s) => s.run)).size > 1) notes.push('FLOPs ratios are over each run’s own full network: runs of different architectures meet on relative cost, not on absolute FLOPs.');
  return { dataset, testSamples, series, ratios, table, controllers, findings, notes };
}

/** Per-sample time of a point at a batch size (ms / batch), NaN where not measured. */
const msPerSample = (p: ComparePoint, batch: string) => (p.latencyMs[batch] ?? NaN) / Number(batch);

const seriesName = (s: CompareSeries) => `${s.run} · ${s.mechanism}`;

/** The text rows of the ratio table (shared by `dynn compare` and the report). */
export function ratioTableRows(c: Comparison): string[][] {
  const f = (x: number | null) => (x === null ? '-' : pct(x));
  return c.table.map((r) => [
    `${Math.round(100 * r.ratio)}%`,
    `${r.wins ? '* ' : ''}${r.run} ${r.mechanism}`,
    r.accuracy === null ? 'not this cheap' : `${pct(r.accuracy)}${r.capped !== undefined ? ` (its best, at ${r.capped.toFixed(3)})` : ''}`,
    r.uCurve === null ? '-' : `${pct(r.uCurve)}${r.uCurveRun && r.uCurveRun !== r.run ? ` (${r.uCurveRun})` : ''}`,
    r.vsCurve === null ? '-' : `${pts(r.vsCurve)}${r.vsCurve < -1e-9 ? ' LOSES' : ''}`,
    f(r.oracle),
  ]);
}

/** Column heads of `ratioTableRows`. */
export const RATIO_TABLE_HEAD = ['FLOPs ratio', 'mechanism (* wins)', 'accuracy', 'u curve', 'vs u curve (points)', 'oracle'];

/** The report's section over several runs: `compareRuns` drawn as charts and tables. */
export const compareSection: ReportSection = {
  name: 'compare',
  title: 'Mechanisms compared on one test set',
  description:
    'Every run’s operating points on one axis: the throttleable u curve, per-sample mechanisms at each threshold (their gates’ cost included), early exits, controllers and the oracle’s ceiling, all on the same test set. FLOPs are over each run’s own full network; the table reads each curve at 30%, 50% and 70% of the full FLOPs against the u curve and the oracle at the same ratio.',
  available(runs) {
    try {
      const n = compareRuns(runs).series.length;
      return n >= 2 ? { ok: true } : { ok: false, missing: 'one series of operating points: nothing to compare it with (a u sweep, a controller or oracle evaluation, an exit sweep, or another run)' };
    } catch (err) {
      if (err instanceof DynnError) return { ok: false, missing: err.message };
      throw err;
    }
  },
  render(runs) {
    const c = compareRuns(runs);
    return compareContent(c);
  },
};

/** Charts and tables of a comparison. */
export function compareContent(c: Comparison): SectionContent {
  const content: SectionContent = { charts: [], tables: [], commands: [], notes: [...c.findings, ...c.notes] };
  const lines: Row[] = [];
  const marks: Row[] = [];
  for (const s of c.series) {
    for (const p of s.points) {
      const row = { series: seriesName(s), label: p.label, flopsRatio: round(p.flopsRatio), accuracy: round(p.accuracy) };
      if (s.family === 'controller' || (s.family === 'oracle' && !p.label.startsWith('oracle within'))) marks.push({ ...row, series: s.family === 'oracle' ? `${s.run} · oracle ceiling` : row.series });
      else lines.push({ ...row, series: s.family === 'oracle' ? `${s.run} · oracle within a FLOPs budget` : row.series });
    }
  }
  const x = quantitative({ field: 'flopsRatio', title: 'mean FLOPs / the run’s full network' });
  const y = quantitative({ field: 'accuracy', title: 'test accuracy', as: 'percent' });
  const tooltip = [{ field: 'series' }, { field: 'label' }, { field: 'flopsRatio', type: 'quantitative', format: '.3f' }, { field: 'accuracy', type: 'quantitative', format: '.2%' }];
  const color = { field: 'series', type: 'nominal', title: 'run · mechanism' };
  content.charts.push({
    id: 'compare-flops',
    title: 'Accuracy vs FLOPs, every mechanism',
    spec: {
      title: `Accuracy vs FLOPs ratio on ${c.dataset}${c.testSamples ? ` (${c.testSamples} test samples)` : ''}`,
      ...CHART_SIZE,
      layer: [
        { data: { values: c.ratios.map((r) => ({ r })) }, mark: { type: 'rule', strokeDash: [2, 3], color: '#999' }, encoding: { x: { field: 'r', type: 'quantitative' } } },
        { data: { values: lines }, mark: { type: 'line', point: true }, encoding: { x, y, color, order: { field: 'flopsRatio', type: 'quantitative' }, tooltip } },
        { data: { values: marks }, mark: { type: 'point', filled: true, size: 130, shape: 'diamond' }, encoding: { x, y, color, tooltip } },
      ],
    } as TopLevelSpec,
  });
  for (const batch of ['1', '64']) {
    const rows: Row[] = [];
    for (const s of c.series) {
      // The u sweep times its large batch at 128: drawn beside batch 64, and labelled so.
      const b = batch === '64' && !s.points.some((p) => Number.isFinite(p.latencyMs['64'])) ? '128' : batch;
      for (const p of s.points) {
        const ms = msPerSample(p, b);
        if (Number.isFinite(ms)) rows.push({ series: `${seriesName(s)}${b !== batch ? ' (batch 128)' : ''}`, label: p.label, ms: round(ms), accuracy: round(p.accuracy) });
      }
    }
    if (!rows.length) {
      content.notes.push(`No times measured at batch ${batch} in any file.`);
      continue;
    }
    content.charts.push({
      id: `compare-time-${batch}`,
      title: `Accuracy vs time, batch ${batch}`,
      spec: lineChart(`Accuracy vs measured time per sample, batch ${batch} (TF.js, this machine)`, rows, { field: 'ms', title: 'ms per sample' }, { field: 'accuracy', title: 'test accuracy', as: 'percent' }, { field: 'series', title: 'run · mechanism' }),
    });
  }
  content.tables.push({ caption: `Which mechanism wins at ${c.ratios.map((r) => `${Math.round(100 * r)}%`).join(', ')} of the full FLOPs (interpolated; * the most accurate)`, head: RATIO_TABLE_HEAD, rows: ratioTableRows(c) });
  if (c.controllers.length) {
    content.tables.push({
      caption: 'Controllers against their run’s u curve at their own FLOPs ratio',
      head: ['controller', 'accuracy', 'FLOPs ratio', 'u curve there', 'gap (points)'],
      rows: c.controllers.map((k) => [`${k.run} ${k.mechanism}`, pct(k.accuracy), k.flopsRatio.toFixed(3), k.uCurve === null ? '-' : pct(k.uCurve), k.gap === null ? '-' : `${pts(k.gap)}${k.below ? ' BELOW' : ''}`]),
    });
  }
  content.tables.push({
    caption: 'Every operating point',
    head: ['run', 'mechanism', 'setting', 'accuracy', 'FLOPs ratio', 'ms @1', 'ms @64 (128)', 'file'],
    rows: c.series.flatMap((s) => s.points.map((p) => [s.run, s.mechanism, p.label, pct(p.accuracy), p.flopsRatio.toFixed(3), fixed(p.latencyMs['1'] ?? NaN, 2), fixed(p.latencyMs['64'] ?? p.latencyMs['128'] ?? NaN, 2), s.file])),
  });
  return content;
}
