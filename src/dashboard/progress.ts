import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { StepProgress } from '../train/trainer.js';
import type { EpochRecord } from '../train/run.js';
import { writeFileAtomic } from '../util/fs.js';
import { DynnError } from '../util/errors.js';
import { RUN_FILES } from '../report/sources.js';

/** Value of a progress file's `format` field. */
export const PROGRESS_FORMAT = 'dynn-progress/1';

const stepSchema = z.object({
  /** Seconds since training started (this process). */
  t: z.number(),
  /** Epoch, from 1. */
  epoch: z.number().int(),
  /** Step within the epoch, from 1. */
  step: z.number().int(),
  /** Mean loss over the epoch so far (as the trainer reports it). */
  loss: z.number(),
  /** Training accuracy over the epoch so far. */
  accuracy: z.number(),
  /** Throughput over the epoch so far. */
  samplesPerSec: z.number(),
  /** The u this step trained at. */
  u: z.number(),
});

const progressSchema = z.object({
  format: z.literal(PROGRESS_FORMAT),
  /** 'training' while steps arrive, 'done' after the last epoch (or when the recorder is closed), 'stopped' when interrupted. */
  state: z.enum(['training', 'done', 'stopped']),
  startedAt: z.string(),
  updatedAt: z.string(),
  epochs: z.number().int().nonnegative(),
  stepsPerEpoch: z.number().int().nonnegative(),
  /** The latest step. */
  last: stepSchema.nullable(),
  /** Recent steps, thinned evenly to at most `MAX_STEPS`. */
  steps: z.array(stepSchema),
});

/** One recorded training step. */
export type ProgressStep = z.infer<typeof stepSchema>;
/** A run's live progress file (`RUN/progress.json`): finer-grained than the per-epoch checkpoint history. */
export type Progress = z.infer<typeof progressSchema>;

/** Steps kept in the file; older ones are thinned to every other one when it fills. */
export const MAX_STEPS = 2000;

/** Options of `progressRecorder`. */
export interface RecorderOptions {
  /** Least time between two writes (default 1000 ms); the last state is always written by `close`. */
  intervalMs?: number;
}

/** Hooks for `train({onStep, onEpoch})` that keep `RUN/progress.json` current; `close` writes the final state. */
export interface ProgressRecorder {
  onStep: (p: StepProgress) => void;
  onEpoch: (r: EpochRecord) => void;
  /** Writes the final state ('done') and waits for pending writes. */
  close: () => Promise<void>;
  /** Training was interrupted: writes 'stopped' and waits, if this recorder has written the file (never before its first step). */
  stop: () => Promise<void>;
}

/**
 * Records training progress into `dir/progress.json` for the dashboard's live page: atomic writes, at most one
 * per interval and never two at once, so a reader never sees a torn file and training is not slowed.
 */
export function progressRecorder(dir: string, options: RecorderOptions = {}): ProgressRecorder {
  const interval = options.intervalMs ?? 1000;
  const file = path.join(dir, RUN_FILES.progress);
  const start = performance.now();
  const state: Progress = { format: PROGRESS_FORMAT, state: 'training', startedAt: new Date().toISOString(), updatedAt: '', epochs: 0, stepsPerEpoch: 0, last: null, steps: [] };
  let lastWrite = -Infinity;
  let writing: Promise<void> = Promise.resolve();
  let failure: unknown = null;
  const flush = () => {
    lastWrite = performance.now();
    state.updatedAt = new Date().toISOString();
    const text = JSON.stringify(state) + '\n';
    writing = writing.then(() => writeFileAtomic(file, text)).catch((err) => {
      failure = err;
    });
  };
  return {
    onStep(p) {
      const step: ProgressStep = { t: (performance.now() - start) / 1000, epoch: p.epoch + 1, step: p.step + 1, loss: p.loss, accuracy: p.accuracy, samplesPerSec: p.samplesPerSec, u: p.u };
      state.epochs = p.epochs;
      state.stepsPerEpoch = p.steps;
      state.last = step;
      state.steps.push(step);
      if (state.steps.length > MAX_STEPS) state.steps = state.steps.filter((_, i) => i % 2 === 1);
      if (performance.now() - lastWrite >= interval) flush();
    },
    onEpoch(r) {
      if (r.epoch >= state.epochs && state.epochs > 0) state.state = 'done';
      flush();
    },
    async close() {
      state.state = 'done';
      flush();
      await writing;
      if (failure) throw new DynnError(`cannot write ${file}: ${(failure as Error).message}`);
    },
    async stop() {
      if (lastWrite === -Infinity) return;
      state.state = 'stopped';
      flush();
      await writing;
    },
  };
}

/** Reads a run's progress file: null when there is none, a DynnError naming the file when it is malformed. */
export async function readProgress(dir: string): Promise<Progress | null> {
  const file = path.join(dir, RUN_FILES.progress);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DynnError(`${file}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = progressSchema.safeParse(raw);
  if (!parsed.success) throw new DynnError(`${file}: not a dynn progress file: ${parsed.error.issues[0].path.join('.')}: ${parsed.error.issues[0].message}`);
  return parsed.data;
}
