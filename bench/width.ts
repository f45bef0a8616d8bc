/**
 * Dynamic width (DS-Net, `--dynamic width`) on Fashion-MNIST, measured side by side in one run:
 *   1. the supernet once: the throttleable backbone trained with the sandwich rule and in-place distillation
 *      (or reused with --supernet RUN); its fixed-u curve and oracle on the test set;
 *   2. per target, the gate alone on the frozen supernet (`init`), one epoch: accuracy and mean executed FLOPs
 *      (the gate included) at the trained threshold, against the fixed-u curve at equal FLOPs;
 *   3. wall-clock at batch 1 and 64 of the routed network against the full one, and the time ratio against the
 *      FLOPs ratio: in TF.js, and in ONNX Runtime (the export by segments, its runtime's dispatch, against the
 *      same folder's stem and widest route run without the gate).
 * Usage: npm run bench:width [-- --model vgg-w --train 8000 --test 2000 --epochs 2 --gated-epochs 1
 *          --targets 0.3,0.5,0.7 --lr 0.005 --supernet RUN --reuse --results .bench/width.json --json]
 * (--reuse: take the gate runs of an earlier bench run instead of training them again.)
 * Runs go to .bench/width/ (replaced on each bench run), results to --results (written atomically).
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { head, toFloat } from '../src/data/imageset.js';
import { median } from '../src/eval/latency.js';
import { saveSegments } from '../src/export/segments.js';
import { openSession, sessionOptions } from '../src/runtime/node.js';
import type { SegmentedSession } from '../src/runtime/segments.js';
import { interpolateAccuracy } from '../src/control/curve.js';
import { evaluateRouted, routedSweep } from '../src/eval/routed.js';
import { initEngine } from '../src/engine/backend.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { benchArgs, curveOf, routedFigures, scratchRuns } from './common.js';

const args = process.argv.slice(2);
const { value, num } = benchArgs(args);
const json = args.includes('--json');
const MODEL = value('model') ?? 'vgg-w';
const TRAIN = num('train', 8000);
const TEST = num('test', 2000);
const EPOCHS = num('epochs', 2);
const GATED_EPOCHS = num('gated-epochs', 1);
const TARGETS = (value('targets') ?? '0.3,0.5,0.7').split(',').map(Number);
const GATE_LR = num('lr', 0.005);
const SUPERNET = value('supernet');
const RESULTS = value('results') ?? '.bench/width.json';
const US = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1];
const ROOT = '.bench/width';
const DATA_DIR = value('data-dir');
const REUSE = args.includes('--reuse');
const log = (s: string) => process.stderr.write(s + '\n');

const base = scratchRuns(ROOT, { model: MODEL, dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST }, log);

async function main() {
  let supernet = SUPERNET;
  if (!supernet) {
    log(`${MODEL}: the supernet, ${EPOCHS} epoch(s) on ${TRAIN} images, sandwich rule with in-place distillation`);
    const r = await train(base('supernet', { epochs: EPOCHS, schedule: 'sandwich', sandwichWidths: 1 }));
    r.model.dispose();
    supernet = path.join(ROOT, 'supernet');
  }
  await initEngine('auto');
  const { model: net } = await loadRun(supernet);
  const { test } = await loadDataset('fashion-mnist', { dataDir: DATA_DIR, trainLimit: TRAIN, testLimit: TEST, seed: 0 });
  const { curve, oracle } = curveOf(net, test, US);
  net.dispose();
  log(`  fixed-u curve ${curve.map((p) => `${p.u}: ${(100 * p.accuracy).toFixed(1)}% @${p.flopsRatio.toFixed(2)}`).join(', ')}; oracle ${(100 * oracle.accuracy).toFixed(2)}% @${oracle.flopsRatio.toFixed(3)}`);
  const points: Record<string, unknown>[] = [];
  for (const target of TARGETS) {
    log(`  the gate at target ${target}, ${GATED_EPOCHS} epoch(s) on the frozen supernet`);
    const r = REUSE
      ? { model: (await loadRun(path.join(ROOT, `gate-${target}`))).model, dataset: { test } }
      : await train(base(`gate-${target}`, { modelArgs: { dynamic: 'width' }, init: supernet, epochs: GATED_EPOCHS, widthTarget: target, lr: GATE_LR }));
    const e = evaluateRouted(r.model, r.dataset.test);
    // Latency only (accuracy is e's): the sweep times its first images.
    const s = routedSweep(r.model, head(r.dataset.test, Math.min(128, r.dataset.test.count)), [0.5]);
    const p = s.points[0];
    const timeRatio = { batch1: p.latencyMs.batch1 / s.full.latencyMs.batch1, batch64: p.latencyMs.batch64 / s.full.latencyMs.batch64 };
    const widths = new Map<number, number>();
    for (const x of e.sampleRatios) widths.set(Math.round(x * 1000) / 1000, (widths.get(Math.round(x * 1000) / 1000) ?? 0) + 1);
    const point = {
      target,
      ...routedFigures(e),
      fixedUAtSameFlops: interpolateAccuracy(curve, e.flopsRatio),
      routeShares: Object.fromEntries([...widths].sort((a, b) => a[0] - b[0]).map(([ratio, n]) => [ratio.toFixed(3), n / e.count])),
      latencyMs: { routed: p.latencyMs, full: s.full.latencyMs },
      timeRatio,
      timeOverFlops: timeRatio.batch64 / p.flopsRatio,
      onnx: await onnxTimes(r.model, path.join(ROOT, `gate-${target}.onnx`), r.dataset.test, e.flopsRatio),
    };
    points.push(point);
    log(
      `    ${(100 * e.accuracy).toFixed(2)}% at FLOPs ${e.flopsRatio.toFixed(3)} (${e.flopsMin.toFixed(2)}..${e.flopsMax.toFixed(2)}, gate ${e.gateShare.toFixed(3)}); ` +
        `fixed u at that FLOPs ${(100 * point.fixedUAtSameFlops).toFixed(2)}%; TF.js time ratio ${timeRatio.batch1.toFixed(2)} @1, ${timeRatio.batch64.toFixed(2)} @64 (time/FLOPs ${point.timeOverFlops.toFixed(2)}x); ` +
        `ONNX Runtime ${point.onnx.timeRatio.batch1.toFixed(2)} @1, ${point.onnx.timeRatio.batch64.toFixed(2)} @64 (time/FLOPs ${point.onnx.timeOverFlops.toFixed(2)}x); widths ${JSON.stringify(point.routeShares)}`,
    );
    r.model.dispose();
  }
  const results = { model: MODEL, dataset: 'fashion-mnist', train: TRAIN, test: TEST, epochs: EPOCHS, gatedEpochs: GATED_EPOCHS, gateLr: GATE_LR, supernet, curve, oracle, points };
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

/**
 * Median ms at batch 1 and 64 in ONNX Runtime (2 threads, no spinning): the export by segments run by its
 * runtime (the gate, then each width's rows through that width's graph), against the same folder's stem and
 * widest route without the gate (the full network). The two take turns, so the ratio does not carry drift.
 */
async function onnxTimes(model: Network, dir: string, test: ImageSet, flopsRatio: number) {
  await saveSegments(model, dir, { force: true });
  const ort = await import('onnxruntime-node');
  const options = sessionOptions({ threads: 2, spinning: false });
  const session = (await openSession(dir, { threads: 2, spinning: false })) as SegmentedSession;
  const [stemSeg, sw] = session.manifest.segments;
  if (stemSeg.kind !== 'plain' || sw.kind !== 'switch') throw new Error('expected a stem and a switch');
  const stem = await ort.InferenceSession.create(path.join(dir, stemSeg.graph.file), options);
  const widest = await ort.InferenceSession.create(path.join(dir, sw.routes[sw.routes.length - 1].file), options);
  const per = test.height * test.width * test.channels;
  const out: Record<string, { routed: number; full: number }> = {};
  for (const n of [1, 64]) {
    // One channel: NHWC and NCHW hold the same values.
    const x = toFloat(test, 0, n, new Float32Array(n * per));
    const full = async () => {
      const y = await stem.run({ x: new ort.Tensor('float32', x, [n, test.channels, test.height, test.width]) });
      await widest.run({ x: y.y });
    };
    const routed = async () => {
      await session.runRouted(x);
    };
    const times = { routed: [] as number[], full: [] as number[] };
    for (let i = 0; i < 33; i++) {
      for (const [k, f] of [['routed', routed], ['full', full]] as const) {
        const t0 = performance.now();
        await f();
        if (i >= 3) times[k].push(performance.now() - t0);
      }
    }
    out[`batch${n}`] = { routed: median(times.routed), full: median(times.full) };
  }
  await session.release();
  await stem.release();
  await widest.release();
  const timeRatio = { batch1: out.batch1.routed / out.batch1.full, batch64: out.batch64.routed / out.batch64.full };
  return { ms: out, timeRatio, timeOverFlops: timeRatio.batch64 / flopsRatio };
}

tf.enableProdMode();
await main();
process.exit(0);
