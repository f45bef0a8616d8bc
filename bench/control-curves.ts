/**
 * Reproduces the adaptive-control figures of a trained run: the fixed-u curve, the oracle, the bandit
 * controller and confidence cascades, each against the fixed-u curve interpolated (in FLOPs) between levels.
 *
 * The test set is cut in two halves: the cascade's stages and threshold are chosen on the first half (the
 * operating point with the largest accuracy margin over the curve), and every figure is reported on the
 * second half, which nothing was chosen on. The bandit is not tuned: its plain argmax is reported.
 *
 * Usage: node dist/bench/control-curves.js --run runs/fm-vgg [--controller runs/fm-ctrl] [--json]
 * Writes .bench/control-curves.json.
 */
import { initEngine } from '../src/engine/backend.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import { actionSet, uKey } from '../src/control/actions.js';
import { MixedRunner } from '../src/control/runner.js';
import { fixedCurve, levelTable, type LevelTable } from '../src/control/table.js';
import { cascadeFromTable } from '../src/control/cascade.js';
import { oracleFromTable } from '../src/control/oracle.js';
import { interpolateAccuracy } from '../src/control/curve.js';
import { candidatesFromTable } from '../src/control/candidates.js';
import { policyProbabilities } from '../src/control/bandit.js';
import { loadController } from '../src/control/store.js';
import type { Candidate } from '../src/control/select.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs } from './common.js';

const args = process.argv.slice(2);
const { value: opt } = benchArgs(args);
const runDir = opt('run') ?? 'runs/fm-vgg';
const ctrlDir = opt('controller');
const log = (s: string) => process.stderr.write(s + '\n');
const THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99];

/** Rows [start, end) of a level table. */
function sliceTable(t: LevelTable, start: number, end: number): LevelTable {
  return {
    ...t,
    count: end - start,
    labels: t.labels.subarray(start, end),
    predictions: t.predictions.map((p) => p.subarray(start, end)),
    confidence: t.confidence.map((c) => c.subarray(start, end)),
    correct: t.correct.map((c) => c.subarray(start, end)),
  };
}

/** Every confidence cascade over 2 or 3 increasing distinct levels, at each threshold. */
function cascades(t: LevelTable): Candidate[] {
  const levels = t.us.map((_, k) => k).filter((k) => t.predictions.indexOf(t.predictions[k]) === k);
  const sets: number[][] = [];
  for (const a of levels) for (const b of levels) if (b > a) {
    sets.push([a, b]);
    for (const c of levels) if (c > b) sets.push([a, b, c]);
  }
  const out: Candidate[] = [];
  for (const stages of sets) {
    for (const th of THRESHOLDS) {
      const r = cascadeFromTable(t, stages, th);
      let right = 0;
      let macs = 0;
      for (let i = 0; i < t.count; i++) {
        right += t.correct[r.action[i]][i];
        macs += r.macs[i];
      }
      const us = stages.map((k) => t.us[k]);
      out.push({ name: `cascade ${us.map(uKey).join('>')} t=${th}`, kind: 'cascade', params: { stages: us, threshold: th }, accuracy: right / t.count, flopsRatio: macs / t.count / t.fullMacs });
    }
  }
  return out;
}

const margin = (t: LevelTable, c: { accuracy: number; flopsRatio: number }) => c.accuracy - interpolateAccuracy(fixedCurve(t), c.flopsRatio);

await initEngine('auto');
const { model, meta } = await loadRun(runDir);
const data = await loadDataset(meta.dataset, { seed: meta.seed });
const runner = new MixedRunner(model);
const test = data.test;
log(`${runDir}: ${model.config.model} on ${meta.dataset} test (${test.count} samples): scoring ${actionSet().length} levels`);
const table = levelTable(runner, test, actionSet(), { onLevel: (u) => log(`  u=${u}`) });
let probs: Float32Array | undefined;
let policyMacs = 0;
if (ctrlDir) {
  const { policy } = await loadController(ctrlDir, model, runDir);
  probs = policyProbabilities(policy, test);
  policyMacs = policy.macs;
  policy.dispose();
}
const half = Math.floor(test.count / 2);
const select = sliceTable(table, 0, half);
const report = sliceTable(table, half, test.count);
const K = table.us.length;

// Chosen on the first half: the cascade with the largest margin over the curve.
const chosenCascade = cascades(select).reduce((best, c) => (margin(select, c) > margin(select, best) ? c : best));
const onReport = cascades(report).find((c) => c.name === chosenCascade.name)!;
const allReport = cascades(report);
// The bandit's candidates: its plain argmax (`u>=` the lowest action) and its argmax restricted to actions
// above a floor or below a ceiling; the restriction is chosen on the first half like the cascade.
const bandits = (t: LevelTable, p: Float32Array) => candidatesFromTable(t, { policyProbs: p, policyMacs, thresholds: [] }).filter((c) => c.kind === 'bandit');
const plainName = 'bandit u>=' + uKey(table.us[0]);
const bandit = probs && bandits(report, probs.subarray(half * K)).find((c) => c.name === plainName);
const chosenBandit = probs && bandits(select, probs.subarray(0, half * K)).reduce((best, c) => (margin(select, c) > margin(select, best) ? c : best));
const chosenBanditReport = chosenBandit && bandits(report, probs!.subarray(half * K)).find((c) => c.name === chosenBandit.name);
const { action: _, ...oracle } = oracleFromTable(report);

const result = {
  run: runDir,
  dataset: meta.dataset,
  split: `test samples ${half}..${test.count - 1} (choices made on samples 0..${half - 1})`,
  fixed: fixedCurve(report),
  oracle,
  bandit: bandit && {
    controller: ctrlDir,
    ownFlopsRatio: policyMacs / table.fullMacs,
    argmax: { accuracy: bandit.accuracy, flopsRatio: bandit.flopsRatio, margin: margin(report, bandit) },
    chosen: chosenBanditReport && { name: chosenBandit!.name, accuracy: chosenBanditReport.accuracy, flopsRatio: chosenBanditReport.flopsRatio, margin: margin(report, chosenBanditReport), selectionMargin: margin(select, chosenBandit!) },
  },
  cascade: { chosen: chosenCascade.params, accuracy: onReport.accuracy, flopsRatio: onReport.flopsRatio, margin: margin(report, onReport), selectionMargin: margin(select, chosenCascade) },
  cascadesAboveCurve: { share: allReport.filter((c) => margin(report, c) >= 0).length / allReport.length, of: allReport.length },
};
const pct = (x: number) => (100 * x).toFixed(2);
log(`fixed-u curve (report half): ${result.fixed.map((f) => `u=${f.u}: ${pct(f.accuracy)}% @ ${f.flopsRatio.toFixed(3)}`).join(', ')}`);
log(`oracle: ${pct(oracle.accuracy)}% @ FLOPs ratio ${oracle.meanFlopsRatio.toFixed(3)} (mean u ${oracle.meanU.toFixed(3)})`);
if (result.bandit) {
  const b = result.bandit;
  log(`bandit argmax: ${pct(b.argmax.accuracy)}% @ ${b.argmax.flopsRatio.toFixed(3)} (own ${b.ownFlopsRatio.toFixed(4)}); margin over the curve ${(100 * b.argmax.margin).toFixed(2)} points`);
  if (b.chosen) log(`${b.chosen.name}: ${pct(b.chosen.accuracy)}% @ ${b.chosen.flopsRatio.toFixed(3)}; margin ${(100 * b.chosen.margin).toFixed(2)} points (on the selection half ${(100 * b.chosen.selectionMargin).toFixed(2)})`);
}
log(`cascade ${JSON.stringify(result.cascade.chosen)}: ${pct(result.cascade.accuracy)}% @ ${result.cascade.flopsRatio.toFixed(3)}; margin ${(100 * result.cascade.margin).toFixed(2)} points (on the selection half ${(100 * result.cascade.selectionMargin).toFixed(2)})`);
log(`${(100 * result.cascadesAboveCurve.share).toFixed(1)}% of ${result.cascadesAboveCurve.of} cascades lie on or above the curve`);
if (args.includes('--json')) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
await writeFileAtomic('.bench/control-curves.json', JSON.stringify(result, null, 2) + '\n');
runner.dispose();
model.dispose();
