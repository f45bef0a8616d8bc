/**
 * Early exits in ONNX Runtime: what early termination costs and saves, batch 64, u = 1. The model is
 * `vgg-exits` with random weights and synthetic images, exported with an entropy policy so its graph holds the
 * rule, or `--model FILE.onnx`, a trained early-exit model exported with its fitted policy (`dynn fit-exits
 * --save`, then `dynn export`), on the first Fashion-MNIST test images. Side by side in interleaved rounds: the
 * whole network in one pass (`run`, stage -1); `runExits` with the rule in the graph (one run, stage -2) and
 * stage by stage from JavaScript (`staged: true`), each with no sample leaving (the backbone's FLOPs plus the
 * exit heads'), about half of the samples still in leaving at each exit (thresholds split each exit's
 * scores of the samples reaching it), every sample leaving at the first
 * exit and, for a trained model, its stored policy; and stage 0 alone fetching its `features` output or only
 * its scores. `time/FLOPs` is the time relative to the whole pass over the FLOPs relative to it.
 * The same runs again in a child process whose glibc keeps freed memory for reuse (the PyTorch peer's
 * MALLOC_* settings), to show what the fresh buffers of the stage outputs cost.
 * Usage: node dist/bench/onnx-exits.js [--model FILE.onnx] [--rounds 8] [--reps 8] [--threads N] [--json]
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { saveOnnx } from '../src/export/export.js';
import { randomizeStatistics, splitAt } from '../src/export/fixtures.js';
import { readOnnxMetadata } from '../src/export/metadata.js';
import { loadDataset } from '../src/data/datasets.js';
import { toFloat } from '../src/data/imageset.js';
import { OnnxModel, defaultThreads, readModelFile, sessionOptions } from '../src/runtime/node.js';
import { nhwcToNchw } from '../src/runtime/core.js';
import { exitRules, exitScores, leaves, neverLeaves } from '../src/scaling/rules.js';
import { arrayRows } from '../src/route/dispatch.js';
import { PEER_MALLOC_ENV } from './torch.js';
import { benchArgs } from './args.js';

const args = process.argv.slice(2);
const { value, int } = benchArgs(args);
const ROUNDS = int('rounds', 8);
const REPS = int('reps', 8);
const THREADS = int('threads', defaultThreads());
const MODEL = value('model');
const B = 64;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

interface Measured {
  cases: string[];
  ms: Record<string, number>;
  spread: Record<string, [number, number]>;
  flopsRatio: Record<string, number>;
  /** Share of the samples leaving at each exit, per runExits case. */
  shares: Record<string, number[]>;
}

/** The batch the cases run: the first test images for a trained model, else a fixed synthetic pattern. */
async function batchFor(shape: readonly number[]): Promise<Float32Array> {
  if (!MODEL) return Float32Array.from({ length: B * shape.reduce((a, b) => a * b, 1) }, (_, i) => ((i * 7919) % 1000) / 1000);
  const set = (await loadDataset('fashion-mnist', { trainLimit: 1, testLimit: B })).test;
  if ([set.channels, set.height, set.width].join() !== shape.join()) throw new Error(`fashion-mnist images are ${set.height}x${set.width}x${set.channels}, the model takes [${shape}]`);
  return nhwcToNchw(toFloat(set, 0, B), shape);
}

async function measure(file: string): Promise<Measured> {
  const model = await OnnxModel.load(file, { threads: THREADS });
  const meta = model.metadata;
  if (!meta.exits?.inGraph || !meta.exits.policy) throw new Error(`${file} has no exit rule in its graph: export an early-exit run after \`dynn fit-exits --save\``);
  const { count, policy } = meta.exits;
  const rule = policy.rule;
  const raw = await ort.InferenceSession.create(file, sessionOptions({ threads: THREADS }));
  const x = await batchFor(meta.input.shape);
  const T = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
  const feeds = { images: T(x, [B, ...meta.input.shape]), u: T(Float32Array.of(1), []), stage: T(Float32Array.of(0), []), exit_thresholds: new ort.Tensor('float64', Float64Array.from(policy.thresholds), [count - 1]) };
  // Per exit, a threshold splitting the scores of the samples still in there (`splitAt`: no sample on it, so
  // float rounding cannot move one across): about half of those still in leave at each exit.
  const half: number[] = [];
  for (let k = 0, input: Float32Array = x, dims = [B, ...meta.input.shape]; k < count - 1; k++) {
    const out = await raw.run({ ...feeds, images: T(input, dims), stage: T(Float32Array.of(k), []) }, ['scores', 'features']);
    const scores = exitScores(exitRules.get(rule), out.scores.data as Float32Array, meta.numClasses);
    const t = scores.length > 1 ? splitAt(scores, 0.5) : half[k - 1] ?? 0;
    half.push(t);
    const stay = Int32Array.from(scores.keys()).filter((i) => !leaves(exitRules.get(rule), scores[i], t));
    const features = out.features.data as Float32Array;
    input = arrayRows(features.length / dims[0]).gather(features, stay);
    dims = [stay.length, ...out.features.dims.slice(1)];
    if (stay.length === 0) {
      while (half.length < count - 1) half.push(t);
      break;
    }
  }
  const none = neverLeaves(exitRules.get(rule));
  const policies: [string, number | number[]][] = [
    ['none leaves', none],
    ['half leave at each exit', half],
    ['all leave at exit 1', -none],
    ...(MODEL ? [['stored policy', policy.thresholds] as [string, number[]]] : []),
  ];
  const flopsRatio: Record<string, number> = {};
  const shares: Record<string, number[]> = {};
  const run: Record<string, () => Promise<unknown>> = { whole: () => model.run(x, 1) };
  for (const staged of [false, true]) {
    for (const [name, thresholds] of policies) {
      const c = `${staged ? 'staged' : 'in graph'}, ${name}`;
      run[c] = async () => {
        const p = await model.runExits(x, 1, { rule, thresholds, staged });
        if (p.oneRun === staged) throw new Error(`runExits ran ${p.oneRun ? 'in the graph' : 'staged'}, not as asked`);
        flopsRatio[c] = p.flopsRatio;
        shares[c] = Array.from({ length: count }, (_, k) => p.exits.filter((e) => e === k).length / B);
      };
    }
  }
  run['stage 0 with features'] = () => raw.run(feeds, ['scores', 'features']);
  run['stage 0, scores only'] = () => raw.run(feeds, ['scores']);
  const cases = Object.keys(run);
  const rounds = Object.fromEntries(cases.map((c) => [c, [] as number[]]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const c of cases) {
      const t: number[] = [];
      for (let i = 0; i < REPS + 2; i++) {
        const t0 = performance.now();
        await run[c]();
        if (i >= 2) t.push(performance.now() - t0);
      }
      rounds[c].push(median(t));
    }
  }
  await model.dispose();
  await raw.release();
  const ms = Object.fromEntries(cases.map((c) => [c, median(rounds[c])]));
  const spread = Object.fromEntries(cases.map((c) => [c, [Math.min(...rounds[c]), Math.max(...rounds[c])] as [number, number]]));
  return { cases, ms, spread, flopsRatio, shares };
}

async function main() {
  const file = MODEL ? path.resolve(MODEL) : path.resolve('.bench', 'vgg-exits.onnx');
  if (args.includes('--child')) {
    process.stdout.write(JSON.stringify(await measure(file)) + '\n');
    return;
  }
  if (!MODEL) {
    await initEngine('cpu');
    const net = createModel('vgg-exits');
    randomizeStatistics(net, 1);
    await saveOnnx(net, file, { exitPolicy: { rule: 'entropy', thresholds: [0, 0, 0] } });
    net.dispose();
  }
  const what = MODEL ? `${readOnnxMetadata(await readModelFile(file), file).model.model} (${MODEL}) on fashion-mnist test images` : 'vgg-exits (random weights)';
  process.stderr.write(`${what}, batch ${B}, ORT ${THREADS} threads, ${ROUNDS} rounds of ${REPS} reps; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}\n`);
  const plain = await measure(file);
  const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', ...args], { env: { ...process.env, ...PEER_MALLOC_ENV }, encoding: 'utf8', maxBuffer: 1 << 20 });
  const kept = child.status === 0 ? (JSON.parse(child.stdout) as Measured) : null;
  if (!kept) process.stderr.write(`the child with glibc's settings failed: ${child.stderr}\n`);
  // Time relative to the whole pass over FLOPs relative to it: 1 where the time follows the FLOPs.
  const timeOverFlops = Object.fromEntries(Object.entries(plain.flopsRatio).map(([c, fr]) => [c, plain.ms[c] / plain.ms.whole / fr]));
  const results = { model: MODEL ?? 'vgg-exits (random weights)', batch: B, threads: THREADS, rounds: ROUNDS, reps: REPS, loadAverage: os.loadavg(), default: plain, timeOverFlops, mallocKeep: kept, mallocEnv: PEER_MALLOC_ENV };
  if (args.includes('--json')) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const f = (r: Measured, c: string) => `${r.ms[c].toFixed(2)} [${r.spread[c][0].toFixed(1)}-${r.spread[c][1].toFixed(1)}]`;
  const lines = [`${'case'.padEnd(34)}FLOPs ratio  time/FLOPs  ms, default glibc [rounds]  ms, glibc keeps freed memory [rounds]  leaving at each exit`];
  for (const c of plain.cases) {
    const fr = c === 'whole' ? 1 : plain.flopsRatio[c];
    const tf = c === 'whole' ? 1 : timeOverFlops[c];
    const shares = plain.shares[c]?.map((v) => v.toFixed(2)).join(' ') ?? '';
    lines.push(`${c.padEnd(34)}${(fr === undefined ? '-' : fr.toFixed(3)).padStart(11)}  ${(tf === undefined ? '-' : `${tf.toFixed(2)}x`).padStart(10)}  ${f(plain, c).padStart(26)}  ${kept ? f(kept, c).padStart(36) : '-'.padStart(36)}  ${shares}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
