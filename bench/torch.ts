import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** bench/torch_peer.py, found from dist/bench/torch.js: the script is not copied into dist. */
const PEER_SCRIPT = fileURLToPath(new URL('../../bench/torch_peer.py', import.meta.url));

/** Exit code torch_peer.py uses when torch or numpy cannot be imported. */
const EXIT_MISSING_MODULE = 3;

/** Per-mode time limits; a real training run takes minutes, a timing run seconds. */
const DEFAULT_TIMEOUT_MS: Record<string, number> = {
  'train-full': 2 * 60 * 60 * 1000,
  'train-step': 10 * 60 * 1000,
  'acs-train-step': 10 * 60 * 1000,
  'resnet-train-step': 10 * 60 * 1000,
  latency: 10 * 60 * 1000,
};

export type TorchPeerOutcome = { ok: true; result: any } | { ok: false; reason: string };

export interface TorchPeerRunOptions {
  /** Kills the peer after this long; the default depends on the mode. */
  timeoutMs?: number;
}

/** The last lines of the peer's stderr, enough to explain a failure without flooding the report. */
function stderrTail(stderr: string, lines = 8): string {
  return stderr.trim().split('\n').slice(-lines).join('\n');
}

/**
 * glibc settings under which PyTorch's CPU allocations stop going back to the OS after every op (freed tensors
 * were mmap'd and unmapped each step): its steps took 51-65 ms with them against 74-202 ms without in one
 * session here. They only change where freed memory goes.
 */
export const PEER_MALLOC_ENV = { MALLOC_MMAP_THRESHOLD_: '33554432', MALLOC_TRIM_THRESHOLD_: '4294967296', MALLOC_TOP_PAD_: '268435456' };

/** One way to run the peer: its thread count and OpenMP's wait policy (PASSIVE sleeps, ACTIVE spins while waiting). */
export interface PeerConfig {
  threads: number;
  waitPolicy: 'PASSIVE' | 'ACTIVE';
}

/**
 * The configurations a timing is taken under when the caller fixes no thread count; the fastest is reported
 * (PyTorch at its best on this machine: spinning wins on an idle machine, sleeping under any other load, and
 * one thread sometimes beats two on small ops).
 */
export const PEER_CONFIGS: PeerConfig[] = [
  { threads: 1, waitPolicy: 'PASSIVE' },
  { threads: 2, waitPolicy: 'PASSIVE' },
  { threads: 2, waitPolicy: 'ACTIVE' },
];

/** Modes that time something, and the figure a configuration is ranked by (lower is faster). */
const TIMED: Record<string, (result: any) => number> = {
  'train-step': (r) => r.meanMs,
  'acs-train-step': (r) => r.meanMs,
  'resnet-train-step': (r) => r.meanMs,
  latency: (r) => Object.values(r.latencyMs as Record<string, Record<string, number>>).reduce((a, byBatch) => a + Object.values(byBatch).reduce((b, ms) => b + ms, 0), 0),
};

type Latencies = Record<string, Record<string, number>>;

/**
 * Latencies at PyTorch's best per batch size: for each batch, the configuration whose times over every u sum
 * lowest (a sum over all batches would let batch 64 pick batch 1's configuration too).
 */
function bestPerBatch(runs: { config: PeerConfig; latencyMs: Latencies }[]): { latencyMs: Latencies; configByBatch: Record<string, PeerConfig> } {
  const latencyMs: Latencies = {};
  const configByBatch: Record<string, PeerConfig> = {};
  const batches = Object.keys(Object.values(runs[0].latencyMs)[0] ?? {});
  for (const b of batches) {
    const total = (l: Latencies) => Object.values(l).reduce((a, byBatch) => a + byBatch[b], 0);
    const best = runs.reduce((x, y) => (total(y.latencyMs) < total(x.latencyMs) ? y : x));
    configByBatch[b] = best.config;
    for (const [u, byBatch] of Object.entries(best.latencyMs)) (latencyMs[u] ??= {})[b] = byBatch[b];
  }
  return { latencyMs, configByBatch };
}

/**
 * Runs bench/torch_peer.py with Debian's Python under the allocator settings above; ok: false (with a
 * reason) when PyTorch is not available. A timing mode with no `threads` option runs once per `PEER_CONFIGS`
 * entry and returns the fastest run's result, with `config` (the winner) and `configs` (each one's figure);
 * latencies come from the best configuration per batch size (`configByBatch`).
 */
export async function runTorchPeer(options: Record<string, unknown>, run: TorchPeerRunOptions = {}): Promise<TorchPeerOutcome> {
  const rank = TIMED[String(options.mode)];
  if (!rank || options.threads !== undefined) {
    return runPeerOnce(options, { threads: Number(options.threads ?? 2), waitPolicy: 'PASSIVE' }, run);
  }
  let best: { ok: true; result: any } | undefined;
  const configs: (PeerConfig & { ms: number })[] = [];
  const latencies: { config: PeerConfig; latencyMs: Latencies }[] = [];
  for (const config of PEER_CONFIGS) {
    const out = await runPeerOnce({ ...options, threads: config.threads }, config, run);
    if (!out.ok) return out;
    const ms = rank(out.result);
    configs.push({ ...config, ms });
    if (out.result.latencyMs) latencies.push({ config, latencyMs: out.result.latencyMs });
    if (!best || ms < rank(best.result)) best = { ok: true, result: { ...out.result, config } };
  }
  best!.result.configs = configs;
  if (latencies.length) Object.assign(best!.result, bestPerBatch(latencies));
  return best!;
}

async function runPeerOnce(options: Record<string, unknown>, config: PeerConfig, { timeoutMs }: TorchPeerRunOptions): Promise<TorchPeerOutcome> {
  const python = process.env.DYNN_PYTHON || '/usr/bin/python3';
  const timeout = timeoutMs ?? DEFAULT_TIMEOUT_MS[String(options.mode)] ?? 10 * 60 * 1000;
  const env = { ...process.env, ...PEER_MALLOC_ENV, OMP_WAIT_POLICY: config.waitPolicy };
  return new Promise((resolve) => {
    execFile(
      python,
      [PEER_SCRIPT, JSON.stringify(options)],
      { timeout, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8', env },
      (error, stdout, stderr) => {
        if (error) {
          if (error.code === 'ENOENT') {
            resolve({ ok: false, reason: `${python} not found (set DYNN_PYTHON to a Python with PyTorch)` });
            return;
          }
          const missing = /No module named '([^']+)'/.exec(stderr);
          if (error.code === EXIT_MISSING_MODULE || missing) {
            const module = missing?.[1] ?? 'torch';
            resolve({ ok: false, reason: `PyTorch peer unavailable: ${python} cannot import ${module}` });
            return;
          }
          if (error.killed) {
            resolve({ ok: false, reason: `PyTorch peer timed out after ${timeout} ms` });
            return;
          }
          resolve({ ok: false, reason: `PyTorch peer failed (exit ${error.code ?? error.signal}): ${stderrTail(stderr)}` });
          return;
        }
        try {
          resolve({ ok: true, result: JSON.parse(stdout) });
        } catch {
          resolve({ ok: false, reason: `PyTorch peer printed no JSON: ${stdout.slice(0, 200)}` });
        }
      },
    );
  });
}
