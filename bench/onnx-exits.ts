/**
 * Early exits in ONNX Runtime: where a staged run's time goes (vgg-exits, random weights, batch 64, u = 1).
 * Side by side in interleaved rounds: the whole network in one pass (`run`, stage -1); `runExits` with no sample
 * leaving (every stage in turn: the same backbone FLOPs plus the exit heads'); `runExits` with every sample
 * leaving at the first exit; and stage 0 alone fetching its `features` output or only its scores.
 * The same runs again in a child process whose glibc keeps freed memory for reuse (the PyTorch peer's
 * MALLOC_* settings), to show what the fresh buffers of the stage outputs cost.
 * Usage: node dist/bench/onnx-exits.js [--rounds 8] [--reps 8] [--threads N] [--json]
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { saveOnnx } from '../src/export/export.js';
import { randomizeStatistics } from '../src/export/fixtures.js';
import { OnnxModel, defaultThreads, sessionOptions } from '../src/runtime/node.js';
import { PEER_MALLOC_ENV } from './torch.js';

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const ROUNDS = Number(opt('rounds') ?? 8);
const REPS = Number(opt('reps') ?? 8);
const THREADS = Number(opt('threads') ?? defaultThreads());
const B = 64;
const CASES = ['whole', 'staged, none leaves', 'staged, all leave at exit 1', 'stage 0 with features', 'stage 0, scores only'] as const;
type Case = (typeof CASES)[number];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function measure(file: string): Promise<{ ms: Record<Case, number>; spread: Record<Case, [number, number]>; flopsRatio: Record<string, number> }> {
  const model = await OnnxModel.load(file, { threads: THREADS });
  const raw = await ort.InferenceSession.create(file, sessionOptions({ threads: THREADS }));
  const x = Float32Array.from({ length: B * 784 }, (_, i) => ((i * 7919) % 1000) / 1000);
  const T = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
  const feeds = { images: T(x, [B, 1, 28, 28]), u: T(Float32Array.of(1), []), stage: T(Float32Array.of(0), []) };
  const flopsRatio: Record<string, number> = {};
  const run: Record<Case, () => Promise<unknown>> = {
    whole: () => model.run(x, 1),
    'staged, none leaves': async () => (flopsRatio['staged, none leaves'] = (await model.runExits(x, 1, { rule: 'entropy', thresholds: 0 })).flopsRatio),
    'staged, all leave at exit 1': async () => (flopsRatio['staged, all leave at exit 1'] = (await model.runExits(x, 1, { rule: 'entropy', thresholds: 1e9 })).flopsRatio),
    'stage 0 with features': () => raw.run(feeds, ['scores', 'features']),
    'stage 0, scores only': () => raw.run(feeds, ['scores']),
  };
  const rounds = Object.fromEntries(CASES.map((c) => [c, [] as number[]])) as Record<Case, number[]>;
  for (let r = 0; r < ROUNDS; r++) {
    for (const c of CASES) {
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
  const ms = Object.fromEntries(CASES.map((c) => [c, median(rounds[c])])) as Record<Case, number>;
  const spread = Object.fromEntries(CASES.map((c) => [c, [Math.min(...rounds[c]), Math.max(...rounds[c])]])) as Record<Case, [number, number]>;
  return { ms, spread, flopsRatio };
}

async function main() {
  const file = path.resolve('.bench', 'vgg-exits.onnx');
  if (args.includes('--child')) {
    process.stdout.write(JSON.stringify(await measure(file)) + '\n');
    return;
  }
  await initEngine('cpu');
  const net = createModel('vgg-exits');
  randomizeStatistics(net, 1);
  await saveOnnx(net, file);
  process.stderr.write(`vgg-exits (random weights), batch ${B}, ORT ${THREADS} threads, ${ROUNDS} rounds of ${REPS} reps; load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}\n`);
  const plain = await measure(file);
  const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', ...args], { env: { ...process.env, ...PEER_MALLOC_ENV }, encoding: 'utf8', maxBuffer: 1 << 20 });
  const kept = child.status === 0 ? (JSON.parse(child.stdout) as Awaited<ReturnType<typeof measure>>) : null;
  if (!kept) process.stderr.write(`the child with glibc's settings failed: ${child.stderr}\n`);
  const results = { batch: B, threads: THREADS, rounds: ROUNDS, reps: REPS, loadAverage: os.loadavg(), default: plain, mallocKeep: kept, mallocEnv: PEER_MALLOC_ENV };
  if (args.includes('--json')) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const f = (r: Awaited<ReturnType<typeof measure>>, c: Case) => `${r.ms[c].toFixed(2)} [${r.spread[c][0].toFixed(1)}-${r.spread[c][1].toFixed(1)}]`;
  const lines = ['case                          FLOPs ratio  ms, default glibc [rounds]  ms, glibc keeps freed memory [rounds]'];
  for (const c of CASES) {
    const fr = c === 'whole' ? 1 : plain.flopsRatio[c];
    lines.push(`${c.padEnd(30)}${(fr === undefined ? '-' : fr.toFixed(3)).padStart(11)}  ${f(plain, c).padStart(26)}  ${kept ? f(kept, c).padStart(36) : '-'}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
