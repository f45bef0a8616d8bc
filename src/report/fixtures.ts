/**
 * Test support: a tiny trained run, a tiny dynamic run with its threshold sweep, and the files other commands leave beside a run (controller evaluations,
 * gates and controller checkpoints, an exit sweep, an ONNX latency table), written with made-up numbers so every
 * report section has something to draw. Not used by the library itself.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { saveCheckpoint } from '../checkpoint/checkpoint.js';
import { initEngine } from '../engine/backend.js';
import { train } from '../train/trainer.js';
import { writeFileAtomic } from '../util/fs.js';
import type { TrainOptions } from '../train/trainer.js';
import { RUN_FILES } from './sources.js';

/** A fresh temporary folder. */
export function tempDir(prefix = 'dynn-report-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Trains a tiny mlp-w on 256 synthetic samples for one epoch into `out` (about a second). */
export async function trainTinyRun(out: string, extra: Partial<TrainOptions> = {}): Promise<void> {
  await initEngine('wasm');
  const r = await train({ model: 'mlp-w', dataset: 'synthetic', trainLimit: 256, testLimit: 200, epochs: 1, workers: 0, out, evalUs: [0.5, 1], ...extra });
  r.model.dispose();
}

/**
 * Trains a tiny dynamic resnet38 (acs-gn gates) on 32 synthetic samples for one step into `out`, and saves
 * its threshold sweep (the trained 0.5, then 0 and 1) beside it with `dynn sweep RUN --json`, as a user would.
 */
export async function trainTinyDynamicRun(out: string): Promise<void> {
  await initEngine('wasm');
  const r = await train({ model: 'resnet38', modelArgs: { dynamic: 'acs-gn' }, dataset: 'synthetic', trainLimit: 32, testLimit: 32, epochs: 1, batchSize: 32, workers: 0, evalUs: [1], flopsTarget: 0.5, out });
  r.model.dispose();
  const { runCli } = await import('../cli/cli.js');
  const { captureIo } = await import('../cli/capture.js');
  const io = captureIo();
  if ((await runCli(['sweep', out, '--test-limit', '32', '--thresholds', '0,1', '--no-latency', '--json'], io)) !== 0) throw new Error(io.stderr());
  await writeFileAtomic(path.join(out, RUN_FILES.sweep), io.stdout());
}

const fixed = [0.25, 0.5, 0.75, 1].map((u, i) => ({ u, accuracy: 0.6 + 0.1 * i, flopsRatio: u * u }));

/** Writes made-up companion data for `runDir`: every optional report source. */
export async function writeCompanions(runDir: string, model = 'mlp-w'): Promise<void> {
  const report = {
    accuracy: 0.83,
    meanU: 0.55,
    meanFlopsRatio: 0.4,
    uHistogram: { '0.25': 40, '0.5': 30, '1': 30 },
    fixed,
    oracle: { accuracy: 0.95, meanU: 0.35, meanFlopsRatio: 0.2 },
  };
  await writeFileAtomic(path.join(runDir, `${RUN_FILES.evalPrefix}cascade.json`), JSON.stringify(report));
  await writeFileAtomic(
    path.join(runDir, RUN_FILES.exitSweep),
    JSON.stringify({
      model,
      dataset: 'synthetic',
      rule: 'entropy',
      u: 1,
      exitAccuracy: [0.5, 0.7],
      baseline: { accuracy: 0.7, flops: 5e5, latencyMs: { batch256: 3 } },
      points: [0.1, 0.4].map((t, i) => ({ threshold: t, accuracy: 0.6 + 0.05 * i, flops: 3e5 + 1e5 * i, flopsRatio: 0.6 + 0.2 * i, exitShares: [0.6 - 0.3 * i, 0.4 + 0.3 * i], latencyMs: { batch256: 2 } })),
    }),
  );
  await writeFileAtomic(
    path.join(runDir, RUN_FILES.onnxProfile),
    JSON.stringify({
      format: 'dynn-latency/1',
      modelSha256: '0'.repeat(64),
      measuredAt: new Date(0).toISOString(),
      host: { cpus: 2, cpuModel: 'test', threads: 2 },
      reps: 5,
      batches: [1, 64],
      levels: [0.25, 0.5, 1].map((u, i) => ({ u, level: i, flopsRatio: u * u, latencyMs: { '1': 0.1 + 0.1 * i, '64': 2 + 3 * i } })),
    }),
  );
  await writeFileAtomic(
    path.join(runDir, `${RUN_FILES.gatesEvalPrefix}-reinforce.json`),
    JSON.stringify({
      run: runDir,
      gates: 'gates',
      dataset: 'synthetic',
      split: 'test',
      points: [0.5, 1].map((u) => ({ u, complexity: u, flopsRatio: u * u * 0.9, accuracy: 0.5 + 0.3 * u, nested: { accuracy: 0.45 + 0.3 * u, flopsRatio: u * u }, blocks: { fc1: u } })),
    }),
  );
  const ref = { path: runDir, model, fingerprint: '0123456789abcdef' };
  const pattern = [0.5, 1].map((u) => ({ u, complexity: u * 0.9, blocks: { fc1: u, fc2: u * 0.8 } }));
  await saveCheckpoint(path.join(path.dirname(runDir), `${path.basename(runDir)}-gates`), {
    config: { model: 'dynn-gates', args: {} },
    weights: [],
    meta: { options: { method: 'reinforce' }, pattern, run: ref },
  });
  await saveCheckpoint(path.join(runDir, 'ctrl'), {
    config: { model: 'dynn-controller', args: {} },
    weights: [],
    meta: { validation: { ...report, accuracy: 0.8, oracle: { ...report.oracle, uHistogram: { '0.25': 70, '1': 30 } } }, run: ref },
  });
}
