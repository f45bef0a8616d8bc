/**
 * Dynamic parameters (CondConv / dynamic convolution, `--model vgg-condconv`) on Fashion-MNIST, side by side in
 * one run against two static references trained the same way:
 *   - equal FLOPs: vgg-w at full width (the same layer widths; CondConv adds only its routing per sample);
 *   - equal parameters: vgg-w with wider layers, its parameter count the closest to the CondConv network's;
 *   - with --with-se, also vgg-se (squeeze-and-excitation: dynamic features instead of dynamic parameters).
 * For each: test accuracy, FLOPs per sample (the routing's share), parameters, and median ms per batch at batch 1
 * and 64 in TF.js (the frozen network) and in ONNX Runtime (the exported graph, 2 threads), the models taking turns.
 * For the CondConv network also the routing's mean entropy per layer.
 * Usage: npm run bench:condconv [-- --train 4000 --test 2000 --epochs 1 --experts 4 --routing sigmoid
 *          --temperature T --anneal-epochs N --with-se --results .bench/condconv.json --json]
 * Runs go to .bench/condconv/ (replaced on each bench run), results to --results (written atomically).
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { train, type TrainOptions } from '../src/train/trainer.js';
import { createModel } from '../src/models/zoo.js';
import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { toFloat } from '../src/data/imageset.js';
import { evaluate } from '../src/eval/evaluate.js';
import { median, timeInTurns } from '../src/eval/latency.js';
import { mixtureStats } from '../src/eval/mixtures.js';
import { exportOnnx } from '../src/export/export.js';
import { sessionOptions } from '../src/runtime/node.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { initEngine } from '../src/engine/backend.js';
import { benchArgs } from './common.js';

const args = process.argv.slice(2);
const { value, num } = benchArgs(args);
const json = args.includes('--json');
const TRAIN = num('train', 4000);
const TEST = num('test', 2000);
const EPOCHS = num('epochs', 1);
const EXPERTS = num('experts', 4);
const ROUTING = value('routing') ?? 'sigmoid';
const TEMPERATURE = value('temperature') === undefined ? undefined : num('temperature', 1);
const ANNEAL = value('anneal-epochs') === undefined ? undefined : Number(value('anneal-epochs'));
const RESULTS = value('results') ?? '.bench/condconv.json';
const ROOT = '.bench/condconv';
const DATA_DIR = value('data-dir');
const WIDTHS = [32, 32, 64, 64];
const log = (s: string) => process.stderr.write(s + '\n');

/** vgg-w widths [32, a, 2a, 2a] whose parameter count is the closest to `target`. */
function equalParamWidths(target: number): number[] {
  let best = { widths: WIDTHS, gap: Infinity };
  for (let a = 16; a <= 128; a += 8) {
    const widths = [32, a, 2 * a, 2 * a];
    const m = createModel('vgg-w', { widths });
    const gap = Math.abs(m.cost(1).params - target);
    m.dispose();
    if (gap < best.gap) best = { widths, gap };
  }
  return best.widths;
}

async function main() {
  await initEngine('auto');
  const cond = createModel('vgg-condconv', { widths: WIDTHS, experts: EXPERTS, routing: ROUTING, temperature: TEMPERATURE, annealEpochs: ANNEAL });
  const condParams = cond.cost(1).params;
  cond.dispose();
  const wide = equalParamWidths(condParams);
  const entries: { name: string; model: string; modelArgs: Record<string, unknown> }[] = [
    { name: 'condconv', model: 'vgg-condconv', modelArgs: { widths: WIDTHS, experts: EXPERTS, routing: ROUTING, temperature: TEMPERATURE, annealEpochs: ANNEAL } },
    { name: 'static, equal FLOPs', model: 'vgg-w', modelArgs: { widths: WIDTHS } },
    { name: 'static, equal params', model: 'vgg-w', modelArgs: { widths: wide } },
    ...(args.includes('--with-se') ? [{ name: 'squeeze-excitation', model: 'vgg-se', modelArgs: { widths: WIDTHS } }] : []),
  ];
  const trained: { name: string; model: Network; test: ImageSet }[] = [];
  for (const [i, e] of entries.entries()) {
    log(`${e.name}: ${e.model} ${JSON.stringify(e.modelArgs)}, ${EPOCHS} epoch(s) on ${TRAIN} images`);
    const options: TrainOptions = {
      model: e.model,
      modelArgs: e.modelArgs,
      dataset: 'fashion-mnist',
      dataDir: DATA_DIR,
      trainLimit: TRAIN,
      testLimit: TEST,
      epochs: EPOCHS,
      batchSize: 64,
      // The static references train at full width only, as a plain network.
      schedule: 'vanilla',
      seed: 0,
      out: path.join(ROOT, `run-${i}`),
      force: true,
      onEpoch: (r) => log(`    epoch ${r.epoch}: loss ${r.loss.toFixed(4)}`),
    };
    const r = await train(options);
    trained.push({ name: e.name, model: r.model, test: r.dataset.test });
  }
  // TF.js: the frozen networks at batch 1 and 64, taking turns.
  const tfjs: Record<string, number[]> = {};
  for (const n of [1, 64]) {
    const subs = trained.map((t) => t.model.subnet(1));
    const x = tf.randomUniform([n, 28, 28, 1], 0, 1, 'float32', 3);
    tfjs[`batch${n}`] = timeInTurns(subs.map((s) => () => s.predict(x)), { reps: n === 1 ? 30 : 10 });
    x.dispose();
    subs.forEach((s) => s.dispose());
  }
  const onnx = await onnxTimes(trained.map((t) => t.model), trained[0].test);
  const rows = trained.map((t, k) => {
    const cost = t.model.cost(1);
    const routing = cost.layers.filter((c) => c.kind === 'CondConvRouting').reduce((a, c) => a + 2 * c.macs, 0);
    return {
      name: t.name,
      model: t.model.config.model,
      args: entries[k].modelArgs,
      accuracy: evaluate(t.model, t.test, 1).accuracy,
      flops: cost.flops,
      routingFlops: routing,
      params: cost.params,
      tfjsMs: { batch1: tfjs.batch1[k], batch64: tfjs.batch64[k] },
      onnxMs: { batch1: onnx.batch1[k], batch64: onnx.batch64[k] },
    };
  });
  const routing = mixtureStats(trained[0].model, trained[0].test).layers.map((l) => ({ layer: l.layer, meanEntropy: l.meanEntropy, maxEntropy: l.maxEntropy, meanWeights: l.meanWeights }));
  trained.forEach((t) => t.model.dispose());
  const ref = rows[1];
  const ratios = rows.map((r) => ({
    name: r.name,
    accuracy: r.accuracy - ref.accuracy,
    flops: r.flops / ref.flops,
    params: r.params / ref.params,
    tfjs: { batch1: r.tfjsMs.batch1 / ref.tfjsMs.batch1, batch64: r.tfjsMs.batch64 / ref.tfjsMs.batch64 },
    onnx: { batch1: r.onnxMs.batch1 / ref.onnxMs.batch1, batch64: r.onnxMs.batch64 / ref.onnxMs.batch64 },
  }));
  for (const r of rows) {
    log(
      `${r.name.padEnd(22)} ${(100 * r.accuracy).toFixed(2)}%  FLOPs ${(r.flops / 1e6).toFixed(2)}M (routing ${(r.routingFlops / 1e6).toFixed(3)}M)  params ${(r.params / 1e6).toFixed(3)}M  ` +
        `TF.js ${r.tfjsMs.batch1.toFixed(2)} / ${r.tfjsMs.batch64.toFixed(1)} ms  ORT ${r.onnxMs.batch1.toFixed(2)} / ${r.onnxMs.batch64.toFixed(1)} ms (batch 1 / 64)`,
    );
  }
  for (const l of routing) log(`  ${l.layer}: routing entropy ${l.meanEntropy.toFixed(3)} of ${l.maxEntropy.toFixed(3)}`);
  const results = { dataset: 'fashion-mnist', train: TRAIN, test: TEST, epochs: EPOCHS, experts: EXPERTS, routing: ROUTING, temperature: TEMPERATURE, rows, ratiosToEqualFlops: ratios, routingStats: routing };
  await writeFileAtomic(RESULTS, JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

/** Median ms per batch at batch 1 and 64 of each model's exported graph in ONNX Runtime (2 threads), taking turns. */
async function onnxTimes(models: Network[], test: ImageSet): Promise<Record<string, number[]>> {
  const ort = await import('onnxruntime-node');
  const options = sessionOptions({ threads: 2, spinning: false });
  const sessions = await Promise.all(models.map((m) => ort.InferenceSession.create(exportOnnx(m).bytes, options)));
  const out: Record<string, number[]> = {};
  for (const n of [1, 64]) {
    // One channel: NHWC and NCHW hold the same values.
    const x = toFloat(test, 0, n, new Float32Array(n * 28 * 28));
    const feeds = { images: new ort.Tensor('float32', x, [n, 1, 28, 28]), u: new ort.Tensor('float32', Float32Array.of(1), []) };
    const times = sessions.map((): number[] => []);
    for (let i = 0; i < (n === 1 ? 53 : 23); i++) {
      for (const [k, s] of sessions.entries()) {
        const t0 = performance.now();
        await s.run(feeds);
        if (i >= 3) times[k].push(performance.now() - t0);
      }
    }
    out[`batch${n}`] = times.map(median);
  }
  await Promise.all(sessions.map((s) => s.release()));
  return out;
}

tf.enableProdMode();
await main();
process.exit(0);
