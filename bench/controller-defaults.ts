/**
 * The bandit controller's training choices side by side on one trained run: objective, feedback and the
 * wrong-answer weight gamma1, each trained on the same precomputed level table (the run's training part, as
 * `dynn controller train` uses it) and placed against the fixed-u curve of the test set at its own FLOPs ratio.
 * What `dynn controller train` defaults to was chosen from these figures.
 *
 * Usage: node dist/bench/controller-defaults.js --run runs/fm-vgg [--train-samples 20000] [--epochs 10] [--json]
 * Writes .bench/controller-defaults.json.
 */
import { initEngine } from '../src/engine/backend.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import { head } from '../src/data/imageset.js';
import { actionSet } from '../src/control/actions.js';
import { MixedRunner } from '../src/control/runner.js';
import { fixedCurve, levelTable } from '../src/control/table.js';
import { oracleFromTable } from '../src/control/oracle.js';
import { againstCurve } from '../src/control/curve.js';
import { Policy } from '../src/control/policy.js';
import { greedyActions, policyProbabilities, trainBandit, type BanditOptions } from '../src/control/bandit.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs } from './common.js';

const args = process.argv.slice(2);
const { value: opt, int: num } = benchArgs(args);
const runDir = opt('run') ?? 'runs/fm-vgg';
const trainSamples = num('train-samples', 20000);
const epochs = num('epochs', 10);
const log = (s: string) => process.stderr.write(s + '\n');

const VARIANTS: { name: string; options: BanditOptions }[] = [
  { name: 'policy-gradient, bandit feedback, gamma1 0.5 (the paper; the old default)', options: { objective: 'policy-gradient', feedback: 'bandit', gamma1: 0.5 } },
  { name: 'reward model, bandit feedback, gamma1 0.5', options: { objective: 'reward', feedback: 'bandit', gamma1: 0.5 } },
  { name: 'reward model, bandit feedback, gamma1 4', options: { objective: 'reward', feedback: 'bandit', gamma1: 4 } },
  { name: 'reward model, full feedback, gamma1 0.5', options: { objective: 'reward', feedback: 'full', gamma1: 0.5 } },
  { name: 'reward model, full feedback, gamma1 2', options: { objective: 'reward', feedback: 'full', gamma1: 2 } },
  { name: 'reward model, full feedback, gamma1 4', options: { objective: 'reward', feedback: 'full', gamma1: 4 } },
  { name: 'reward model, full feedback, gamma1 8', options: { objective: 'reward', feedback: 'full', gamma1: 8 } },
];

await initEngine('auto');
const { model, meta } = await loadRun(runDir);
// The run's own training limit and seed, so its training part and validation split are the ones it had.
const data = await loadDataset(meta.dataset, { trainLimit: meta.options?.trainLimit as number | undefined, seed: meta.seed });
const runner = new MixedRunner(model);
const actions = actionSet();
const train = head(head(data.train, data.train.count - (meta.validationSamples ?? 0)), trainSamples);
log(`${runDir}: ${model.config.model} on ${meta.dataset}: levels on ${train.count} training and ${data.test.count} test samples`);
const trainTable = levelTable(runner, train, actions, { onLevel: (u) => log(`  train u=${u}`) });
const testTable = levelTable(runner, data.test, actions, { onLevel: (u) => log(`  test u=${u}`) });
const curve = fixedCurve(testTable);
const { action: _, ...oracle } = oracleFromTable(testTable);
const rows = [];
for (const v of VARIANTS) {
  const policy = new Policy({ inputShape: model.inputShape, actions });
  const t0 = performance.now();
  trainBandit(policy, train, trainTable, { epochs, ...v.options });
  const seconds = (performance.now() - t0) / 1000;
  const chosen = greedyActions(policyProbabilities(policy, data.test), actions.length);
  let right = 0;
  let macs = 0;
  const hist: Record<string, number> = {};
  for (let i = 0; i < data.test.count; i++) {
    right += testTable.correct[chosen[i]][i];
    macs += testTable.macs[chosen[i]] + policy.macs;
    hist[actions[chosen[i]]] = (hist[actions[chosen[i]]] ?? 0) + 1;
  }
  const point = { accuracy: right / data.test.count, flopsRatio: macs / data.test.count / testTable.fullMacs };
  const gap = againstCurve(curve, point);
  rows.push({ variant: v.name, options: v.options, ...point, curveAccuracy: gap.curveAccuracy, gap: gap.gap, below: gap.below, uHistogram: hist, seconds });
  log(`${v.name}: ${(100 * point.accuracy).toFixed(2)}% @ ${point.flopsRatio.toFixed(3)}; ${gap.below ? 'BELOW' : 'above'} the curve by ${(100 * Math.abs(gap.gap ?? NaN)).toFixed(2)} points (${seconds.toFixed(0)} s)`);
  policy.dispose();
}
const result = { run: runDir, dataset: meta.dataset, trainSamples: train.count, testSamples: data.test.count, epochs, fixed: curve, oracle, variants: rows };
log(`fixed-u curve: ${curve.map((f) => `u=${f.u}: ${(100 * f.accuracy).toFixed(2)}% @ ${f.flopsRatio.toFixed(3)}`).join(', ')}`);
log(`oracle: ${(100 * oracle.accuracy).toFixed(2)}% @ ${oracle.meanFlopsRatio.toFixed(3)}`);
if (args.includes('--json')) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
await writeFileAtomic('.bench/controller-defaults.json', JSON.stringify(result, null, 2) + '\n');
runner.dispose();
model.dispose();
