/**
 * Sparse mixture of experts on Fashion-MNIST, measured side by side in one run:
 *   1. vgg-moe (E experts at c4, top-1) against vgg-w, the dense network with the same active FLOPs per sample,
 *      and vgg-w with c4 widened to about the mixture's parameter count: accuracy, mean FLOPs, parameters, time
 *      at batch 1 and 64 (TF.js, the three and the mixture's masked baseline taking turns), and the mixture's
 *      expert load CV and overflow rate at evaluation; in ONNX Runtime, the mixture exported without a limit
 *      (one graph) against vgg-w, the whole network and the c4 layer (by difference of kernel time);
 *   2. the classifier head (mlp-moe: 10 MLP experts on the pixels, top-k 1, 2, 4) against the dense MLP with
 *      the same active FLOPs (the router's E scores included): balance at evaluation (the most used expert's
 *      share), accuracy with no capacity limit, at the evaluation factor 2 and at 1.25 (the accuracy the limit
 *      costs), and the head's time over the dense head's at batch 1 and 64: TF.js (stacked, per expert) and
 *      ONNX Runtime (one graph; runtime-dispatched, stacked and per expert), with the one graph's kernel time
 *      split into experts, router and dispatch, and the experts' nodes alone against the dense head.
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
import { benchArgs, scratchRuns } from './common.js';
import { profileNodes } from '../src/export/fixtures.js';
import { existsSync, readFileSync } from 'node:fs';
import { nhwcToNchw } from '../src/runtime/core.js';
import { median } from '../src/eval/latency.js';
import { saveSegments } from '../src/export/segments.js';
import { saveOnnx } from '../src/export/export.js';
import { openSession } from '../src/runtime/node.js';
import { spawnSync } from 'node:child_process';
import { PEER_MALLOC_ENV } from './torch.js';
import { MoeBlock, type MoeArgs } from '../src/route/moe.js';
import { padByRoute } from '../src/route/dispatch.js';

const args = process.argv.slice(2);
const { value, num, list } = benchArgs(args);
const json = args.includes('--json');
const TRAIN = num('train', 6000);
const TEST = num('test', 1000);
const EPOCHS = num('epochs', 1);
const EXPERTS = num('experts', 4);
const HEAD_EPOCHS = num('head-epochs', 2);
const HIDDEN = num('hidden', 64);
/** The head's experts (the popular layer's example: 10) and Fashion-MNIST's classes. */
const HEAD_EXPERTS = 10;
const FASHION_CLASSES = 10;
const TOP_KS = list('top-k', '1,2,4').map(Number);
const RESULTS = value('results') ?? '.bench/moe.json';
const DATA_DIR = value('data-dir');
const ROOT = '.bench/moe';
const PEER = !args.includes('--no-peer');
const ROUNDS = num('rounds', 3);
const PARTS = list('parts', 'models,heads');
const log = (s: string) => process.stderr.write(s + '\n');

const base = scratchRuns(ROOT, { dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST, evalUs: [1] }, log);

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

/** The mixture rebuilt with evaluation capacity factor `cf` (undefined: no limit; its weights copied): what the limit costs, measured. */
function atCapacity(model: Network, cf: number | undefined, extra: Partial<MoeArgs> = {}): Network {
  const m = createModel(model.config.model, { ...model.config.args, evalCapacityFactor: cf, ...extra });
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
  // ONNX Runtime: the mixture as `dynn export` writes it (no capacity limit: one graph) against vgg-w of the
  // same active FLOPs, the whole network and the c4 layer alone (its nodes' kernel time: router, dispatch,
  // experts and the residual add against the dense c4's).
  const moeFile = path.join(ROOT, 'vgg-moe.onnx');
  const denseFile = path.join(ROOT, 'vgg-w.onnx');
  await saveSegments(moe, moeFile, { force: true });
  await saveOnnx(sameFlops, denseFile);
  const ort = await ortTurns([moeFile, denseFile], test);
  // The c4 layer's time: the dense c4's nodes, and for the mixture the same plus whatever the whole graph
  // takes more (router, dispatch, experts, and the layout changes ONNX Runtime puts around them).
  const c4 = (m: string) => /\/c4[./]/.test(m);
  const layerRounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const [mixture, plain] = [await kernelUs(moeFile, test, { c4 }), await kernelUs(denseFile, test, { c4 })];
    layerRounds.push((plain.picked.c4 + mixture.total - plain.total) / plain.picked.c4);
  }
  const onnx = { ms: ort, timeRatio: { batch1: spread(ort.batch1.map((t) => t[0] / t[1])), batch64: spread(ort.batch64.map((t) => t[0] / t[1])) }, c4LayerRatio: spread(layerRounds) };
  log(`  ONNX Runtime (one graph, no capacity limit) over vgg-w: ${fmt(onnx.timeRatio.batch1)} @1, ${fmt(onnx.timeRatio.batch64)} @64; the c4 layer alone (kernel time at 64) ${fmt(onnx.c4LayerRatio)}`);
  const out = { rows, masked: { latencyMs: t[3] }, timeRatio: { batch1: t[0].batch1 / t[1].batch1, batch64: t[0].batch64 / t[1].batch64 }, onnx };
  for (const m of Object.values(nets)) m.dispose();
  return out;
}

/** Predictions and each sample's first-slot expert (-1: it overflowed) of a mixture over `test`, in batches of 64, and the stacked call's padding. */
function routeAll(model: Network, test: ImageSet): { predicted: Int32Array; expert: Int32Array; padding: number; slots: number } {
  const n = test.count;
  const per = test.height * test.width * test.channels;
  const predicted = new Int32Array(n);
  const expert = new Int32Array(n);
  const block = model.layers.find((l): l is MoeBlock => l instanceof MoeBlock)!;
  let padding = 0;
  let slots = 0;
  for (let s = 0; s < n; s += 64) {
    const b = Math.min(64, n - s);
    const routing = RoutingState.start('hard', b);
    const x = tf.tensor(toFloat(test, s, b, new Float32Array(b * per)), [b, test.height, test.width, test.channels]);
    const y = tf.tidy(() => tf.argMax(model.forward(x, model.plan(1), { routing }), 1));
    predicted.set(y.dataSync() as Int32Array, s);
    tf.dispose([x, y]);
    const names = block.topK === 1 ? ['moe'] : Array.from({ length: block.topK }, (_, k) => `moe.k${k}`);
    expert.set(routing.decisions.get(names[0])!, s);
    // E blocks as wide as the most loaded expert: what the stacked call runs on this batch.
    const routes = names.flatMap((g) => [...routing.decisions.get(g)!].filter((e) => e >= 0));
    if (routes.length) {
      const layout = padByRoute(new Int32Array(routes.length), routes, block.experts);
      padding += layout.padding;
      slots += layout.routes * layout.width;
    }
  }
  return { predicted, expert, padding, slots };
}

const spread = (xs: number[]) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs), rounds: xs });
const fmt = (x: { median: number; min: number; max: number }) => `${x.median.toFixed(2)}x (${x.min.toFixed(2)}-${x.max.toFixed(2)})`;

/**
 * The dense MLP's hidden width with the head's active MACs per sample at inference: the router's E scores
 * and k experts (each in -> HIDDEN -> classes), over in + classes per hidden unit; a multiple of 8 (its groups).
 */
function sameActiveHidden(k: number, test: ImageSet): number {
  const inputs = test.height * test.width * test.channels;
  const classes = FASHION_CLASSES;
  return 8 * Math.round((HEAD_EXPERTS * inputs + k * (inputs * HIDDEN + HIDDEN * classes)) / (inputs + classes) / 8);
}

async function heads(test: ImageSet) {
  log(`2. the classifier head: ${HEAD_EXPERTS} MLP experts (hidden ${HIDDEN}) on the pixels, top-k ${TOP_KS.join('/')}, against the dense MLP of the same active FLOPs (the router's scores included: hidden ${TOP_KS.map((k) => sameActiveHidden(k, test)).join('/')}), ${HEAD_EPOCHS} epoch(s)`);
  const out = [];
  const acc = (pred: Int32Array, rows: number[]) => rows.filter((i) => pred[i] === test.labels[i]).length / Math.max(1, rows.length);
  for (const k of TOP_KS) {
    // Trained in batch order into the residual (the first measurement's settings; the defaults are now score and next).
    const moe = (await train(base(`head-moe-k${k}`, { model: 'mlp-moe', modelArgs: { experts: HEAD_EXPERTS, topK: k, hidden: HIDDEN, switchWeight: 0.1, priority: 'batch', overflow: 'residual' }, epochs: HEAD_EPOCHS }))).model;
    const dense = (await train(base(`head-dense-k${k}`, { model: 'mlp-w', modelArgs: { hidden: [sameActiveHidden(k, test)] }, schedule: 'vanilla', epochs: HEAD_EPOCHS }))).model;
    // A factor of E / k lets an expert take the whole batch: no limit.
    // Each setting explicit: the trained head's own (batch, residual) would otherwise carry into the others.
    const batchOrder: Partial<MoeArgs> = { priority: 'batch', overflow: 'residual' };
    const settings: [number, Partial<MoeArgs>][] = [[HEAD_EXPERTS / k, batchOrder], [2, batchOrder], [1.25, batchOrder], [1.25, { priority: 'batch', overflow: 'next' }], [1.25, { priority: 'score', overflow: 'residual' }], [1.25, { priority: 'score', overflow: 'next' }]];
    const [free, loose, tight, tightNext, tightBpr, tightBprNext] = settings.map(([cf, extra]) => atCapacity(moe, cf, extra));
    // In batches of 64, the batch the times are taken at (capacity is per batch: a smaller batch overflows more).
    const [eFree, eLoose, eTight, eNext, eBpr, eBprNext] = [free, loose, tight, tightNext, tightBpr, tightBprNext].map((m) => evaluateRouted(m, test, { batchSize: 64 }));
    const dAcc = evaluate(dense, test, 1).accuracy;
    // Whose first choice overflows at 1.25 in batch order: how the unlimited head does on them, and where they sit in their batch.
    const rFree = routeAll(free, test);
    const rTight = routeAll(tight, test);
    const over = [...rTight.expert.keys()].filter((i) => rTight.expert[i] < 0);
    const who = {
      overflowed: over.length,
      accuracyWithoutLimit: acc(rFree.predicted, over),
      accuracyAt125: acc(rTight.predicted, over),
      meanPlaceInBatch: over.reduce((a, i) => a + (i % 64), 0) / Math.max(1, over.length),
    };
    const looseLayout = routeAll(loose, test);
    // Times: the stacked head, the same head with one call per expert, the dense head, taking turns, in rounds.
    const looped = atCapacity(moe, 2, { stack: false });
    const rounds = Array.from({ length: ROUNDS }, () => times([{ model: loose }, { model: looped }, { model: dense }], test));
    const tjs = (n: 'batch1' | 'batch64') => ({ stacked: spread(rounds.map((r) => r[0][n] / r[2][n])), perExpert: spread(rounds.map((r) => r[1][n] / r[2][n])) });
    // Exported without a limit (what `dynn export` writes by default): the dispatch inside one graph.
    const unlimited = atCapacity(moe, undefined);
    const onnx = await onnxTimes(unlimited, loose, looped, dense, test, `k${k}`);
    const e = eFree.experts!.moe;
    const row: Record<string, unknown> = {
      topK: k,
      accuracy: { noCapacity: eFree.accuracy, capacity2: eLoose.accuracy, capacity125: eTight.accuracy, capacity125Next: eNext.accuracy, capacity125Bpr: eBpr.accuracy, capacity125BprNext: eBprNext.accuracy, dense: dAcc },
      lostToCapacity125: { batch: eFree.accuracy - eTight.accuracy, next: eFree.accuracy - eNext.accuracy, bpr: eFree.accuracy - eBpr.accuracy, bprNext: eFree.accuracy - eBprNext.accuracy },
      overflow: { capacity2: eLoose.overflowRate, capacity125: eTight.overflowRate, capacity125Next: eNext.overflowRate, capacity125Bpr: eBpr.overflowRate, capacity125BprNext: eBprNext.overflowRate },
      whoOverflows: who,
      balance: { maxShare: e.maxShare, cv: e.cv, load: e.load },
      padding: { atCapacity2: looseLayout.padding / Math.max(1, looseLayout.slots), withoutLimit: rFree.padding / Math.max(1, rFree.slots) },
      flops: { moe: 2 * eFree.flopsRatio * moe.routedMacs(1).backbone, dense: dense.cost(1).flops },
      latencyMs: rounds,
      timeRatio: { tfjs: { batch1: tjs('batch1'), batch64: tjs('batch64') }, onnx: onnx.ratios },
      onnxMs: onnx.ms,
      onnxKernelShare: onnx.kernelShare,
      onnxExpertsOverDense: onnx.expertsOverDense,
    };
    const t = { b1: tjs('batch1'), b64: tjs('batch64') };
    log(
      `  top-${k}: ${pct(eFree.accuracy)} without a limit, ${pct(eLoose.accuracy)} at 2; at 1.25: ${pct(eTight.accuracy)} (overflow ${pct(eTight.overflowRate!)}), next ${pct(eNext.accuracy)}, priority ${pct(eBpr.accuracy)}, priority+next ${pct(eBprNext.accuracy)}; dense ${pct(dAcc)}; most used expert ${pct(e.maxShare)} (CV ${e.cv.toFixed(3)})\n` +
        `    overflowed at 1.25: ${who.overflowed} samples, ${pct(who.accuracyWithoutLimit)} of them right without a limit, mean place in batch ${who.meanPlaceInBatch.toFixed(1)} of 64; stacked padding ${pct((row.padding as { atCapacity2: number }).atCapacity2)} of the slots at 2 (${pct((row.padding as { withoutLimit: number }).withoutLimit)} without a limit)\n` +
        `    time over dense, TF.js: stacked ${fmt(t.b1.stacked)} @1, ${fmt(t.b64.stacked)} @64; per expert ${fmt(t.b1.perExpert)} @1, ${fmt(t.b64.perExpert)} @64\n` +
        `    ONNX Runtime: one graph ${fmt(onnx.ratios.batch1.inGraph)} @1, ${fmt(onnx.ratios.batch64.inGraph)} @64 (kernel time: experts ${pct(onnx.kernelShare.experts)}, router ${pct(onnx.kernelShare.router)}, dispatch ${pct(onnx.kernelShare.dispatch)}; the experts' nodes alone ${onnx.expertsOverDense.toFixed(2)}x the dense head's); runtime dispatch, stacked ${fmt(onnx.ratios.batch1.stacked)} @1, ${fmt(onnx.ratios.batch64.stacked)} @64; per expert ${fmt(onnx.ratios.batch1.perExpert)} @1, ${fmt(onnx.ratios.batch64.perExpert)} @64`,
    );
    if (k === 1) {
      // Trained as it is deployed at 1.25: batch priority and overflow to the next choice in training too.
      const bpr = (await train(base(`head-moe-k${k}-bpr`, { model: 'mlp-moe', modelArgs: { experts: HEAD_EXPERTS, topK: k, hidden: HIDDEN, switchWeight: 0.1, priority: 'score', overflow: 'next' }, epochs: HEAD_EPOCHS }))).model;
      const variants = [HEAD_EXPERTS / k, 1.25].map((cf) => atCapacity(bpr, cf));
      const [bFree, bTight] = variants.map((m) => evaluateRouted(m, test, { batchSize: 64 }));
      row.trainedBprNext = { noCapacity: bFree.accuracy, capacity125: bTight.accuracy, lost: bFree.accuracy - bTight.accuracy, overflow: bTight.overflowRate };
      log(`    trained with priority and next: ${pct(bFree.accuracy)} without a limit, ${pct(bTight.accuracy)} at 1.25 (overflow ${pct(bTight.overflowRate!)})`);
      for (const m of [bpr, ...variants]) m.dispose();
    }
    out.push(row);
    for (const m of [moe, dense, free, loose, tight, tightNext, tightBpr, tightBprNext, looped, unlimited]) m.dispose();
  }
  return out;
}

/**
 * ONNX Runtime, batch 1 and 64, ROUNDS rounds of turns over `files` (single files or folders by segments),
 * each at 1 and 2 threads (no spinning) and the faster of the two per round, as the PyTorch peer runs:
 * ms[batch][round][file].
 */
async function ortTurns(files: string[], test: ImageSet): Promise<Record<'batch1' | 'batch64', number[][]>> {
  const THREADS = [1, 2];
  const sessions = await Promise.all(files.flatMap((f) => THREADS.map((threads) => openSession(f, { threads, spinning: false }))));
  const ms: Record<'batch1' | 'batch64', number[][]> = { batch1: [], batch64: [] };
  try {
    for (let r = 0; r < ROUNDS; r++) {
      for (const n of [1, 64]) {
        const x = toFloat(test, 0, n, new Float32Array(n * test.height * test.width * test.channels));
        const got = sessions.map((): number[] => []);
        for (let i = 0; i < 33; i++) {
          for (const [j, s] of sessions.entries()) {
            const t0 = performance.now();
            await s.run(x, 1);
            if (i >= 3) got[j].push(performance.now() - t0);
          }
        }
        const med = got.map(median);
        ms[n === 1 ? 'batch1' : 'batch64'].push(files.map((_, f) => Math.min(...THREADS.map((_, t) => med[f * THREADS.length + t]))));
      }
    }
  } finally {
    for (const s of sessions) await s.release();
  }
  return ms;
}

/**
 * Kernel time (ONNX Runtime's profile, 1 thread, batch 64) per run of the nodes of `file`'s graph that each
 * of `picks` selects by name, and of all of them. `file` is a single-file export (inputs `images`, `u` = 1) or a folder's first graph file.
 */
async function kernelUs<K extends string>(file: string, test: ImageSet, picks: Record<K, (node: string) => boolean>): Promise<{ picked: Record<K, number>; total: number }> {
  const folder = existsSync(path.join(file, 'manifest.json'));
  const segments = folder ? (JSON.parse(readFileSync(path.join(file, 'manifest.json'), 'utf8')).segments as { graph?: { file: string } }[]) : [];
  // The images feed the folder's graph: a mixture dispatched inside one graph, the whole network.
  if (folder && (segments.length !== 1 || !segments[0].graph)) throw new Error(`${file}: expected one graph, the manifest lists ${segments.length} segments`);
  const graph = folder ? path.join(file, segments[0].graph!.file) : file;
  const dims = [64, test.channels, test.height, test.width];
  const x = { data: nhwcToNchw(toFloat(test, 0, 64, new Float32Array(64 * test.height * test.width * test.channels)), dims.slice(1)), dims };
  const runs = 30;
  const nodes = await profileNodes(graph, folder ? { x } : { images: x, u: { data: Float32Array.of(1), dims: [] } }, runs);
  // An `If` node's time holds its branch's nodes: counted once, in them.
  const own = nodes.filter((t) => t.op !== 'If');
  const sum = (ts: typeof own) => ts.reduce((a, t) => a + t.us, 0);
  const picked = Object.fromEntries(Object.entries(picks).map(([key, pick]) => [key, sum(own.filter((t) => (pick as (node: string) => boolean)(t.name)))])) as Record<K, number>;
  return { picked, total: sum(own) };
}

/**
 * The head in ONNX Runtime (`ortTurns`): the mixture as `dynn export` writes it without a capacity limit
 * (`free`: one graph, the dispatch inside it), with a limit (`stacked`: the router graph, then the runtime's
 * dispatch to the stacked graph, or to one graph per expert where padding would not pay), the same with one
 * graph per expert only (`looped`), and the dense head as one file. Ratios over the dense head, per round;
 * and, from the profile of the one-graph form at batch 64, the share of its kernel time in the experts'
 * nodes, the router's and the dispatch's.
 */
async function onnxTimes(free: Network, stacked: Network, looped: Network, dense: Network, test: ImageSet, tag: string) {
  const files = [path.join(ROOT, `head-${tag}-in-graph.onnx`), path.join(ROOT, `head-${tag}-stacked.onnx`), path.join(ROOT, `head-${tag}-per-expert.onnx`)];
  await saveSegments(free, files[0], { force: true });
  await saveSegments(stacked, files[1], { force: true });
  await saveSegments(looped, files[2], { force: true });
  files.push(path.join(ROOT, `head-dense-${tag}.onnx`));
  await saveOnnx(dense, files[3]);
  const ms = await ortTurns(files, test);
  const ratios = (n: 'batch1' | 'batch64') => ({
    inGraph: spread(ms[n].map((t) => t[0] / t[3])),
    stacked: spread(ms[n].map((t) => t[1] / t[3])),
    perExpert: spread(ms[n].map((t) => t[2] / t[3])),
  });
  const expert = (m: string) => /\/moe\.e\d+\//.test(m);
  const router = (m: string) => m.includes('/moe/router');
  const k = await kernelUs(files[0], test, { experts: expert, router, dispatch: (m) => m.includes('/moe/') && !router(m) && !expert(m) });
  const kernelShare = { experts: k.picked.experts / k.total, router: k.picked.router / k.total, dispatch: k.picked.dispatch / k.total };
  // The floor of any exact dispatch in this runtime: the experts' own nodes on their rows, nothing else,
  // against every node of the dense head.
  const denseKernel = await kernelUs(files[3], test, {});
  const expertsOverDense = k.picked.experts / denseKernel.total;
  return { ms, ratios: { batch1: ratios('batch1'), batch64: ratios('batch64') }, kernelShare, expertsOverDense };
}

/**
 * The head task with the popular PyTorch layer's behaviour (`bench/moe_peer.py`), or why it did not run. PyTorch
 * at its best, as `bench/torch.ts` runs it: glibc's allocator kept from unmapping, OpenMP waiting passively, and
 * per round the faster of 1 and 2 threads for each of the two heads.
 */
function peer(): unknown {
  log('3. the same head with the popular PyTorch layer\'s behaviour (bench/moe_peer.py)');
  const argv = ['bench/moe_peer.py', '--train', String(TRAIN), '--test', String(TEST), '--epochs', String(HEAD_EPOCHS), '--hidden', String(HIDDEN), '--top-k', TOP_KS.join(','), '--threads', '1,2', '--rounds', String(ROUNDS), ...(DATA_DIR ? ['--data-dir', DATA_DIR] : [])];
  const env = { ...process.env, ...PEER_MALLOC_ENV, OMP_WAIT_POLICY: 'PASSIVE' };
  const r = spawnSync('/usr/bin/python3', argv, { encoding: 'utf8', maxBuffer: 1 << 24, env });
  if (r.status !== 0) return `not run: ${(r.error?.message ?? r.stderr).trim().split('\n').pop()}`;
  type Times = Record<string, { moe: number; dense: number }[]>;
  const out = JSON.parse(r.stdout) as { threads: number[]; heads: { topK: number; accuracy: number; accuracyCapacity125: number; denseAccuracy: number; maxShare: number; ms: Times }[] };
  const ratio = (ms: Times, n: number) =>
    spread(Array.from({ length: ROUNDS }, (_, i) => Math.min(...out.threads.map((t) => ms[`${t}@${n}`][i].moe)) / Math.min(...out.threads.map((t) => ms[`${t}@${n}`][i].dense))));
  const heads = out.heads.map((h) => ({ ...h, timeRatio: { batch1: ratio(h.ms, 1), batch64: ratio(h.ms, 64) } }));
  for (const h of heads) log(`  top-${h.topK}: ${pct(h.accuracy)}, ${pct(h.accuracyCapacity125)} at capacity 1.25; dense ${pct(h.denseAccuracy)}; most used expert ${pct(h.maxShare)}; time over dense ${fmt(h.timeRatio.batch1)} @1, ${fmt(h.timeRatio.batch64)} @64`);
  return { ...out, heads };
}

async function main() {
  await initEngine('auto');
  const { test } = await loadDataset('fashion-mnist', { dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST, seed: 0 });
  const results = { dataset: 'fashion-mnist', train: TRAIN, test: TEST, epochs: EPOCHS, headEpochs: HEAD_EPOCHS, experts: EXPERTS, hidden: HIDDEN, models: PARTS.includes('models') ? await models(test) : 'not run (--parts)', heads: PARTS.includes('heads') ? await heads(test) : 'not run (--parts)', peer: PEER ? peer() : 'not run (--no-peer)' };
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

tf.enableProdMode();
await main();
process.exit(0);
