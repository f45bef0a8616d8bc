/**
 * Gated multi-branch networks and adaptive resolution on Fashion-MNIST, measured side by side in one run:
 *   1. the routes first: the branches of a multi-branch network (sandwich rule, the largest teaching the
 *      others) and one resnet-d at every resolution, in their pretraining epochs (routing `full`);
 *   2. per FLOPs target, the gate with the routes frozen (`init` from step 1): accuracy and mean executed
 *      FLOPs (gate included) at the trained threshold, against the full network (the largest branch, the full
 *      resolution) and, for the branches, the smallest branch's confidence cascade (control/cascade.ts) and
 *      a throttleable vgg-w at the same FLOPs (its u-curve, interpolated), with each one's parameters;
 *   3. wall-clock at batch 1 and 64 of the gated execution against the full network (`routedSweep`).
 * Usage: npm run bench:switches [-- --train 6000 --test 1000 --epochs 2 --gated-epochs 1 --targets 0.3,0.5,0.7
 *          --lr 0.01 --only branch|resolution --reuse --results .bench/switches.json --json]
 * (--lr: the gate epochs' learning rate; only the gate learns then.) Runs go to .bench/switches/ (replaced on
 * each bench run), results to --results (written atomically).
 */
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { train, type TrainOptions } from '../src/train/trainer.js';
import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { MixedRunner } from '../src/control/runner.js';
import { levelTable, fixedCurve } from '../src/control/table.js';
import { cascadeFromTable } from '../src/control/cascade.js';
import { interpolateAccuracy } from '../src/control/curve.js';
import { routedSweep } from '../src/eval/routed.js';
import { WholeSwitch } from '../src/route/whole.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import { existsSync } from 'node:fs';
import { initEngine } from '../src/engine/backend.js';
import { benchArgs, scratchRuns } from './common.js';

const args = process.argv.slice(2);
const { value, num } = benchArgs(args);
const json = args.includes('--json');
const TRAIN = num('train', 6000);
const TEST = num('test', 1000);
const EPOCHS = num('epochs', 2);
const GATED_EPOCHS = num('gated-epochs', 1);
const TARGETS = (value('targets') ?? '0.3,0.5,0.7').split(',').map(Number);
const GATE_LR = num('lr', 0.01);
const ONLY = value('only');
// Step 1's runs from an earlier bench run, when there (the gate steps and the timing are run again).
const REUSE = args.includes('--reuse');
const RESULTS = value('results') ?? '.bench/switches.json';
const ROOT = '.bench/switches';
const BRANCHES = 'vgg-w:widths=8,8,16,16:hidden=64,vgg-w:widths=16,16,32,32:hidden=128,vgg-w';
const RESOLUTIONS = [28, 21, 14];
const log = (s: string) => process.stderr.write(s + '\n');
const pct = (a: number) => `${(100 * a).toFixed(2)}%`;

const base = scratchRuns(ROOT, { trainLimit: TRAIN, testLimit: TEST, evalUs: [1] }, log);

const params = (m: Network) => m.weights().filter((w) => w.trainable).reduce((a, w) => a + w.variable.size, 0);

/** Step 1 (the routes), then a gate per target; each gated model timed against its full network. */
async function mechanism(name: string, model: string, modelArgs: TrainOptions['modelArgs'], test: (m: Network, t: ImageSet) => Record<string, unknown>) {
  log(`${name}: step 1, the routes (${EPOCHS} epoch(s), sandwich rule, ${TRAIN} images)${REUSE ? ', reused when there' : ''}`);
  const dir = path.join(ROOT, `${name}/routes`);
  const routes = REUSE && existsSync(path.join(dir, 'checkpoint.json'))
    ? { ...(await loadRun(dir)), dataset: await loadDataset('fashion-mnist', { trainLimit: TRAIN, testLimit: TEST }) }
    : await train(base(`${name}/routes`, { model, modelArgs, epochs: EPOCHS, pretrainEpochs: EPOCHS, schedule: 'sandwich', sandwichWidths: 1 }));
  const sw = routes.model.layers[0] as WholeSwitch<never>;
  const full = sw.routeMacs(sw.routes - 1);
  const table = levelTable(new MixedRunner(routes.model), routes.dataset.test, routes.model.levelUtilizations());
  const each = fixedCurve(table).map((p, k) => ({ route: k, accuracy: p.accuracy, flopsRatio: sw.routeMacs(k) / full }));
  log(`  routes alone: ${each.map((p) => `${p.route}: ${pct(p.accuracy)} @${p.flopsRatio.toFixed(3)}`).join(', ')}`);
  const extra = test(routes.model, routes.dataset.test);
  const totalParams = params(routes.model);
  routes.model.dispose();
  const gated: Record<string, unknown>[] = [];
  for (const target of TARGETS) {
    log(`  step 2: the gate, routes frozen, target ${target}, ${GATED_EPOCHS} epoch(s), lr ${GATE_LR}`);
    const r = await train(base(`${name}/gate-${target}`, { model, modelArgs, init: path.join(ROOT, `${name}/routes`), epochs: GATED_EPOCHS, flopsTarget: target, lr: GATE_LR }));
    const s = routedSweep(r.model, r.dataset.test, [0.5]);
    const p = s.points[0];
    const point = {
      target,
      accuracy: p.accuracy,
      flopsRatio: p.flopsRatio,
      gateShare: p.gateShare,
      routeShare: routeShares(r.model, r.dataset.test),
      latencyMs: p.latencyMs,
      full: s.full,
      timeRatio: { batch1: p.latencyMs.batch1 / s.full.latencyMs.batch1, batch64: p.latencyMs.batch64 / s.full.latencyMs.batch64 },
      masked: s.masked.latencyMs.batch64 / s.full.latencyMs.batch64,
    };
    log(
      `    ${pct(p.accuracy)} at FLOPs ${p.flopsRatio.toFixed(3)} (gate ${p.gateShare.toFixed(3)}; routes ${point.routeShare.map((v) => v.toFixed(2)).join('/')}); full ${pct(s.full.accuracy)}; ` +
        `time ratio ${point.timeRatio.batch1.toFixed(3)} @1, ${point.timeRatio.batch64.toFixed(3)} @64 (${(point.timeRatio.batch64 / p.flopsRatio).toFixed(2)}x the FLOPs ratio)`,
    );
    gated.push(point);
    r.model.dispose();
  }
  return { params: totalParams, routes: each, gated, ...extra };
}

/** Share of test samples on each route at the trained threshold. */
function routeShares(model: Network, test: ImageSet): number[] {
  const sw = model.layers[0] as WholeSwitch<never>;
  const counts = new Array<number>(sw.routes).fill(0);
  const { RoutingState } = routing;
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  for (let start = 0; start < test.count; start += 500) {
    const n = Math.min(500, test.count - start);
    const x = tf.tensor(Float32Array.from(test.images.subarray(start * per, (start + n) * per), (v) => v / 255), [n, ...model.inputShape]);
    const r = RoutingState.start('hard', n, { threshold: 0.5 });
    tf.tidy(() => {
      model.forward(x, model.plan(1), { routing: r });
    });
    x.dispose();
    for (const k of r.decisions.get(sw.name)!) counts[k]++;
  }
  return counts.map((c) => c / test.count);
}

const routing = await import('../src/route/context.js');

async function main() {
  const results: Record<string, unknown> = { cores: os.availableParallelism(), train: TRAIN, test: TEST, epochs: EPOCHS, gatedEpochs: GATED_EPOCHS, gateLr: GATE_LR };
  if (ONLY !== 'resolution') {
    results.branch = await mechanism('branch', 'multi-branch', { branches: BRANCHES }, (m, test) => {
      // The gate as the smallest branch's confidence: a cascade over the branches, cheapest first.
      const table = levelTable(new MixedRunner(m), test, m.levelUtilizations());
      const sw = m.layers[0] as WholeSwitch<never>;
      const full = sw.routeMacs(sw.routes - 1);
      const cascade = [0.7, 0.9, 0.97].map((threshold) => {
        const c = cascadeFromTable(table, table.us.map((_, k) => k), threshold);
        const right = Array.from(c.action).reduce((a, k, i) => a + table.correct[k][i], 0);
        return { threshold, accuracy: right / table.count, flopsRatio: c.macs.reduce((a, b) => a + b, 0) / table.count / full };
      });
      log(`  cascade (smallest branch's confidence): ${cascade.map((c) => `t=${c.threshold}: ${pct(c.accuracy)} @${c.flopsRatio.toFixed(3)}`).join(', ')}`);
      return { cascade };
    });
    log('throttleable vgg-w (u per batch), the same data and epochs');
    const t = await train(base('vgg-w', { model: 'vgg-w', epochs: EPOCHS }));
    const curve = fixedCurve(levelTable(new MixedRunner(t.model), t.dataset.test, [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1]));
    const b = results.branch as { gated: { flopsRatio: number; vggAtSameFlops?: number }[] };
    for (const g of b.gated) g.vggAtSameFlops = interpolateAccuracy(curve, g.flopsRatio);
    log(`  vgg-w u-curve: ${curve.map((p) => `${p.u}: ${pct(p.accuracy)} @${p.flopsRatio.toFixed(2)}`).join(', ')}; at the gated FLOPs: ${b.gated.map((g) => pct(g.vggAtSameFlops!)).join(', ')}`);
    results.throttleable = { model: 'vgg-w', params: params(t.model), curve };
    t.model.dispose();
  }
  if (ONLY !== 'branch') results.resolution = await mechanism('resolution', 'resnet-d', { dynamic: 'resolution', resolutions: RESOLUTIONS }, () => ({}));
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

tf.enableProdMode();
await initEngine('auto');
await main();
process.exit(0);
