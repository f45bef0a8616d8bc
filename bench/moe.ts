/**
 * Sparse mixture of experts on Fashion-MNIST, measured side by side in one run:
 *   1. vgg-moe (E experts at c4, top-1) against vgg-w, the dense network with the same active FLOPs per sample,
 *      and vgg-w with c4 widened to about the mixture's parameter count: accuracy, mean FLOPs, parameters, time
 *      at batch 1 and 64 (TF.js, the three and the mixture's masked baseline taking turns), and the mixture's
 *      expert load CV and overflow rate at evaluation;
 *   2. the classifier head (mlp-moe: 10 MLP experts on the pixels, top-k 1, 2, 4) against the dense MLP with
 *      the same active FLOPs (hidden k h): balance at evaluation (the most used expert's share), accuracy with
 *      no capacity limit, at the evaluation factor 2 and at 1.25 (the accuracy the limit costs), and the
 *      head's time over the dense head's at batch 64.
 * Usage: npm run bench:moe [-- --train 6000 --test 1000 --epochs 1 --experts 4 --head-epochs 2 --hidden 64
 *          --top-k 1,2,4 --data-dir DIR --results .bench/moe.json --no-peer --json]
 *   3. the same head task with the popular PyTorch layer's behaviour (`bench/moe_peer.py`, Debian's PyTorch at
 *      /usr/bin/python3; --no-peer skips it).
 * Runs go to .bench/moe/ (replaced on each bench run), results to --results (written atomically).
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { loadDataset } from '../src/data/datasets.js';
import { createModel } from '../src/models/zoo.js';
import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { toFloat } from '../src/data/imageset.js';
import { evaluate } from '../src/eval/evaluate.js';
import { evaluateRouted, type RoutedEval } from '../src/eval/routed.js';
import { timeInTurns } from '../src/eval/latency.js';
import { RoutingState } from '../src/route/context.js';
import type { GateMode } from '../src/layers/types.js';
import { initEngine } from '../src/engine/backend.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs } from './common.js';
import { median } from '../src/eval/latency.js';
import { saveSegments } from '../src/export/segments.js';
import { saveOnnx } from '../src/export/export.js';
import { openSession } from '../src/runtime/node.js';
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const { value, num, list } = benchArgs(args);
const json = args.includes('--json');
const TRAIN = num('train', 6000);
const TEST = num('test', 1000);
const EPOCHS = num('epochs', 1);
const EXPERTS = num('experts', 4);
const HEAD_EPOCHS = num('head-epochs', 2);
const HIDDEN = num('hidden', 64);
const TOP_KS = list('top-k', '1,2,4').map(Number);
const RESULTS = value('results') ?? '.bench/moe.json';
const DATA_DIR = value('data-dir');
const ROOT = '.bench/moe';
const PEER = !args.includes('--no-peer');
const log = (s: string) => process.stderr.write(s + '\n');

const base = (out: string, extra: TrainOptions): TrainOptions => ({
  dataset: 'fashion-mnist',
  dataDir: DATA_DIR,
  trainLimit: TRAIN,
  testLimit: TEST,
  seed: 0,
  out: path.join(ROOT, out),
  // The bench's own scratch runs: each bench run replaces them.
  force: true,
  evalUs: [1],
  onEpoch: (r) => log(`    epoch ${r.epoch}: loss ${r.loss.toFixed(4)}, test ${(100 * (r.gated?.accuracy ?? r.testAccuracy['1'])).toFixed(2)}%`),
  ...extra,
});

const params = (m: Network) => m.trainableWeights().reduce((a, w) => a + w.variable.size, 0);
const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** Accuracy and mean FLOPs per sample of a network: routed (its router deciding) or dense at u = 1. */
function measure(model: Network, test: ImageSet): { accuracy: number; flops: number; routed?: RoutedEval } {
  if (!model.gated) return { accuracy: evaluate(model, test, 1).accuracy, flops: model.cost(1).flops };
  const e = evaluateRouted(model, test);
  return { accuracy: e.accuracy, flops: 2 * e.flopsRatio * model.routedMacs(1).backbone, routed: e };
}

/** Median ms at batch 1 and 64 of each network's forward pass (a mixture's router deciding, or in `mode`), taking turns. */
function times(runs: { model: Network; mode?: GateMode }[], test: ImageSet): { batch1: number; batch64: number }[] {
  const out = runs.map(() => ({ batch1: NaN, batch64: NaN }));
  for (const n of [1, 64]) {
    const per = test.height * test.width * test.channels;
    const x = tf.tensor(toFloat(test, 0, n, new Float32Array(n * per)), [n, test.height, test.width, test.channels]);
    const ms = timeInTurns(
      runs.map(({ model, mode }) => () => tf.tidy(() => model.forward(x, model.plan(1), { routing: model.gated ? RoutingState.start(mode ?? 'hard', n) : undefined }))),
      { reps: n === 1 ? 40 : 15, warmup: 3 },
    );
    ms.forEach((t, k) => (out[k][n === 1 ? 'batch1' : 'batch64'] = t));
    x.dispose();
  }
  return out;
}

/** The mixture rebuilt with evaluation capacity factor `cf` (its weights copied): what the limit costs, measured. */
function atCapacity(model: Network, cf: number): Network {
  const m = createModel(model.config.model, { ...model.config.args, evalCapacityFactor: cf });
  m.setWeights(model.getWeights());
  return m;
}

/** c4's width of vgg-w whose parameter count comes nearest `target`. */
function widthForParams(target: number): number {
  let best = { w: 64, gap: Infinity };
  for (let w = 64; w <= 160; w += 8) {
    const m = createModel('vgg-w', { widths: [32, 32, 64, w] });
    const gap = Math.abs(params(m) - target);
    m.dispose();
    if (gap < best.gap) best = { w, gap };
  }
  return best.w;
}

async function models(test: ImageSet) {
  log(`1. vgg-moe (${EXPERTS} experts at c4, top-1) against dense vgg-w at the same active FLOPs and at the same parameters, ${EPOCHS} epoch(s) on ${TRAIN} images`);
  const moe = (await train(base('vgg-moe', { model: 'vgg-moe', modelArgs: { experts: EXPERTS, topK: 1, switchWeight: 0.1 }, epochs: EPOCHS }))).model;
  const w4 = widthForParams(params(moe));
  const sameFlops = (await train(base('vgg-w', { model: 'vgg-w', schedule: 'vanilla', epochs: EPOCHS }))).model;
  const sameParams = (await train(base(`vgg-w-c4-${w4}`, { model: 'vgg-w', modelArgs: { widths: [32, 32, 64, w4] }, schedule: 'vanilla', epochs: EPOCHS }))).model;
  const nets = { 'vgg-moe': moe, 'vgg-w (same active FLOPs)': sameFlops, [`vgg-w c4=${w4} (same parameters)`]: sameParams };
  const t = times([{ model: moe }, { model: sameFlops }, { model: sameParams }, { model: moe, mode: 'masked' }], test);
  const rows = Object.entries(nets).map(([name, m], k) => {
    const r = measure(m, test);
    const e = r.routed?.experts?.c4;
    return { name, accuracy: r.accuracy, flops: r.flops, params: params(m), latencyMs: t[k], ...(e ? { expertLoad: e.load, loadCv: e.cv, maxShare: e.maxShare, overflowRate: r.routed!.overflowRate, classes: e.classes } : {}) };
  });
  for (const r of rows) log(`  ${r.name}: ${pct(r.accuracy)}, ${(r.flops / 1e6).toFixed(2)} MFLOPs, ${(r.params / 1e3).toFixed(0)}k params, ${r.latencyMs.batch1.toFixed(2)} ms @1, ${r.latencyMs.batch64.toFixed(2)} ms @64${r.loadCv !== undefined ? `; load ${r.expertLoad!.map((l) => pct(l)).join('/')}, CV ${r.loadCv.toFixed(3)}, overflow ${pct(r.overflowRate!)}` : ''}`);
  log(`  the mixture masked (every expert on every row): ${t[3].batch64.toFixed(2)} ms @64`);
  const out = { rows, masked: { latencyMs: t[3] }, timeRatio: { batch1: t[0].batch1 / t[1].batch1, batch64: t[0].batch64 / t[1].batch64 } };
  for (const m of Object.values(nets)) m.dispose();
  return out;
}

async function heads(test: ImageSet) {
  log(`2. the classifier head: 10 MLP experts (hidden ${HIDDEN}) on the pixels, top-k ${TOP_KS.join('/')}, against the dense MLP of the same active FLOPs, ${HEAD_EPOCHS} epoch(s)`);
  const out = [];
  for (const k of TOP_KS) {
    const moe = (await train(base(`head-moe-k${k}`, { model: 'mlp-moe', modelArgs: { experts: 10, topK: k, hidden: HIDDEN, switchWeight: 0.1 }, epochs: HEAD_EPOCHS }))).model;
    const dense = (await train(base(`head-dense-k${k}`, { model: 'mlp-w', modelArgs: { hidden: [k * HIDDEN] }, schedule: 'vanilla', epochs: HEAD_EPOCHS }))).model;
    // A factor of E / k lets an expert take the whole batch: no limit.
    const [free, loose, tight] = [10 / k, 2, 1.25].map((cf) => atCapacity(moe, cf));
    const [eFree, eLoose, eTight] = [free, loose, tight].map((m) => evaluateRouted(m, test));
    const dAcc = evaluate(dense, test, 1).accuracy;
    const t = times([{ model: loose }, { model: dense }], test);
    const onnx = await onnxTimes(loose, dense, test, `k${k}`);
    const e = eFree.experts!.moe;
    const row = {
      topK: k,
      accuracy: { noCapacity: eFree.accuracy, capacity2: eLoose.accuracy, capacity125: eTight.accuracy, dense: dAcc },
      lostToCapacity125: eFree.accuracy - eTight.accuracy,
      overflow: { capacity2: eLoose.overflowRate, capacity125: eTight.overflowRate },
      balance: { maxShare: e.maxShare, cv: e.cv, load: e.load },
      flops: { moe: 2 * eFree.flopsRatio * moe.routedMacs(1).backbone, dense: dense.cost(1).flops },
      latencyMs: { moe: t[0], dense: t[1] },
      timeRatio: t[0].batch64 / t[1].batch64,
      onnx,
    };
    log(
      `  top-${k}: ${pct(eFree.accuracy)} without a limit, ${pct(eLoose.accuracy)} at 2, ${pct(eTight.accuracy)} at 1.25 (lost ${(100 * row.lostToCapacity125).toFixed(2)} points, overflow ${pct(eTight.overflowRate!)}); ` +
        `dense ${pct(dAcc)}; most used expert ${pct(e.maxShare)} (CV ${e.cv.toFixed(3)}); time over dense ${row.timeRatio.toFixed(2)}x @64 (${t[0].batch64.toFixed(2)} vs ${t[1].batch64.toFixed(2)} ms); ONNX Runtime ${onnx.timeRatio.toFixed(2)}x (${onnx.ms.moe.toFixed(2)} vs ${onnx.ms.dense.toFixed(2)} ms)`,
    );
    out.push(row);
    for (const m of [moe, dense, free, loose, tight]) m.dispose();
  }
  return out;
}

/**
 * Median ms at batch 64 in ONNX Runtime (2 threads, no spinning): the mixture exported by segments and run by
 * its dispatcher (the router, then each expert graph on its rows), against the dense head as one ONNX file.
 * The two take turns. ONNX Runtime packs each graph's constant weights once at load; TF.js's matmul packs
 * them on every call, which a mixture pays once per expert.
 */
async function onnxTimes(moe: Network, dense: Network, test: ImageSet, tag: string) {
  const dir = path.join(ROOT, `head-${tag}.onnx`);
  await saveSegments(moe, dir, { force: true });
  const file = path.join(ROOT, `head-dense-${tag}.onnx`);
  await saveOnnx(dense, file);
  const a = await openSession(dir, { threads: 2, spinning: false });
  const b = await openSession(file, { threads: 2, spinning: false });
  const n = 64;
  const x = toFloat(test, 0, n, new Float32Array(n * test.height * test.width * test.channels));
  const ms = { moe: [] as number[], dense: [] as number[] };
  for (let i = 0; i < 43; i++) {
    for (const [key, s] of [['moe', a], ['dense', b]] as const) {
      const t0 = performance.now();
      await s.run(x, 1);
      if (i >= 3) ms[key].push(performance.now() - t0);
    }
  }
  await a.release();
  await b.release();
  const out = { moe: median(ms.moe), dense: median(ms.dense) };
  return { ms: out, timeRatio: out.moe / out.dense };
}

/** The head task with the popular PyTorch layer's behaviour (`bench/moe_peer.py`), or why it did not run. */
function peer(): unknown {
  log('3. the same head with the popular PyTorch layer\'s behaviour (bench/moe_peer.py)');
  const argv = ['bench/moe_peer.py', '--train', String(TRAIN), '--test', String(TEST), '--epochs', String(HEAD_EPOCHS), '--hidden', String(HIDDEN), '--top-k', TOP_KS.join(','), ...(DATA_DIR ? ['--data-dir', DATA_DIR] : [])];
  const r = spawnSync('/usr/bin/python3', argv, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) return `not run: ${(r.error?.message ?? r.stderr).trim().split('\n').pop()}`;
  const out = JSON.parse(r.stdout) as { heads: { topK: number; accuracy: number; accuracyCapacity125: number; denseAccuracy: number; maxShare: number; timeRatio: number }[] };
  for (const h of out.heads) log(`  top-${h.topK}: ${pct(h.accuracy)}, ${pct(h.accuracyCapacity125)} at capacity 1.25; dense ${pct(h.denseAccuracy)}; most used expert ${pct(h.maxShare)}; time over dense ${h.timeRatio.toFixed(2)}x @64`);
  return out;
}

async function main() {
  await initEngine('auto');
  const { test } = await loadDataset('fashion-mnist', { dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST, seed: 0 });
  const results = { dataset: 'fashion-mnist', train: TRAIN, test: TEST, epochs: EPOCHS, headEpochs: HEAD_EPOCHS, experts: EXPERTS, hidden: HIDDEN, models: await models(test), heads: await heads(test), peer: PEER ? peer() : 'not run (--no-peer)' };
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

tf.enableProdMode();
await main();
process.exit(0);
