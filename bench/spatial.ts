/**
 * Spatially sparse convolution (dynconv, `--dynamic spatial`), measured side by side in one run:
 *   1. the sparse block against its dense block at fixed masks: resnet-d's first-stage block (28x28, 16
 *      channels) and second-stage block (14x14, 32 channels), batch 1 and 64, sparsity (the fraction of
 *      positions NOT computed) 0.1 ... 0.9, in TF.js (wasm) and ONNX Runtime (the exported graph against the
 *      dense block's), the FLOPs ratio beside each time ratio, and the break-even sparsity: the least
 *      sparsity at which the sparse block is faster. Masks are spatially coherent (a smooth random field per
 *      sample cut at the sparsity's quantile), as learned masks are; conv1's dilated mask is counted.
 *   2. a short run on Fashion-MNIST: resnet-d trained plain, and resnet-d with spatial gates trained as long
 *      without skipping (--pretrain-epochs), then gated (--spatial-target): accuracy, mean FLOPs ratio, and
 *      time at batch 1 and 64 of each (TF.js and ONNX Runtime), against the plain resnet-d.
 * Usage: npm run bench:spatial [-- --train 4096 --test 1000 --epochs 2 --gated-epochs 1 --target 0.5
 *          --reps 10 --results .bench/spatial.json --json --blocks-only | --network-only]
 * Runs go to .bench/spatial/ (replaced on each bench run), results to --results (written atomically).
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import * as ort from 'onnxruntime-node';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { loadDataset } from '../src/data/datasets.js';
import type { ImageSet } from '../src/data/types.js';
import { toFloat } from '../src/data/imageset.js';
import { timeInTurns, median } from '../src/eval/latency.js';
import { evaluateRouted, routedSweep } from '../src/eval/routed.js';
import { createModel } from '../src/models/zoo.js';
import type { Network } from '../src/models/network.js';
import { fullSel } from '../src/layers/index.js';
import { SpatialResidualBlock, dilate3 } from '../src/route/spatial.js';
import { innerContext, innerPlan } from '../src/route/unit.js';
import { SegmentGraph, saveSegments } from '../src/export/segments.js';
import { lowerSpatial, SPATIAL_IO } from '../src/export/spatial.js';
import { lowerResidual } from '../src/export/lower.js';
import { saveOnnx } from '../src/export/export.js';
import { floatValueInfo } from '../src/export/graph.js';
import { openSession, sessionOptions } from '../src/runtime/node.js';
import type { SegmentedSession } from '../src/runtime/segments.js';
import { initEngine } from '../src/engine/backend.js';
import { Rng } from '../src/util/rng.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs, routedFigures } from './common.js';

const args = process.argv.slice(2);
const { value, num } = benchArgs(args);
const json = args.includes('--json');
const TRAIN = num('train', 4096);
const TEST = num('test', 1000);
const EPOCHS = num('epochs', 2);
const GATED_EPOCHS = num('gated-epochs', 1);
const TARGET = num('target', 0.5);
const REPS = num('reps', 10);
const RESULTS = value('results') ?? '.bench/spatial.json';
const DATA_DIR = value('data-dir');
const ROOT = '.bench/spatial';
const SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
const BATCHES = [1, 64];
const log = (s: string) => process.stderr.write(s + '\n');

/** `n` masks of h x w positions, each computing the fraction 1 - sparsity: a smooth random field cut at its quantile. */
function coherentMasks(n: number, h: number, w: number, sparsity: number, rng: Rng): Float32Array {
  const out = new Float32Array(n * h * w);
  const keep = Math.round((1 - sparsity) * h * w);
  for (let b = 0; b < n; b++) {
    const waves = Array.from({ length: 4 }, () => ({ fy: 1 + 3 * rng.next(), fx: 1 + 3 * rng.next(), p: 6.3 * rng.next(), a: rng.next() }));
    const field = Float64Array.from({ length: h * w }, (_, p) => waves.reduce((s, v) => s + v.a * Math.sin((v.fy * Math.floor(p / w)) / h * 6.3 + (v.fx * (p % w)) / w * 6.3 + v.p), 0));
    const order = Array.from(field.keys()).sort((i, j) => field[j] - field[i]);
    for (let k = 0; k < keep; k++) out[b * h * w + order[k]] = 1;
  }
  return out;
}

/** The least sparsity at which the sparse block is faster (linear between measured points), or null if never. */
function breakEven(rows: { sparsity: number; timeRatio: number }[]): number | null {
  for (let i = 0; i < rows.length; i++) {
    if (rows[i].timeRatio >= 1) continue;
    if (i === 0) return rows[0].sparsity;
    const [a, b] = [rows[i - 1], rows[i]];
    return a.sparsity + ((a.timeRatio - 1) / (a.timeRatio - b.timeRatio)) * (b.sparsity - a.sparsity);
  }
  return null;
}

async function ortTimes(sessions: { s: ort.InferenceSession; feeds: Record<string, ort.Tensor> }[]): Promise<number[]> {
  const times = sessions.map((): number[] => []);
  for (let i = 0; i < 2 + REPS; i++) {
    for (const [k, { s, feeds }] of sessions.entries()) {
      const t0 = performance.now();
      await s.run(feeds);
      if (i >= 2) times[k].push(performance.now() - t0);
    }
  }
  return times.map(median);
}

/** Part 1: one block, sparse against dense, at every sparsity and batch, in TF.js and ONNX Runtime. */
async function blockBench(model: Network, block: SpatialResidualBlock) {
  const [h, w, c] = block.inShape;
  const ctx = innerContext({ plan: model.plan(1), training: false }, block, 1);
  const per = block.positionMacs(fullSel(c));
  const weights = model.getWeights();
  const dense = new SegmentGraph(`${block.name}_dense`, weights, block.children().filter((l) => l !== block.gate));
  dense.g.input(floatValueInfo('x', ['batch', c, h, w]));
  const full = model.plan(1);
  dense.g.nodeTo('Identity', [lowerResidual(block, 'x', fullSel(c), dense.ctx(full, 'd'), dense.ctx(innerPlan(full, block, 1), 'd1')).y], 'y');
  dense.g.output(floatValueInfo('y', ['batch', c, h, w]));
  const sparse = new SegmentGraph(`${block.name}_sparse`, [], []);
  lowerSpatial(sparse.g, block, { fixedMask: true });
  const opts = sessionOptions({ threads: 1 });
  const [denseS, sparseS] = [await ort.InferenceSession.create(dense.finish('dense block').bytes, opts), await ort.InferenceSession.create(sparse.finish('sparse block').bytes, opts)];
  const rng = new Rng(7);
  const out: Record<string, unknown>[] = [];
  for (const batch of BATCHES) {
    const x = tf.tidy(() => tf.relu(tf.randomNormal([batch, h, w, c], 0, 1, 'float32', batch)));
    const xNchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
    const masks = SPARSITIES.map((s) => coherentMasks(batch, h, w, s, rng));
    const tfTimes = timeInTurns([() => tf.tidy(() => block.call(x, fullSel(c), ctx).y), ...masks.map((m) => () => tf.tidy(() => block.computeAt(x, m, ctx)))], { reps: REPS, warmup: 2 });
    const xt = new ort.Tensor('float32', xNchw, [batch, c, h, w]);
    const ortT = await ortTimes([{ s: denseS, feeds: { x: xt } }, ...masks.map((m) => ({ s: sparseS, feeds: { [SPATIAL_IO.x]: xt, [SPATIAL_IO.mask]: new ort.Tensor('float32', m, [batch, 1, h, w]) } }))]);
    const rows = SPARSITIES.map((sparsity, i) => {
      const m = masks[i];
      const conv2 = m.reduce((a, v) => a + v, 0);
      const conv1 = dilate3(m, batch, h, w).reduce((a, v) => a + v, 0);
      return { sparsity, conv1Share: conv1 / (batch * h * w), flopsRatio: (conv1 * per.conv1 + conv2 * per.conv2) / (batch * h * w * (per.conv1 + per.conv2)), tfjs: { ms: tfTimes[i + 1], timeRatio: tfTimes[i + 1] / tfTimes[0] }, ort: { ms: ortT[i + 1], timeRatio: ortT[i + 1] / ortT[0] } };
    });
    out.push({
      block: block.name,
      shape: [h, w, c],
      batch,
      denseMs: { tfjs: tfTimes[0], ort: ortT[0] },
      rows,
      breakEven: { tfjs: breakEven(rows.map((r) => ({ sparsity: r.sparsity, timeRatio: r.tfjs.timeRatio }))), ort: breakEven(rows.map((r) => ({ sparsity: r.sparsity, timeRatio: r.ort.timeRatio }))) },
    });
    log(`${block.name} ${h}x${w}x${c} batch ${batch}: dense ${tfTimes[0].toFixed(2)} ms (TF.js), ${ortT[0].toFixed(2)} ms (ORT)`);
    for (const r of rows) log(`  sparsity ${r.sparsity.toFixed(1)}: FLOPs ${r.flopsRatio.toFixed(3)}  time TF.js ${r.tfjs.timeRatio.toFixed(3)}  ORT ${r.ort.timeRatio.toFixed(3)}`);
    x.dispose();
  }
  await denseS.release();
  await sparseS.release();
  return out;
}

/** Median ms of the ONNX Runtime forms at batch 1 and 64 on the first test images: the plain file and the spatial folder, in turns. */
async function ortNetworkTimes(plainFile: string, spatialDir: string, test: ImageSet) {
  const plain = await openSession(plainFile, { threads: 1 });
  const spatial = (await openSession(spatialDir, { threads: 1 })) as SegmentedSession;
  const out: Record<string, { plain: number; spatial: number }> = {};
  try {
    for (const batch of BATCHES) {
      const x = toFloat(test, 0, batch, new Float32Array(batch * 784));
      const t: number[][] = [[], []];
      for (let i = 0; i < 2 + REPS; i++) {
        for (const [k, run] of [() => plain.run(x, 1), () => spatial.runRouted(x)].entries()) {
          const t0 = performance.now();
          await run();
          if (i >= 2) t[k].push(performance.now() - t0);
        }
      }
      out[`batch${batch}`] = { plain: median(t[0]), spatial: median(t[1]) };
    }
  } finally {
    await plain.release();
    await spatial.release();
  }
  return out;
}

async function main() {
  await initEngine('wasm');
  const results: Record<string, unknown> = { settings: { train: TRAIN, test: TEST, epochs: EPOCHS, gatedEpochs: GATED_EPOCHS, target: TARGET, reps: REPS } };
  // Part 1: fixed masks on resnet-d's blocks (weights as initialized: time does not depend on them).
  if (!args.includes('--network-only')) {
    const probe = createModel('resnet-d', { dynamic: 'spatial' });
    try {
      const blocks = probe.layers.filter((l): l is SpatialResidualBlock => l instanceof SpatialResidualBlock);
      results.blocks = [...(await blockBench(probe, blocks[0])), ...(await blockBench(probe, blocks[2]))];
    } finally {
      probe.dispose();
    }
  }
  if (!args.includes('--blocks-only')) {
    // Part 2: a short run, plain against spatial.
    const base: TrainOptions = { model: 'resnet-d', dataset: 'fashion-mnist', dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST, seed: 0, force: true, batchSize: 64, schedule: 'vanilla' };
    log(`training resnet-d: ${TRAIN} images, ${EPOCHS} epochs`);
    const plainRun = path.join(ROOT, 'plain');
    const plain = await train({ ...base, epochs: EPOCHS, out: plainRun });
    // The same backbone training first (full mode runs every position densely), then the gates: --init cannot
    // carry plain resnet-d's BatchNorm rows (one per depth level) into the spatial model's two.
    log(`training resnet-d with spatial gates (target ${TARGET}): ${EPOCHS} epochs without skipping, then ${GATED_EPOCHS} gated`);
    const spatialRun = path.join(ROOT, 'spatial');
    const spatial = await train({ ...base, modelArgs: { dynamic: 'spatial' }, epochs: EPOCHS + GATED_EPOCHS, pretrainEpochs: EPOCHS, spatialTarget: TARGET, out: spatialRun });
    const ds = await loadDataset('fashion-mnist', { dataDir: DATA_DIR, trainLimit: 64, testLimit: TEST, seed: 0 });
    const e = evaluateRouted(spatial.model, ds.test);
    const sweep = routedSweep(spatial.model, ds.test, [0.5], { reps: REPS });
    const plainFile = path.join(ROOT, 'plain.onnx');
    const spatialDir = path.join(ROOT, 'spatial-onnx');
    await saveOnnx(plain.model, plainFile);
    await saveSegments(spatial.model, spatialDir, { force: true });
    const ortTimes = await ortNetworkTimes(plainFile, spatialDir, ds.test);
    results.network = {
      plain: { accuracy: plain.meta.history[plain.meta.history.length - 1].testAccuracy['1'] },
      spatial: { ...routedFigures(e), positionsComputed: Object.fromEntries(Object.entries(e.skipRates).map(([b, s]) => [b, 1 - s])) },
      tfjs: { plain: sweep.full.latencyMs, spatial: sweep.points[0].latencyMs, masked: sweep.masked.latencyMs },
      ort: ortTimes,
    };
    log(JSON.stringify(results.network, null, 1));
    plain.model.dispose();
    spatial.model.dispose();
  }
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
  log(`results in ${RESULTS}`);
}

await main();
