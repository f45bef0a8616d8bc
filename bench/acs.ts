/**
 * Per-sample gated networks (adaptive channel skipping; layer skipping with `--mechanisms skip,skip-ff`) on
 * Fashion-MNIST, measured side by side in one run:
 *   1. per backbone, step 1 once: the throttleable backbone (u per batch) and the static one (u = 1);
 *      the throttled u-curve and the oracle (the cheapest u that is right, per sample) from the former;
 *   2. step 2 from the throttleable backbone (`init`), per mechanism and FLOPs target: gated accuracy and
 *      mean executed FLOPs (gates included), against the static backbone and the u-curve at equal FLOPs;
 *   3. wall-clock at batch 1 and 64 of the dynamic execution, the backbone and the masked execution (the
 *      field's form), against the FLOPs ratio; the gates' own share of FLOPs and of time;
 *   4. a training step of the gated model against PyTorch's masked version of it (bench/acs_peer.py).
 * Layer skipping (mechanisms that skip whole blocks, targets are execution rates): step 1 is the plain network
 * (every block, u = 1) trained as the skip model's backbone, so step 2 starts from it with `init`; each
 * target reports the execution rate training's sampled decisions reported against the deterministic one,
 * and is timed (the gates' cost included) against the plain network and the masked execution.
 * Usage: npm run bench:acs [-- --train 16384 --test 2000 --epochs 1 --gated-epochs 1
 *          --backbones resnet38,densenet41 --mechanisms acs-gn,acs-dg --targets 0.3,0.5,0.7
 *          --estimators sigmoid,gumbel --lr 2e-4 --gate-scale 5 --batch-size 32 --calibration 512 --results .bench/acs.json --no-peer --json]
 * (--lr and --gate-scale: step 2's learning rate and gates' logit scale.) Runs go to .bench/acs/ (replaced on
 * each bench run), results to --results (written atomically).
 */
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { train, type TrainOptions } from '../src/train/trainer.js';
import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { interpolateAccuracy } from '../src/control/curve.js';
import { evaluateRouted, routedSweep } from '../src/eval/routed.js';
import { median } from '../src/eval/latency.js';
import { makeSynthetic } from '../src/data/synthetic.js';
import { allocShared } from '../src/data/imageset.js';
import { ThreadExecutor } from '../src/train/executor.js';
import { Optimizer } from '../src/train/optimizer.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { mechanisms } from '../src/route/mechanisms.js';
import { executionRate } from '../src/route/context.js';
import { runTorchPeer } from './torch.js';
import { benchArgs, curveOf, routedFigures, scratchRuns } from './common.js';

const args = process.argv.slice(2);
const { value, num, list } = benchArgs(args);
const json = args.includes('--json');
const PEER = !args.includes('--no-peer');
const TRAIN = num('train', 16384);
const TEST = num('test', 2000);
const EPOCHS = num('epochs', 1);
const GATED_EPOCHS = num('gated-epochs', 1);
const BACKBONES = list('backbones', 'resnet38,densenet41');
const MECHANISMS = list('mechanisms', 'acs-gn,acs-dg');
const TARGETS = list('targets', '0.3,0.5,0.7').map(Number);
const ESTIMATORS = list('estimators', 'sigmoid');
// Step 2's learning rate (default: the trainer's) and the gates' logit scale (default 1).
const STEP2_LR = value('lr') === undefined ? undefined : num('lr', 0);
const GATE_SCALE = num('gate-scale', 1);
const RESULTS = value('results') ?? '.bench/acs.json';
const US = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1];
// Training batch (DenseNets on 28x28 need smaller ones: the engine's 4 GB hold about 32 samples of densenet41's step).
const BATCH = num('batch-size', 128);
const ROOT = '.bench/acs';
const log = (s: string) => process.stderr.write(s + '\n');
const skips = (mechanism: string) => mechanisms.get(mechanism).skipsBlocks === true;
// Layer skipping is timed at this target (ACS at 0.5).
const TIMED_SKIP = TARGETS.includes(0.6) ? 0.6 : TARGETS[Math.floor(TARGETS.length / 2)];

const base = scratchRuns(ROOT, { trainLimit: TRAIN, testLimit: TEST, batchSize: BATCH, calibrationSamples: num('calibration', 2048) }, log);

/** Mean ms per training step of a gated model in soft mode, gradient threads as `dynn train` uses them. */
async function gatedStepMs(model: Network, steps: number): Promise<number> {
  const data = allocShared(makeSynthetic({ count: BATCH, seed: 0, height: 28, width: 28, channels: 1 }));
  const executor = await ThreadExecutor.start(model, data, 'auto', BATCH);
  const optimizer = new Optimizer('adam', 1e-3);
  const indices = Int32Array.from({ length: BATCH }, (_, i) => i);
  const times: number[] = [];
  try {
    for (let i = 0; i < steps + 2; i++) {
      const t0 = performance.now();
      await executor.step(indices, { plans: [model.plan(1)], routing: { mode: 'soft', seed: i, efficiency: { target: 0.5, weight: 4 } } });
      await executor.update(optimizer);
      if (i >= 2) times.push(performance.now() - t0);
    }
  } finally {
    optimizer.dispose();
    await executor.close();
  }
  return median(times);
}

async function main() {
  const results: Record<string, unknown> = { cores: os.availableParallelism(), train: TRAIN, test: TEST, epochs: EPOCHS, gatedEpochs: GATED_EPOCHS, step2: { lr: STEP2_LR, gateScale: GATE_SCALE }, backbones: {} };
  for (const backbone of BACKBONES) {
    const acs = MECHANISMS.filter((m) => !skips(m));
    const layer = MECHANISMS.filter(skips);
    const entry: Record<string, unknown> = {};
    if (acs.length) Object.assign(entry, await channelSkipping(backbone, acs));
    if (layer.length) entry.layerSkipping = await layerSkipping(backbone, layer);
    (results.backbones as Record<string, unknown>)[backbone] = entry;
  }
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

/**
 * Layer skipping on one backbone: step 1 once (the plain network as the skip model's backbone: every block,
 * u = 1), then per mechanism and target step 2 from it; accuracy, the FLOPs ratio (gates included), the
 * execution rate training reported against the deterministic one, and the timing at one target.
 */
async function layerSkipping(backbone: string, names: string[]) {
  const stepOne = `${backbone}/skip-plain`;
  log(`${backbone}: layer skipping, step 1 (the plain network, every block), ${EPOCHS} epoch(s) on ${TRAIN} images`);
  const plain = await train(base(stepOne, { model: backbone, modelArgs: { dynamic: names[0] }, epochs: EPOCHS, pretrainEpochs: EPOCHS, schedule: 'vanilla', evalUs: [1] }));
  const stepOneAccuracy = evaluateRouted(plain.model, plain.dataset.test, { mode: 'full' }).accuracy;
  plain.model.dispose();
  // The plain network trained as long as step 1 and step 2 together (the same fine-tuning, no gate): the reference.
  const longer = await train(base(`${backbone}/skip-plain-longer`, { model: backbone, modelArgs: { dynamic: names[0] }, init: path.join(ROOT, stepOne), epochs: GATED_EPOCHS, pretrainEpochs: GATED_EPOCHS, schedule: 'vanilla', lr: STEP2_LR, evalUs: [1] }));
  const plainAccuracy = evaluateRouted(longer.model, longer.dataset.test, { mode: 'full' }).accuracy;
  longer.model.dispose();
  log(`  plain network ${(100 * stepOneAccuracy).toFixed(2)}% after step 1, ${(100 * plainAccuracy).toFixed(2)}% after as many epochs as the gated runs`);
  const points: Record<string, unknown>[] = [];
  for (const mechanism of names) {
    for (const target of TARGETS) {
      log(`  step 2: ${mechanism}, target ${target} (blocks executed), ${GATED_EPOCHS} epoch(s) from step 1`);
      const option = mechanisms.get(mechanism).efficiency.option;
      const r = await train(
        base(`${backbone}/${mechanism}-${target}`, {
          model: backbone,
          modelArgs: { dynamic: mechanism, gateScale: GATE_SCALE },
          lr: STEP2_LR,
          init: path.join(ROOT, stepOne),
          epochs: GATED_EPOCHS,
          [option]: target,
          evalUs: [1],
        }),
      );
      const e = evaluateRouted(r.model, r.dataset.test);
      const last = r.meta.history[r.meta.history.length - 1].gated;
      const point: Record<string, unknown> = {
        mechanism,
        target,
        ...routedFigures(e),
        againstPlain: e.accuracy - plainAccuracy,
        executionRate: { training: last?.trainExecutionRate, inference: executionRate(e.skipRates) },
      };
      log(
        `    ${(100 * e.accuracy).toFixed(2)}% (plain ${(100 * plainAccuracy).toFixed(2)}%) at FLOPs ${e.flopsRatio.toFixed(3)} (gates ${e.gateShare.toFixed(3)}); ` +
          `blocks executed: training ${last?.trainExecutionRate?.toFixed(3)}, inference ${executionRate(e.skipRates).toFixed(3)}`,
      );
      if (target === TIMED_SKIP) point.latency = timeRouted(r.model, r.dataset.test, mechanism);
      points.push(point);
      r.model.dispose();
    }
  }
  return { plain: { accuracy: plainAccuracy, afterStepOne: stepOneAccuracy }, points };
}

/** Wall-clock of a gated model at its trained threshold against the backbone and the masked execution. */
function timeRouted(model: Network, test: ImageSet, mechanism: string) {
  log(`    timing ${mechanism}: batch 1 and 64 (dynamic, full, masked)`);
  const s = routedSweep(model, test, [0.5]);
  const [p] = s.points;
  const timeRatio = { batch1: p.latencyMs.batch1 / s.full.latencyMs.batch1, batch64: p.latencyMs.batch64 / s.full.latencyMs.batch64 };
  const latency = { flopsRatio: p.flopsRatio, dynamicMs: p.latencyMs, fullMs: s.full.latencyMs, maskedMs: s.masked.latencyMs, timeRatio, maskedRatio: s.masked.latencyMs.batch64 / s.full.latencyMs.batch64, timePerFlops: timeRatio.batch64 / p.flopsRatio };
  log(`    FLOPs ratio ${p.flopsRatio.toFixed(3)}; time ratio ${timeRatio.batch1.toFixed(3)} @1, ${timeRatio.batch64.toFixed(3)} @64 (time/FLOPs ${latency.timePerFlops.toFixed(2)}x); masked ${latency.maskedRatio.toFixed(3)} @64`);
  return latency;
}

/** Adaptive channel skipping on one backbone (steps 1-4 of the header). */
async function channelSkipping(backbone: string, names: string[]) {
  {
    log(`${backbone}: step 1, ${EPOCHS} epoch(s) on ${TRAIN} images`);
    log('  static (u = 1)');
    const fixed = await train(base(`${backbone}/static`, { model: backbone, epochs: EPOCHS, schedule: 'vanilla' }));
    const staticAccuracy = evaluateRouted(fixed.model, fixed.dataset.test, { mode: 'full' }).accuracy;
    fixed.model.dispose();
    log('  throttleable (u ~ U(0, 1] per batch)');
    const throttle = await train(base(`${backbone}/throttle`, { model: backbone, epochs: EPOCHS }));
    const test = throttle.dataset.test;
    const { curve, oracle } = curveOf(throttle.model, test, US);
    throttle.model.dispose();
    log(`  static ${(100 * staticAccuracy).toFixed(2)}%; u-curve ${curve.map((p) => `${p.u}: ${(100 * p.accuracy).toFixed(1)}% @${p.flopsRatio.toFixed(2)}`).join(', ')}; oracle ${(100 * oracle.accuracy).toFixed(2)}% @${oracle.flopsRatio.toFixed(3)}`);

    const gated: Record<string, unknown>[] = [];
    let timing: Record<string, unknown> | null = null;
    for (const mechanism of names) {
      for (const estimator of ESTIMATORS) {
        for (const target of TARGETS) {
          log(`  step 2: ${mechanism}, ${estimator}, target ${target}, ${GATED_EPOCHS} epoch(s) from the throttleable backbone`);
          const r = await train(
            base(`${backbone}/${mechanism}-${estimator}-${target}`, {
              model: backbone,
              modelArgs: { dynamic: mechanism, gateScale: GATE_SCALE },
              lr: STEP2_LR,
              init: path.join(ROOT, `${backbone}/throttle`),
              epochs: GATED_EPOCHS,
              flopsTarget: target,
              gateEstimator: estimator as TrainOptions['gateEstimator'],
            }),
          );
          const e = evaluateRouted(r.model, r.dataset.test);
          const point = {
            mechanism,
            estimator,
            target,
            ...routedFigures(e),
            throttledAtSameFlops: interpolateAccuracy(curve, e.flopsRatio),
          };
          gated.push(point);
          log(
            `    ${(100 * e.accuracy).toFixed(2)}% at FLOPs ${e.flopsRatio.toFixed(3)} (${e.flopsMin.toFixed(2)}..${e.flopsMax.toFixed(2)}, gates ${e.gateShare.toFixed(3)}); ` +
              `u-curve at that FLOPs ${(100 * point.throttledAtSameFlops).toFixed(2)}%, static ${(100 * staticAccuracy).toFixed(2)}%`,
          );
          if (!timing && target === 0.5) timing = await timeGated(r.model, r.dataset.test, backbone, mechanism);
          r.model.dispose();
        }
      }
    }
    return { static: { accuracy: staticAccuracy }, curve, oracle, gated, timing };
  }
}

/** Wall-clock of one gated model: dynamic, full and masked, the gates' time, and a training step against PyTorch's masked peer. */
async function timeGated(model: Network, test: ImageSet, backbone: string, mechanism: string) {
  log(`    timing ${mechanism}: batch 1 and 64 (dynamic, full, masked; threshold 0 for the gates' time)`);
  const s = routedSweep(model, test, [0.5, 0]);
  const [p, open] = s.points;
  const latency = {
    flopsRatio: p.flopsRatio,
    dynamicMs: p.latencyMs,
    fullMs: s.full.latencyMs,
    maskedMs: s.masked.latencyMs,
    timeRatio: { batch1: p.latencyMs.batch1 / s.full.latencyMs.batch1, batch64: p.latencyMs.batch64 / s.full.latencyMs.batch64 },
    maskedRatio: s.masked.latencyMs.batch64 / s.full.latencyMs.batch64,
    // At threshold 0 every group runs: what the time exceeds the backbone's by is the gates' (and the dispatch's).
    gateTimeShare: { batch1: open.latencyMs.batch1 / s.full.latencyMs.batch1 - 1, batch64: open.latencyMs.batch64 / s.full.latencyMs.batch64 - 1 },
    gateFlopsShare: p.gateShare,
  };
  log(
    `    FLOPs ratio ${p.flopsRatio.toFixed(3)}; time ratio ${latency.timeRatio.batch1.toFixed(3)} @1, ${latency.timeRatio.batch64.toFixed(3)} @64 ` +
      `(time/FLOPs ${(latency.timeRatio.batch64 / p.flopsRatio).toFixed(2)}x); masked ${latency.maskedRatio.toFixed(3)} @64; ` +
      `gates: FLOPs ${p.gateShare.toFixed(3)}, time ${latency.gateTimeShare.batch1.toFixed(3)} @1, ${latency.gateTimeShare.batch64.toFixed(3)} @64`,
  );
  const rounds: { dynnMs: number; torchMs: number }[] = [];
  let torch = 'ok';
  // dynn and PyTorch take turns, so each ratio compares runs a few seconds apart (this machine drifts).
  for (let r = 0; r < 2; r++) {
    const dynnMs = await gatedStepMs(model, 5);
    const peer = !PEER
      ? { ok: false as const, reason: 'PyTorch peer not run (--no-peer)' }
      : backbone === 'resnet38' && mechanism === 'acs-gn'
        ? await runTorchPeer({ mode: 'acs-train-step', batch: BATCH, steps: 5, warmup: 2 }) : { ok: false as const, reason: `the PyTorch peer is resnet38 with acs-gn gates only, not ${backbone} with ${mechanism}` };
    if (!peer.ok) torch = peer.reason;
    rounds.push({ dynnMs, torchMs: peer.ok ? (peer.result.meanMs as number) : NaN });
    log(`    train step @${BATCH}: dynn ${dynnMs.toFixed(0)} ms` + (peer.ok ? `, PyTorch masked ${(peer.result.meanMs as number).toFixed(0)} ms` : `; ${torch}`));
  }
  const step = { dynnMs: median(rounds.map((r) => r.dynnMs)), torchMaskedMs: median(rounds.map((r) => r.torchMs)), ratio: median(rounds.map((r) => r.dynnMs / r.torchMs)), torch };
  return { latency, trainStep: step };
}

tf.enableProdMode();
await main();
process.exit(0);
