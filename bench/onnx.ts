/**
 * ONNX Runtime deployment benchmark (vgg-w, every level), side by side in one run:
 *   1. ORT latency at batch 1 and 64 against PyTorch eager running the same sliced network
 *      (bench/torch_peer.py; random weights, which does not change timing). Target: ORT <= 0.5x PyTorch.
 *   2. latency(u)/latency(1) against FLOPs(u)/FLOPs(1) at batch 64 for u >= 0.25. Target: within 1.2x.
 * ORT is measured twice (before and after the peer) and the lower median is kept, to damp load from other
 * processes on a shared machine.
 * Usage: node dist/bench/onnx.js [--reps 30] [--warmup 5] [--threads N (ORT and PyTorch; default: cores for ORT, PyTorch's fastest configuration)] [--run RUN_DIR] [--json]. Results also go to
 * .bench/onnx.json (atomically).
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
const REPS = Number(opt('reps') ?? 30);
const WARMUP = Number(opt('warmup') ?? 5);
const BATCHES = [1, 64];
const log = (s: string) => process.stderr.write(s + '\n');
const f = (x: number | undefined, d = 2) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

/** Active output channels of c2, c3, c4 and fc1 at a utilization (vgg-w: every throttled block has D groups). */
function widths(model: Network, u: number): number[] {
  const a = model.config.args as { widths: number[]; hidden: number; groups: number };
  const d = model.plan(u).groups.get('c2.conv')?.length ?? a.groups;
  return [...a.widths.slice(1), a.hidden].map((c) => (c / a.groups) * d);
}

/** A u inside a level's interval: the torch peer floors u*(D+1) without dynn's epsilon, so avoid the boundary. */
function peerU(level: number, D: number): number {
  return level >= D ? 1 : (level + 0.5) / (D + 1);
}

function minTables(a: LatencyTable, b: LatencyTable): LatencyTable {
  return { ...a, levels: a.levels.map((l, i) => ({ ...l, latencyMs: Object.fromEntries(Object.entries(l.latencyMs).map(([k, v]) => [k, Math.min(v, b.levels[i].latencyMs[k])])) })) };
}

async function main() {
  await initEngine('cpu');
  const runDir = opt('run');
  const model = runDir ? (await loadRun(runDir)).model : createModel('vgg-w');
  if (model.config.model !== 'vgg-w') throw new Error(`the PyTorch peer runs vgg-w only, got ${model.config.model}`);
  if (!runDir) randomizeStatistics(model, 1);
  const D = model.numLevels - 1;
  const file = path.resolve('.bench', 'vgg-w.onnx');
  const meta = await saveOnnx(model, file);
  const threads = Number(opt('threads') ?? defaultThreads());
  log(`vgg-w (${runDir ?? 'random weights'}), ${meta.levels.length} levels, ORT ${threads} threads, ${REPS} reps after ${WARMUP} warm-up; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);

  const ortModel = await OnnxModel.load(file, { threads });
  const first = await profileModel(ortModel, { batches: BATCHES, reps: REPS, warmup: WARMUP, threads });
  log('ORT pass 1 done; running the PyTorch peer');
  const us = meta.levels.map((l) => peerU(l.level, D));
  // PyTorch at its best: its fastest thread count and wait policy unless --threads fixes both sides' threads.
  const peer = await runTorchPeer({ mode: 'latency', us, batches: BATCHES, reps: REPS, warmup: WARMUP, ...(opt('threads') ? { threads } : {}) });
  if (!peer.ok) log(`PyTorch peer skipped: ${peer.reason}`);
  const second = await profileModel(ortModel, { batches: BATCHES, reps: REPS, warmup: WARMUP, threads });
  await ortModel.dispose();
  const ort = minTables(first, second);

  const top = ort.levels[ort.levels.length - 1].latencyMs['64'];
  const rows = ort.levels.map((l, i) => {
    const torch = peer.ok ? (peer.result.latencyMs[String(us[i])] as Record<string, number>) : undefined;
    const latencyRatio = l.latencyMs['64'] / top;
    const w = widths(model, l.u);
    return {
      level: l.level,
      u: l.u,
      channels: w,
      aligned8: w.every((c) => c % 8 === 0),
      aligned16: w.every((c) => c % 16 === 0),
      flopsRatio: l.flopsRatio,
      ortMs: l.latencyMs,
      torchMs: torch ?? null,
      ortOverTorch: torch ? { '1': l.latencyMs['1'] / torch['1'], '64': l.latencyMs['64'] / torch['64'] } : null,
      latencyRatio64: latencyRatio,
      latencyOverFlops: latencyRatio / l.flopsRatio,
    };
  });
  const results = {
    model: 'vgg-w',
    weights: runDir ?? 'random',
    threads,
    reps: REPS,
    cores: os.availableParallelism(),
    loadAverage: os.loadavg(),
    torch: peer.ok ? { version: peer.result.torch, threads: peer.result.threads, config: peer.result.config, configs: peer.result.configs } : { skipped: peer.reason },
    levels: rows,
    targets: {
      ortAtMostHalfTorch: rows.every((r) => r.ortOverTorch && r.ortOverTorch['1'] <= 0.5 && r.ortOverTorch['64'] <= 0.5),
      latencyWithin1_2xFlops: rows.filter((r) => r.u >= 0.25).every((r) => r.latencyOverFlops <= 1.2),
    },
  };
  await writeFileAtomic('.bench/onnx.json', JSON.stringify(results, null, 2) + '\n');
  if (json) {
    process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }
  const out: string[] = [];
  out.push('level  u      channels(c2,c3,c4,fc1)  ORT@1  torch@1  x     ORT@64  torch@64  x     FLOPs ratio  lat ratio@64  lat/FLOPs');
  for (const r of rows) {
    out.push(
      [
        String(r.level).padEnd(6),
        r.u.toFixed(3).padEnd(6),
        (r.channels.join(',') + (r.aligned16 ? '' : r.aligned8 ? ' +' : ' *')).padEnd(23),
        f(r.ortMs['1']).padStart(5),
        f(r.torchMs?.['1']).padStart(8),
        f(r.ortOverTorch?.['1']).padStart(5),
        f(r.ortMs['64']).padStart(7),
        f(r.torchMs?.['64']).padStart(9),
        f(r.ortOverTorch?.['64']).padStart(5),
        f(r.flopsRatio, 3).padStart(12),
        f(r.latencyRatio64, 3).padStart(13),
        (r.u >= 0.25 ? f(r.latencyOverFlops) : '(u<0.25)').padStart(10),
      ].join(' '),
    );
  }
  out.push('* a channel count not a multiple of 8, + a multiple of 8 but not 16: ORT computes convolutions in NCHWc blocks of 8 (AVX2) or');
  out.push('  16 (AVX-512) channels, padding the rest and reordering around ops that cannot stay blocked, so such levels save less time than FLOPs.');
  out.push(`targets: ORT <= 0.5x PyTorch at every level: ${results.targets.ortAtMostHalfTorch}; latency ratio <= 1.2x FLOPs ratio (u >= 0.25): ${results.targets.latencyWithin1_2xFlops}`);
  process.stdout.write(out.join('\n') + '\n');
}

await main();
