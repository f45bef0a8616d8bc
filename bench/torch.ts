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

/** Runs bench/torch_peer.py with Debian's Python; ok: false (with a reason) when PyTorch is not available. */
export async function runTorchPeer(
  options: Record<string, unknown>,
  { timeoutMs }: TorchPeerRunOptions = {},
): Promise<TorchPeerOutcome> {
  const python = process.env.DYNN_PYTHON || '/usr/bin/python3';
  const timeout = timeoutMs ?? DEFAULT_TIMEOUT_MS[String(options.mode)] ?? 10 * 60 * 1000;
  return new Promise((resolve) => {
    execFile(
      python,
      [PEER_SCRIPT, JSON.stringify(options)],
      { timeout, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
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
