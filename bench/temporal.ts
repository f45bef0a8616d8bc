/**
 * Temporal control on a stream (NaviSlim's argument): a controller that plans frame t+1 from what the
 * network computed for frame t, against every fixed u, the per-frame bandit that looks at each frame itself
 * (its CNN's cost counted), confidence cascades and the oracle, all on the same held-out sequences of
 * `fashion-mnist-stream` and placed against the fixed-u curve at their own FLOPs ratio. Both learned
 * controllers train on the same level table of the run's training frames, with the same reward.
 *
 * Usage: node dist/bench/temporal.js --run RUN (a run trained on fashion-mnist-stream) [--train-samples 20000]
 *        [--epochs 10] [--gamma1 2,4,8] [--budgets 0.15,0.2] [--betas 0.9] [--pg-epochs 30] [--test-samples N]
 *        [--resolutions 28,21] [--json]. Writes .bench/temporal.json.
 * With --resolutions, the temporal controllers also train over the operating points (u, r) (every u at every
 * resolution) and are placed against the same fixed-u curve; every fixed (u, r) and their oracle are reported.
 */
import { initEngine } from '../src/engine/backend.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import { head } from '../src/data/imageset.js';
import { actionSet, operatingPoints } from '../src/control/actions.js';
import { MixedRunner } from '../src/control/runner.js';
import { fixedCurve, levelTable, type LevelTable } from '../src/control/table.js';
import { oracleFromTable } from '../src/control/oracle.js';
import { againstCurve, paretoFront } from '../src/control/curve.js';
import { Policy } from '../src/control/policy.js';
import { greedyActions, policyProbabilities, trainBandit } from '../src/control/bandit.js';
import { cascadeFromTable } from '../src/control/cascade.js';
import { runTemporal, TemporalController, temporalPolicy, trainTemporal, trainTemporalSequences, type SequenceObjective } from '../src/control/temporal.js';
import { writeFileAtomic } from '../src/util/fs.js';

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const int = (name: string, fallback: number) => {
  const v = opt(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${v}`);
  return n;
};
const runDir = opt('run');
if (!runDir) throw new Error('--run RUN is required (a run trained on fashion-mnist-stream)');
const trainSamples = int('train-samples', 20000);
const epochs = int('epochs', 10);
const gammas = (opt('gamma1') ?? '2,4,8').split(',').map(Number);
const log = (s: string) => process.stderr.write(s + '\n');

await initEngine('auto');
const { model, meta } = await loadRun(runDir);
const data = await loadDataset('fashion-mnist-stream', { trainLimit: meta.options?.trainLimit as number | undefined, seed: meta.seed });
const runner = new MixedRunner(model);
const actions = actionSet();
const train = head(head(data.train, data.train.count - (meta.validationSamples ?? 0)), trainSamples);
const test = opt('test-samples') ? head(data.test, int('test-samples', data.test.count)) : data.test;
const resolutions = opt('resolutions')?.split(',').map(Number);
log(`${runDir}: ${model.config.model}; levels on ${train.count} training and ${test.count} test frames (${new Set(test.sequence).size} test sequences)`);
const trainTable = levelTable(runner, train, actions, { probabilities: true, onLevel: (u) => log(`  train u=${u}`) });
const testTable = levelTable(runner, test, actions, { onLevel: (u) => log(`  test u=${u}`) });
const curve = fixedCurve(testTable);
const { action: _, ...oracle } = oracleFromTable(testTable);
const pct = (x: number) => (100 * x).toFixed(2);

interface Row {
  controller: string;
  accuracy: number;
  flopsRatio: number;
  /** The controller's own share of the FLOPs ratio (its network, a cascade's earlier passes). */
  ownRatio: number;
  curveAccuracy: number | null;
  gap: number | null;
  below: boolean;
  uHistogram: Record<string, number>;
  /** Against the Pareto front of every fixed (u, r), for controllers over (u, r). */
  againstResolutionFront?: { curveAccuracy: number | null; gap: number | null; below: boolean };
}
const rows: Row[] = [];

/** Places a per-frame outcome (each frame's action index and total MACs) on the curve. */
function add(controller: string, action: ArrayLike<number>, macs: ArrayLike<number>, ownMacs: number, table: LevelTable = testTable): void {
  let right = 0;
  let sum = 0;
  const hist: Record<string, number> = {};
  for (let i = 0; i < table.count; i++) {
    right += table.correct[action[i]][i];
    sum += macs[i];
    const u = table.resolutions ? `${table.us[action[i]]}@${table.resolutions[action[i]]}` : String(table.us[action[i]]);
    hist[u] = (hist[u] ?? 0) + 1;
  }
  const point = { accuracy: right / table.count, flopsRatio: sum / table.count / table.fullMacs };
  const gap = againstCurve(curve, point);
  const front = table.resolutions ? againstCurve(paretoFront(fixedCurve(table)), point) : undefined;
  rows.push({ controller, ...point, ownRatio: ownMacs / table.count / table.fullMacs, curveAccuracy: gap.curveAccuracy, gap: gap.gap, below: gap.below, uHistogram: hist, ...(front && { againstResolutionFront: front }) });
  log(`${controller}: ${pct(point.accuracy)}% @ ${point.flopsRatio.toFixed(3)} (own ${(ownMacs / table.count / table.fullMacs).toFixed(4)}); ${gap.below ? 'BELOW' : 'above'} the curve by ${pct(Math.abs(gap.gap ?? NaN))} points`);
}

for (const gamma1 of gammas) {
  // The per-frame bandit: a small CNN on frame t itself decides frame t's u.
  const bandit = new Policy({ inputShape: model.inputShape, actions });
  trainBandit(bandit, train, trainTable, { epochs, gamma1 });
  const chosen = greedyActions(policyProbabilities(bandit, test), actions.length);
  add(`per-frame bandit, gamma1 ${gamma1}`, chosen, Float64Array.from(chosen, (k) => testTable.macs[k] + bandit.macs), bandit.macs * test.count);
  bandit.dispose();

  // The temporal controller: frame t's probabilities plan frame t+1, sequences run side by side.
  const policy = temporalPolicy(model.numClasses, actions);
  trainTemporal(policy, train, trainTable, { epochs, gamma1 });
  const run = runTemporal(new TemporalController(policy), runner, test);
  add(`temporal, gamma1 ${gamma1}`, Int32Array.from(run.u, (u) => actions.indexOf(u)), run.macs, policy.macs * test.count);
  policy.dispose();
}

// REINFORCE over whole sequences (NaviSlim's Eq. 2 and Eq. 1), rolled out on the same training table.
const objectives: SequenceObjective[] = [
  ...(opt('budgets') ?? '0.15,0.2').split(',').map((b) => ({ kind: 'budget' as const, budget: Number(b) })),
  ...(opt('betas') ?? '0.9').split(',').map((b) => ({ kind: 'beta' as const, beta: Number(b) })),
];
for (const objective of objectives) {
  const policy = temporalPolicy(model.numClasses, actions);
  trainTemporalSequences(policy, train, trainTable, { objective, epochs: int('pg-epochs', 30) });
  const run = runTemporal(new TemporalController(policy), runner, test);
  add(`temporal, REINFORCE over sequences, ${objective.kind === 'budget' ? `budget ${objective.budget}` : `beta ${objective.beta}`}`, Int32Array.from(run.u, (u) => actions.indexOf(u)), run.macs, policy.macs * test.count);
  policy.dispose();
}

// The same temporal controllers over operating points (u, r): each frame also planned at an input resolution.
let withResolution: { fixed: ReturnType<typeof fixedCurve>; oracle: Omit<ReturnType<typeof oracleFromTable>, 'action'> } | undefined;
if (resolutions) {
  const points = operatingPoints(actions, resolutions);
  const trainRes = levelTable(runner, train, points.actions, { probabilities: true, resolutions: points.resolutions, onLevel: (u, r) => log(`  train u=${u} at ${r}`) });
  const testRes = levelTable(runner, test, points.actions, { resolutions: points.resolutions, onLevel: (u, r) => log(`  test u=${u} at ${r}`) });
  const { action: _a, ...oracleRes } = oracleFromTable(testRes);
  withResolution = { fixed: fixedCurve(testRes), oracle: oracleRes };
  const indexOf = (run: ReturnType<typeof runTemporal>) => Int32Array.from(run.u, (u, i) => points.actions.findIndex((v, k) => v === u && points.resolutions[k] === run.resolution![i]));
  for (const gamma1 of gammas) {
    const policy = temporalPolicy(model.numClasses, actions, { resolutions });
    trainTemporal(policy, train, trainRes, { epochs, gamma1 });
    const run = runTemporal(new TemporalController(policy), runner, test);
    add(`temporal over (u, r), gamma1 ${gamma1}`, indexOf(run), run.macs, policy.macs * test.count, testRes);
    policy.dispose();
  }
  for (const objective of objectives) {
    const policy = temporalPolicy(model.numClasses, actions, { resolutions });
    trainTemporalSequences(policy, train, trainRes, { objective, epochs: int('pg-epochs', 30) });
    const run = runTemporal(new TemporalController(policy), runner, test);
    add(`temporal over (u, r), REINFORCE over sequences, ${objective.kind === 'budget' ? `budget ${objective.budget}` : `beta ${objective.beta}`}`, indexOf(run), run.macs, policy.macs * test.count, testRes);
    policy.dispose();
  }
  log(`fixed (u, r): ${withResolution.fixed.map((f) => `u=${f.u}@${f.resolution}: ${pct(f.accuracy)}% @ ${f.flopsRatio.toFixed(3)}`).join(', ')}`);
  log(`oracle over (u, r): ${pct(oracleRes.accuracy)}% @ ${oracleRes.meanFlopsRatio.toFixed(3)}`);
}

for (const [stages, threshold] of [[[0, 9], 0.8], [[0, 4, 9], 0.8], [[1, 9], 0.9], [[2, 9], 0.9]] as [number[], number][]) {
  const c = cascadeFromTable(testTable, stages, threshold);
  const passes = Float64Array.from(c.macs, (m, i) => m - testTable.macs[c.action[i]]);
  add(`cascade u = ${stages.map((k) => actions[k]).join(', ')} below ${threshold}`, c.action, c.macs, passes.reduce((a, b) => a + b, 0));
}

const result = { run: runDir, trainFrames: train.count, testFrames: test.count, epochs, fixed: curve, oracle, ...(withResolution && { withResolution }), controllers: rows };
log(`fixed-u curve: ${curve.map((f) => `u=${f.u}: ${pct(f.accuracy)}% @ ${f.flopsRatio.toFixed(3)}`).join(', ')}`);
log(`oracle: ${pct(oracle.accuracy)}% @ ${oracle.meanFlopsRatio.toFixed(3)}`);
if (args.includes('--json')) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
await writeFileAtomic('.bench/temporal.json', JSON.stringify(result, null, 2) + '\n');
runner.dispose();
model.dispose();
