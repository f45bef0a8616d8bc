/**
 * Per-sample utilization, still batched: the time of a batch whose samples run at different u (grouped by
 * level, each group through its cached frozen subnet, results put back in order) against a batch run at one
 * fixed u of the same mean FLOPs. No level has exactly that mean, so the fixed-u time is interpolated
 * linearly (in FLOPs) between the two levels around it. Also shown: the same samples one at a time.
 * Usage: node dist/bench/control.js [--run DIR] [--batch 256] [--reps 20] [--json]. Writes .bench/control.json.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import type { Network } from '../src/models/network.js';
import { loadRun } from '../src/train/run.js';
import { median } from '../src/eval/latency.js';
import { MixedRunner } from '../src/control/runner.js';
import { actionSet } from '../src/control/actions.js';
import { Rng } from '../src/util/rng.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs } from './common.js';

const args = process.argv.slice(2);
const { value: opt, int } = benchArgs(args);
const BATCH = int('batch', 256);
const REPS = int('reps', 20);
const json = args.includes('--json');
const log = (s: string) => process.stderr.write(s + '\n');

/** Median ms of `fn` (which must read its result back), after 3 untimed runs. */
function time(fn: () => void, reps = REPS): number {
  for (let i = 0; i < 3; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  return median(t);
}

function mixCase(runner: MixedRunner, x: tf.Tensor, name: string, us: number[], fixedMs: Map<number, number>, levels: number[]) {
  const macs = us.reduce((a, u) => a + runner.macs(u), 0) / us.length;
  const mixedMs = time(() => {
    const y = runner.predict(x, us);
    y.dataSync();
    y.dispose();
  });
  // The two levels whose FLOPs bracket the mix's mean.
  const byMacs = [...levels].sort((a, b) => runner.macs(a) - runner.macs(b));
  let lo = byMacs[0];
  let hi = byMacs[byMacs.length - 1];
  for (const u of byMacs) {
    if (runner.macs(u) <= macs) lo = u;
    if (runner.macs(u) >= macs && runner.macs(hi) >= runner.macs(u)) hi = u;
  }
  const [mlo, mhi] = [runner.macs(lo), runner.macs(hi)];
  const f = mhi === mlo ? 0 : (macs - mlo) / (mhi - mlo);
  const fixedEq = fixedMs.get(lo)! + f * (fixedMs.get(hi)! - fixedMs.get(lo)!);
  const groups = new Set(us.map((u) => runner.key(u))).size;
  return { name, groups, meanFlopsRatio: macs / runner.fullMacs, mixedMs, fixedSameFlopsMs: fixedEq, bracket: [lo, hi], ratio: mixedMs / fixedEq };
}

async function main() {
  const engine = await initEngine();
  const runDir = opt('run');
  const model: Network = runDir ? (await loadRun(runDir)).model : createModel('vgg-w');
  const runner = new MixedRunner(model);
  const x = tf.randomUniform([BATCH, ...model.inputShape], 0, 1, 'float32', 1);
  const levels = [...new Set(actionSet().map((u) => runner.key(u)))].map((k) => actionSet().find((u) => runner.key(u) === k)!);
  log(`mixed-u batch of ${BATCH} vs fixed u of the same mean FLOPs: ${model.config.model}, engine ${engine}, ${REPS} reps (median)`);
  const fixedMs = new Map<number, number>();
  for (const u of levels) {
    fixedMs.set(u, time(() => {
      const y = runner.subnet(u).predict(x);
      y.dataSync();
      y.dispose();
    }));
    log(`  fixed u=${u}: FLOPs ratio ${(runner.macs(u) / runner.fullMacs).toFixed(3)}, ${fixedMs.get(u)!.toFixed(1)} ms`);
  }
  const rng = new Rng(0);
  const actions = actionSet();
  const cases = [
    mixCase(runner, x, 'uniform over u_k = k/10', Array.from({ length: BATCH }, () => actions[rng.int(actions.length)]), fixedMs, levels),
    mixCase(runner, x, 'half u=0.3, half u=1', Array.from({ length: BATCH }, (_, i) => (i % 2 ? 1 : 0.3)), fixedMs, levels),
    mixCase(runner, x, 'mostly low: 80% u=0.2, 20% u=0.7', Array.from({ length: BATCH }, () => (rng.next() < 0.8 ? 0.2 : 0.7)), fixedMs, levels),
  ];
  for (const c of cases) {
    log(
      `  ${c.name}: ${c.groups} groups, mean FLOPs ratio ${c.meanFlopsRatio.toFixed(3)}: mixed ${c.mixedMs.toFixed(1)} ms, ` +
        `fixed-u of the same FLOPs ${c.fixedSameFlopsMs.toFixed(1)} ms (between u=${c.bracket[0]} and u=${c.bracket[1]}): ${c.ratio.toFixed(2)}x`,
    );
  }
  const us = Array.from({ length: BATCH }, () => actions[rng.int(actions.length)]);
  const rows = tf.unstack(x).map((r) => tf.expandDims(r, 0));
  const oneAtATimeMs = time(() => {
    rows.forEach((r, i) => {
      const y = runner.subnet(us[i]).predict(r);
      y.dataSync();
      y.dispose();
    });
  }, 3);
  const batchedMs = time(() => {
    const y = runner.predict(x, us);
    y.dataSync();
    y.dispose();
  });
  tf.dispose(rows);
  log(`  the same uniform mix one sample at a time: ${oneAtATimeMs.toFixed(1)} ms (${(oneAtATimeMs / batchedMs).toFixed(1)}x the batched ${batchedMs.toFixed(1)} ms)`);
  const results = { engine, model: model.config.model, batch: BATCH, reps: REPS, fixedMs: Object.fromEntries(fixedMs), cases, oneAtATimeMs, batchedMs };
  x.dispose();
  runner.dispose();
  model.dispose();
  await writeFileAtomic('.bench/control.json', JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

await main();
process.exit(0);
