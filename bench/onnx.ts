/**
 * ONNX Runtime deployment benchmark (vgg-w, every level), side by side in one run:
 *   1. ORT latency at batch 1 and 64 against PyTorch eager running the same sliced network
 *      (bench/torch_peer.py; random weights, which does not change timing). Target: ORT <= 0.5x PyTorch.
 *      The peer slices exact group counts: this compares the variant without channel rounding.
 *   2. latency(u)/latency(1) against FLOPs(u)/FLOPs(1) at batch 64 for u >= 0.25. Target: within 1.2x.
 *      Measured for each `--channel-multiple` variant (vgg-w with each level's channels rounded to that
 *      multiple, FLOPs counting the rounded channels; `16s`: the same with the stem throttled in place of c2,
 *      `--throttle-stem`; `16b`, with both throttled, `--throttle-both`, on request); the variant whose worst level is closest is kept.
 * The variants are measured in interleaved rounds (the peer runs after the first half): each figure is the
 * median over rounds, with the rounds' spread, to damp load from other processes on a shared machine.
 * Usage: node dist/bench/onnx.js [--rounds 5] [--reps 10] [--warmup 3] [--channel-multiple 1,16,16s]
 *   [--threads N (ORT and PyTorch; default: cores for ORT, PyTorch's fastest configuration)] [--run RUN_DIR]
 *   [--json]. With --run, the run's own network is the one variant. Results also go to .bench/onnx.json (atomically).
 */
import os from 'node:os';
import path from 'node:path';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { loadRun } from '../src/train/run.js';
import type { Network } from '../src/models/network.js';
import { saveOnnx } from '../src/export/export.js';
import { randomizeStatistics } from '../src/export/fixtures.js';
import { OnnxModel, defaultThreads } from '../src/runtime/node.js';
import { profileModel, type LatencyTable } from '../src/runtime/profile.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { runTorchPeer } from './torch.js';

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const json = args.includes('--json');
const ROUNDS = Number(opt('rounds') ?? 5);
const REPS = Number(opt('reps') ?? 10);
const WARMUP = Number(opt('warmup') ?? 3);
const BATCHES = [1, 64];
const log = (s: string) => process.stderr.write(s + '\n');
const f = (x: number | undefined, d = 2) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

/** Active output channels of the stem, c2, c3, c4 and fc1 at a utilization. */
function widths(model: Network, u: number): number[] {
  const ch = model.channels(u);
  return ['stem.conv', 'c2.conv', 'c3.conv', 'c4.conv', 'fc1'].map((k) => ch.get(k) ?? 0);
}

/** Which of the stem and c2 follow the levels (`vgg-w`'s default throttles c2): each variant's suffix and model arguments. */
const THROTTLES = {
  c2: { suffix: '', args: {} },
  stem: { suffix: 's', args: { throttleStem: true } },
  both: { suffix: 'b', args: { throttleBoth: true } },
} as const;
type Throttle = keyof typeof THROTTLES;
const THROTTLE_NAMES = Object.keys(THROTTLES) as Throttle[];

/** A `--channel-multiple` entry: `16` rounds to multiples of 16, `16s` also throttles the stem in place of c2, `16b` both. */
function parseVariant(spec: string): { multiple: number; throttle: Throttle } {
  const m = /^(\d+)([sb]?)$/.exec(spec.trim());
  if (!m || Number(m[1]) < 1) throw new Error(`--channel-multiple takes a list like 1,16,16s,16b, got ${spec}`);
  return { multiple: Number(m[1]), throttle: THROTTLE_NAMES.find((t) => THROTTLES[t].suffix === m[2])! };
}

/** A model's throttled first layers, from its config: the variant whose arguments it has (c2's are none). */
function throttleOf(args: Record<string, unknown>): Throttle {
  return THROTTLE_NAMES.find((t) => t !== 'c2' && Object.entries(THROTTLES[t].args).every(([k, v]) => args[k] === v)) ?? 'c2';
}

/** A u inside a level's interval: the torch peer floors u*(D+1) without dynn's epsilon, so avoid the boundary. */
function peerU(level: number, D: number): number {
  return level >= D ? 1 : (level + 0.5) / (D + 1);
}

/** A variant's name: its channel multiple, `s` when the stem is throttled in place of c2, `b` for both. */
function name(v: { multiple: number; throttle: Throttle }): string {
  return `${v.multiple}${THROTTLES[v.throttle].suffix}`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

interface Variant {
  multiple: number;
  throttle: Throttle;
  model: Network;
  ort: OnnxModel;
  tables: LatencyTable[];
}

async function main() {
  await initEngine('cpu');
  const runDir = opt('run');
  const specs = runDir ? [] : (opt('channel-multiple') ?? '1,16,16s').split(',').map(parseVariant);
  const threads = Number(opt('threads') ?? defaultThreads());
  const variants: Variant[] = [];
  const networks = runDir
    ? [(await loadRun(runDir)).model]
    : specs.map((v) => createModel('vgg-w', { ...(v.multiple > 1 ? { channelMultiple: v.multiple } : {}), ...THROTTLES[v.throttle].args }));
  for (const model of networks) {
    if (model.config.model !== 'vgg-w') throw new Error(`the PyTorch peer runs vgg-w only, got ${model.config.model}`);
    if (!runDir) randomizeStatistics(model, 1);
    const multiple = (model.config.args.channelMultiple as number | undefined) ?? 1;
    const throttle = throttleOf(model.config.args);
    const file = path.resolve('.bench', `vgg-w-m${multiple}${THROTTLES[throttle].suffix}.onnx`);
    await saveOnnx(model, file);
    variants.push({ multiple, throttle, model, ort: await OnnxModel.load(file, { threads }), tables: [] });
  }
  const D = variants[0].model.numLevels - 1;
  const levels = variants[0].ort.levels;
  log(`vgg-w (${runDir ?? 'random weights'}), ${levels.length} levels, channel multiples ${variants.map(name).join(', ')}, ORT ${threads} threads, ${ROUNDS} rounds of ${REPS} reps after ${WARMUP} warm-up; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);

  const us = levels.map((l) => peerU(l.level, D));
  let peer: Awaited<ReturnType<typeof runTorchPeer>> | undefined;
  for (let r = 0; r < ROUNDS; r++) {
    for (const v of variants) v.tables.push(await profileModel(v.ort, { batches: BATCHES, reps: REPS, warmup: WARMUP, threads }));
    log(`ORT round ${r + 1}/${ROUNDS} done`);
    if (r === Math.floor((ROUNDS - 1) / 2)) {
      // PyTorch at its best: its fastest thread count and wait policy unless --threads fixes both sides' threads.
      peer = await runTorchPeer({ mode: 'latency', us, batches: BATCHES, reps: REPS * ROUNDS, warmup: WARMUP, ...(opt('threads') ? { threads } : {}) });
      if (!peer.ok) log(`PyTorch peer skipped: ${peer.reason}`);
    }
  }
  for (const v of variants) await v.ort.dispose();

  const measured = variants.map((v) => {
    const top = v.tables.map((t) => t.levels[t.levels.length - 1].latencyMs['64']);
    const rows = v.ort.levels.map((l, i) => {
      const torch = v.multiple === 1 && v.throttle === 'c2' && peer?.ok ? (peer.result.latencyMs[String(us[i])] as Record<string, number>) : undefined;
      const ortMs = Object.fromEntries(BATCHES.map((b) => [String(b), median(v.tables.map((t) => t.levels[i].latencyMs[String(b)]))]));
      // Ratios within a round (the same minutes' load), then their median and spread over rounds.
      const ratios = v.tables.map((t, r) => t.levels[i].latencyMs['64'] / top[r]);
      const latencyRatio = median(ratios);
      const w = widths(v.model, l.u);
      return {
        level: l.level,
        u: l.u,
        channels: w,
        aligned8: w.every((c) => c % 8 === 0),
        aligned16: w.every((c) => c % 16 === 0),
        flopsRatio: l.flopsRatio,
        ortMs,
        torchMs: torch ?? null,
        ortOverTorch: torch ? { '1': ortMs['1'] / torch['1'], '64': ortMs['64'] / torch['64'] } : null,
        latencyRatio64: latencyRatio,
        latencyRatio64Range: [Math.min(...ratios), Math.max(...ratios)],
        latencyOverFlops: latencyRatio / l.flopsRatio,
      };
    });
    const worst = Math.max(...rows.filter((r) => r.u >= 0.25).map((r) => r.latencyOverFlops));
    return { channelMultiple: v.multiple, throttleStem: v.throttle === 'stem', throttleBoth: v.throttle === 'both', name: name(v), levels: rows, worstLatencyOverFlops: worst, latencyWithin1_2xFlops: worst <= 1.2 };
  });
  const kept = measured.reduce((a, b) => (b.worstLatencyOverFlops < a.worstLatencyOverFlops ? b : a));
  const exact = measured.find((m) => m.channelMultiple === 1 && !m.throttleStem && !m.throttleBoth);
  const results = {
    model: 'vgg-w',
    weights: runDir ?? 'random',
    threads,
    rounds: ROUNDS,
    reps: REPS,
    cores: os.availableParallelism(),
    loadAverage: os.loadavg(),
    torch: peer?.ok ? { version: peer.result.torch, threads: peer.result.threads, config: peer.result.config, configs: peer.result.configs } : { skipped: peer?.ok === false ? peer.reason : 'not run' },
    variants: measured,
    channelMultiple: kept.channelMultiple,
    throttleStem: kept.throttleStem,
    throttleBoth: kept.throttleBoth,
    levels: kept.levels,
    targets: {
      ortAtMostHalfTorch: exact ? exact.levels.every((r) => r.ortOverTorch && r.ortOverTorch['1'] <= 0.5 && r.ortOverTorch['64'] <= 0.5) : null,
      latencyWithin1_2xFlops: kept.latencyWithin1_2xFlops,
    },
  };
  await writeFileAtomic('.bench/onnx.json', JSON.stringify(results, null, 2) + '\n');
  if (json) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const out: string[] = [];
  for (const m of measured) {
    out.push(`channel multiple ${m.name}${m === kept ? ' (kept)' : ''}: worst latency/FLOPs ratio (u >= 0.25) ${f(m.worstLatencyOverFlops)}`);
    out.push('level  u      channels(stem,c2,c3,c4,fc1)  ORT@1  torch@1  x     ORT@64  torch@64  x     FLOPs ratio  lat ratio@64 [rounds]  lat/FLOPs');
    for (const r of m.levels) {
      out.push(
        [
          String(r.level).padEnd(6),
          r.u.toFixed(3).padEnd(6),
          (r.channels.join(',') + (r.aligned16 ? '' : r.aligned8 ? ' +' : ' *')).padEnd(28),
          f(r.ortMs['1']).padStart(5),
          f(r.torchMs?.['1']).padStart(8),
          f(r.ortOverTorch?.['1']).padStart(5),
          f(r.ortMs['64']).padStart(7),
          f(r.torchMs?.['64']).padStart(9),
          f(r.ortOverTorch?.['64']).padStart(5),
          f(r.flopsRatio, 3).padStart(12),
          `${f(r.latencyRatio64, 3)} [${f(r.latencyRatio64Range[0], 2)}-${f(r.latencyRatio64Range[1], 2)}]`.padStart(22),
          (r.u >= 0.25 ? f(r.latencyOverFlops) : '(u<0.25)').padStart(10),
        ].join(' '),
      );
    }
  }
  out.push('* a channel count not a multiple of 8, + a multiple of 8 but not 16: ORT computes convolutions in NCHWc blocks of 8 (AVX2) or');
  out.push('  16 (AVX-512) channels, padding the rest, so such levels save less time than FLOPs (--channel-multiple 16 rounds them);');
  out.push('  16s also throttles the stem in place of c2, which keeps two blocks: one block runs about 1.4x slower per FLOP.');
  out.push(`targets: ORT <= 0.5x PyTorch at every level (channel multiple 1): ${results.targets.ortAtMostHalfTorch}; latency ratio <= 1.2x FLOPs ratio (u >= 0.25), channel multiple ${kept.name}: ${results.targets.latencyWithin1_2xFlops}`);
  process.stdout.write(out.join('\n') + '\n');
}

await main();
