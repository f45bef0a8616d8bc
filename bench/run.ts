/**
 * dynn benchmarks: ratios measured side by side in one run, never absolute targets in tests.
 *   1. training ms/step of vgg-w at batch 128, u ~ U(0,1] per batch, against PyTorch running the same
 *      network sliced the same way over the same u sequence (skipped with a message without PyTorch);
 *   2. the same for resnet-d (its depth-gated blocks skipped as its plan says; bench/resnet_peer.py);
 *   3. the same for a gated model of adaptive channel skipping (resnet38 with acs-gn gates, soft decisions as
 *      training takes them) against PyTorch's masked version of it (bench/acs_peer.py), with the gates open
 *      (every group runs: the same arithmetic on both sides) and shifted to run about half the groups;
 *   4. inference latency(u)/latency(1) against FLOPs(u)/FLOPs(1), TF.js and PyTorch.
 * Usage: npm run bench [-- --steps 30 --rounds 3 --json]. Results also go to .bench/results.json (written atomically).
 */
import os from 'node:os';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { allLayers, type Network } from '../src/models/network.js';
import type { Plan } from '../src/layers/types.js';
import type { StepSpec } from '../src/train/step.js';
import { LogitGate } from '../src/route/gates.js';
import { makeSynthetic } from '../src/data/synthetic.js';
import { allocShared } from '../src/data/imageset.js';
import { ThreadExecutor, LocalExecutor, type GradientExecutor } from '../src/train/executor.js';
import { Optimizer } from '../src/train/optimizer.js';
import { sampleU } from '../src/train/schedule.js';
import { measureLatencies, median } from '../src/eval/latency.js';
import { Rng } from '../src/util/rng.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { runTorchPeer, type PeerConfig } from './torch.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const json = args.includes('--json');
const STEPS = flag('steps', 30);
const ROUNDS = flag('rounds', 3);
/**
 * Untimed steps before each round's timed ones, on both sides: one at each of vgg-w's 8 levels, so that every
 * level's kernels are set up once (dynn's blocked-layout sessions, PyTorch's per-shape set-up), then 5 drawn
 * like the rest.
 */
const LEVEL_US = Array.from({ length: 8 }, (_, i) => (i + 1) / 8);
const WARMUP = LEVEL_US.length + 5;
const BATCH = 128;
const US = [0.125, 0.25, 0.5, 0.75, 1];
/** The gated model's steps take about ten times vgg-w's: fewer of them. */
const GATED_STEPS = Math.max(3, Math.round(STEPS / 4));
const GATED_WARMUP = 3;
/**
 * Added to every acs-gn gate logit (open at 5 when built) for the "half" setting: nested decisions then keep
 * each further group with probability sigmoid(1.9) = 0.87, about half of the inner channels on average.
 */
const HALF_SHIFT = -3.1;
const log = (s: string) => process.stderr.write(s + '\n');

/** The steps of one timing: what each step runs (the first `warmup` untimed). */
interface Work {
  steps: (Plan | StepSpec)[];
  warmup: number;
}

/** Mean ms per optimizer step (gradient + update) over `work`, and the mean executed FLOPs ratio of a routed model. */
async function trainStepMs(executor: GradientExecutor, work: Work): Promise<{ ms: number; flopsRatio?: number }> {
  const optimizer = new Optimizer('adam', 1e-3);
  const indices = Int32Array.from({ length: BATCH }, (_, i) => i);
  const times: number[] = [];
  const ratios: number[] = [];
  for (let i = 0; i < work.steps.length; i++) {
    const t0 = performance.now();
    const r = await executor.step(indices, work.steps[i]);
    await executor.update(optimizer);
    if (i < work.warmup) continue;
    times.push(performance.now() - t0);
    if (r.flopsRatio !== undefined) ratios.push(r.flopsRatio);
  }
  optimizer.dispose();
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  return { ms: mean(times), flopsRatio: ratios.length ? mean(ratios) : undefined };
}

interface Round {
  dynnMs: number;
  torchMs: number;
  ratio: number;
  torchConfig?: PeerConfig;
  /** A routed model's executed share of the FLOPs in training's decisions. */
  flopsRatio?: number;
}

/**
 * Training rounds of `model` on 2 worker threads over the u sequence `us`, each followed by the PyTorch peer
 * (`peer`: its mode and how it learns the same steps) at its best on the same steps. They alternate round by
 * round: this machine's speed drifts by tens of percent over minutes, so each ratio compares runs a few
 * seconds apart, and the median ratio is reported.
 */
async function againstTorch(model: Network, data: ReturnType<typeof allocShared>, engine: string, work: Work, peer: Record<string, unknown>) {
  const rounds: Round[] = [];
  let threadCount = 0;
  let torchReason = 'ok';
  for (let r = 0; r < ROUNDS; r++) {
    const threads = await ThreadExecutor.start(model, data, engine, BATCH);
    threadCount = threads.threads;
    const { ms: dynnMs, flopsRatio } = await trainStepMs(threads, work);
    await threads.close();
    const torchTrain = await runTorchPeer({ batch: BATCH, steps: work.steps.length - work.warmup, warmup: work.warmup, seed: 0, ...peer });
    const torchMs = torchTrain.ok ? (torchTrain.result.meanMs as number) : NaN;
    if (!torchTrain.ok) torchReason = torchTrain.reason;
    const torchConfig: PeerConfig | undefined = torchTrain.ok ? torchTrain.result.config : undefined;
    rounds.push({ dynnMs, torchMs, ratio: dynnMs / torchMs, torchConfig, ...(flopsRatio !== undefined && { flopsRatio }) });
    log(
      `  round ${r + 1}: dynn ${threadCount} threads ${dynnMs.toFixed(1)} ms/step` +
        (flopsRatio !== undefined ? ` (FLOPs ratio ${flopsRatio.toFixed(3)})` : '') +
        (torchConfig ? `, PyTorch at its best (${torchConfig.threads} threads, ${torchConfig.waitPolicy}) ${torchMs.toFixed(1)} ms/step, ratio ${(dynnMs / torchMs).toFixed(2)}x` : ''),
    );
  }
  return { rounds, threadCount, torchReason };
}

async function main() {
  const engine = await initEngine();
  const rng = new Rng(0);
  const us = [...LEVEL_US, ...Array.from({ length: WARMUP - LEVEL_US.length + STEPS }, () => sampleU('uniform', rng, 0, 0.2))];
  const data = allocShared(makeSynthetic({ count: BATCH, seed: 0 }));
  const model = createModel('vgg-w');
  const results: Record<string, unknown> = { engine, cores: os.availableParallelism(), steps: STEPS, batch: BATCH };

  log(`training step, vgg-w, batch ${BATCH}, u ~ U(0,1] (${STEPS} steps after ${WARMUP} warm-up, ${ROUNDS} rounds), engine ${engine}`);
  const planned = (m: Network): Work => ({ steps: us.map((u) => m.plan(u)), warmup: WARMUP });
  const { rounds, threadCount, torchReason } = await againstTorch(model, data, engine, planned(model), { mode: 'train-step', u: us });
  const parallelMs = median(rounds.map((r) => r.dynnMs));
  const singleMs = (await trainStepMs(new LocalExecutor(model, data, BATCH), planned(model))).ms;
  // The same workers without the ONNX Runtime convolutions (DYNN_ORT_KERNELS is read when a worker loads them).
  process.env.DYNN_ORT_KERNELS = '0';
  const xnnpack = await ThreadExecutor.start(model, data, engine, BATCH);
  const xnnpackMs = (await trainStepMs(xnnpack, planned(model))).ms;
  await xnnpack.close();
  delete process.env.DYNN_ORT_KERNELS;
  const ratio = median(rounds.map((r) => r.ratio));
  results.train = {
    dynnMsPerStep: parallelMs,
    dynnThreads: threadCount,
    dynnSingleThreadMsPerStep: singleMs,
    dynnWithoutOrtKernelsMsPerStep: xnnpackMs,
    torchMsPerStep: median(rounds.map((r) => r.torchMs)),
    ratioToTorch: ratio,
    rounds,
    torch: torchReason,
  };
  log(`  dynn ${threadCount} threads: ${parallelMs.toFixed(1)} ms/step (median); 1 thread: ${singleMs.toFixed(1)} ms/step; without the ONNX Runtime convolutions: ${xnnpackMs.toFixed(1)} ms/step`);
  log(torchReason === 'ok' ? `  median ratio dynn/PyTorch ${ratio.toFixed(2)}x` : `  PyTorch skipped: ${torchReason}`);

  // resnet-d on the same u sequence: its depth-gated blocks skipped as its plan says, the peer told which.
  log(`training step, resnet-d, batch ${BATCH}, the same u sequence (${ROUNDS} rounds)`);
  const resnet = createModel('resnet-d');
  const depth = us.map((u) => [...resnet.plan(u).depth.values()]);
  const r = await againstTorch(resnet, data, engine, planned(resnet), { mode: 'resnet-train-step', depth });
  const resnetRatio = median(r.rounds.map((x) => x.ratio));
  results.trainResnetD = {
    dynnMsPerStep: median(r.rounds.map((x) => x.dynnMs)),
    torchMsPerStep: median(r.rounds.map((x) => x.torchMs)),
    ratioToTorch: resnetRatio,
    rounds: r.rounds,
    torch: r.torchReason,
  };
  log(r.torchReason === 'ok' ? `  median ratio dynn/PyTorch ${resnetRatio.toFixed(2)}x` : `  PyTorch skipped: ${r.torchReason}`);
  resnet.dispose();

  // A gated model of adaptive channel skipping, soft decisions at a FLOPs target of 0.5 as training takes them.
  log(`training step, resnet38 with acs-gn gates, batch ${BATCH}, against PyTorch's masked version (${GATED_STEPS} steps after ${GATED_WARMUP}, ${ROUNDS} rounds)`);
  const gated = createModel('resnet38', { dynamic: 'acs-gn' });
  const soft: Work = {
    steps: Array.from({ length: GATED_WARMUP + GATED_STEPS }, (_, i) => ({ plans: [gated.plan(1)], routing: { mode: 'soft' as const, seed: i, efficiency: { target: 0.5, weight: 4 } } })),
    warmup: GATED_WARMUP,
  };
  const gatedResults: Record<string, unknown> = {};
  for (const setting of ['open', 'half'] as const) {
    if (setting === 'half') for (const l of allLayers(gated.layers)) if (l instanceof LogitGate) l.shiftLogits(HALF_SHIFT);
    log(`  gates ${setting === 'open' ? 'open (every group runs)' : 'shifted to run about half the groups'}`);
    const g = await againstTorch(gated, data, engine, soft, { mode: 'acs-train-step' });
    const ratio = median(g.rounds.map((x) => x.ratio));
    gatedResults[setting] = {
      dynnMsPerStep: median(g.rounds.map((x) => x.dynnMs)),
      torchMaskedMsPerStep: median(g.rounds.map((x) => x.torchMs)),
      flopsRatio: median(g.rounds.map((x) => x.flopsRatio ?? NaN)),
      ratioToTorch: ratio,
      rounds: g.rounds,
      torch: g.torchReason,
    };
    log(g.torchReason === 'ok' ? `  median ratio dynn/PyTorch masked ${ratio.toFixed(2)}x` : `  PyTorch skipped: ${g.torchReason}`);
  }
  results.trainGatedAcs = gatedResults;
  gated.dispose();

  log(`inference latency per u, batch 1 and ${BATCH}`);
  const full = model.cost(1).flops;
  const torchLat = await runTorchPeer({ mode: 'latency', us: US, batches: [1, BATCH], reps: 20, warmup: 3 });
  const dynn1 = measureLatencies(model, US, 1, { reps: 50 });
  const dynnN = measureLatencies(model, US, BATCH, { reps: 15 });
  const points = US.map((u, k) => ({
    u,
    flopsRatio: model.cost(u).flops / full,
    dynnMs: { batch1: dynn1[k], [`batch${BATCH}`]: dynnN[k] },
    torchMs: torchLat.ok ? { batch1: torchLat.result.latencyMs[String(u)]?.['1'], [`batch${BATCH}`]: torchLat.result.latencyMs[String(u)]?.[String(BATCH)] } : null,
  }));
  const top = points[points.length - 1];
  const rows = points.map((p) => ({
    ...p,
    dynnLatencyRatio: p.dynnMs[`batch${BATCH}`] / top.dynnMs[`batch${BATCH}`],
    torchLatencyRatio: p.torchMs && top.torchMs ? p.torchMs[`batch${BATCH}`] / top.torchMs[`batch${BATCH}`] : NaN,
    dynnToTorchBatch1: p.torchMs ? p.dynnMs.batch1 / p.torchMs.batch1 : NaN,
    dynnToTorchBatchN: p.torchMs ? p.dynnMs[`batch${BATCH}`] / p.torchMs[`batch${BATCH}`] : NaN,
  }));
  results.latency = { points: rows, torch: torchLat.ok ? 'ok' : torchLat.reason, ...(torchLat.ok && { torchConfig: torchLat.result.config, torchConfigs: torchLat.result.configs }) };
  for (const r of rows) {
    log(
      `  u=${r.u}: FLOPs ratio ${r.flopsRatio.toFixed(3)}, latency ratio @${BATCH} ${r.dynnLatencyRatio.toFixed(3)} (PyTorch ${r.torchLatencyRatio.toFixed(3)}); ` +
        `dynn ${r.dynnMs.batch1.toFixed(2)} / ${r.dynnMs[`batch${BATCH}`].toFixed(1)} ms, dynn/PyTorch ${r.dynnToTorchBatch1.toFixed(2)}x @1, ${r.dynnToTorchBatchN.toFixed(2)}x @${BATCH}`,
    );
  }
  model.dispose();
  await writeFileAtomic('.bench/results.json', JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

await main();
process.exit(0);
