import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { Rng } from '../util/rng.js';
import { exitRules, neverLeaves } from '../scaling/rules.js';
import { readModelFile, type OnnxModel } from './node.js';

/** Value of a latency table's `format` field. */
export const LATENCY_FORMAT = 'dynn-latency/1';

const rowSchema = z.object({
  /** The level's representative utilization. */
  u: z.number().gt(0).lte(1),
  /** The network level. */
  level: z.number().int().nonnegative(),
  /** FLOPs(level) / FLOPs(u = 1). */
  flopsRatio: z.number().nonnegative(),
  /** Median latency of one `run` in ms, by batch size (keys are batch sizes as strings). */
  latencyMs: z.record(z.string(), z.number().nonnegative()),
});

const tableSchema = z.object({
  format: z.literal(LATENCY_FORMAT),
  /** SHA-256 of the model file measured: a re-exported model makes the table stale. */
  modelSha256: z.string().regex(/^[0-9a-f]{64}$/),
  measuredAt: z.string(),
  host: z.object({ cpus: z.number().int().positive(), cpuModel: z.string(), threads: z.number().int().positive() }),
  reps: z.number().int().positive(),
  batches: z.array(z.number().int().positive()).min(1),
  levels: z.array(rowSchema).min(1),
});

/** One level's measured latency. */
export type LatencyRow = z.infer<typeof rowSchema>;
/** A model's latency per level and batch size on one machine: what controllers and the server read. */
export type LatencyTable = z.infer<typeof tableSchema>;

/** Options of `profileModel`. */
export interface ProfileOptions {
  /** Batch sizes (default [1, 64]). */
  batches?: number[];
  /** Timed runs per level and batch (default 20); the median is kept. */
  reps?: number;
  /** Untimed runs first (default 3). */
  warmup?: number;
  /** Intra-op threads the model was loaded with (recorded in the table). */
  threads: number;
  /** Called after each level and batch, for progress output. */
  onStep?: (done: number, total: number) => void;
}

/**
 * Bounds on `profileModel`'s options, checked before any input is allocated: a batch of 1e8 samples asked
 * for 300 GB of input (a RangeError), and huge rep counts would run for days.
 */
export const PROFILE_LIMITS = {
  maxBatch: 4096,
  /** Most input values in one batch: 2^26 float32s, 256 MiB. */
  maxBatchValues: 2 ** 26,
  maxReps: 100_000,
  maxWarmup: 10_000,
} as const;

/**
 * Checks batch sizes, reps and warmup against `PROFILE_LIMITS` (with `sampleShape`, also each batch's input
 * size), with a DynnError that names the bad value.
 */
export function checkProfileOptions(o: { batches?: number[]; reps?: number; warmup?: number }, sampleShape?: readonly number[]): void {
  const { batches = [], reps = 1, warmup = 0 } = o;
  const L = PROFILE_LIMITS;
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) throw new DynnError(`batch sizes must be positive integers, got [${batches}]`);
  const big = batches.find((b) => b > L.maxBatch);
  if (big !== undefined) throw new DynnError(`batch size ${big} is too large to profile; at most ${L.maxBatch}`);
  if (!Number.isInteger(reps) || reps < 1 || reps > L.maxReps) throw new DynnError(`reps must be an integer from 1 to ${L.maxReps}, got ${reps}`);
  if (!Number.isInteger(warmup) || warmup < 0 || warmup > L.maxWarmup) throw new DynnError(`warmup must be an integer from 0 to ${L.maxWarmup}, got ${warmup}`);
  if (!sampleShape) return;
  const per = sampleShape.reduce((a, b) => a * b, 1);
  for (const b of batches) {
    if (b * per > L.maxBatchValues) {
      throw new DynnError(`a batch of ${b} samples of [${sampleShape}] holds ${b * per} input values; at most ${L.maxBatchValues} (256 MiB): profile smaller batches`);
    }
  }
}

/** Where a model's latency table lives: beside the model, `<model>.profile.json`. */
export function latencyTablePath(modelPath: string): string {
  return `${modelPath}.profile.json`;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Measures the median time of ONNX Runtime's `run` at every exported level and batch size on this machine,
 * with random inputs. Load the model without a worker so worker messaging is not counted. An early-exit model
 * whose graph holds its rule is timed as `dynn serve` runs it, through the rule with no sample leaving: the
 * most a served batch takes (how many leave depends on the inputs; with `--no-exits`, about 1.2x too much).
 */
export async function profileModel(model: OnnxModel, options: ProfileOptions): Promise<LatencyTable> {
  const batches = options.batches ?? [1, 64];
  const reps = options.reps ?? 20;
  const warmup = options.warmup ?? 3;
  if (batches.length === 0) throw new DynnError('profile needs at least one batch size');
  checkProfileOptions({ batches, reps, warmup }, model.metadata.input.shape);
  const per = model.metadata.input.shape.reduce((a, b) => a * b, 1);
  const rng = new Rng(0);
  const inputs = new Map(batches.map((b) => [b, Float32Array.from({ length: b * per }, () => rng.next())]));
  const total = model.levels.length * batches.length;
  let done = 0;
  const levels: LatencyRow[] = [];
  const rule = model.metadata.exits?.inGraph?.rule;
  const noneLeave = rule && exitRules.has(rule) ? neverLeaves(exitRules.get(rule)) : null;
  for (const lv of model.levels) {
    const latencyMs: Record<string, number> = {};
    for (const b of batches) {
      const x = inputs.get(b) as Float32Array;
      const times: number[] = [];
      for (let i = 0; i < warmup + reps; i++) {
        const p = noneLeave === null ? await model.run(x, lv.u) : await model.runExits(x, lv.u, { thresholds: noneLeave });
        if (i >= warmup) times.push(p.ms);
      }
      latencyMs[String(b)] = median(times);
      options.onStep?.(++done, total);
    }
    levels.push({ u: lv.u, level: lv.level, flopsRatio: lv.flopsRatio, latencyMs });
  }
  return {
    format: LATENCY_FORMAT,
    modelSha256: sha256(await readModelFile(model.path)),
    measuredAt: new Date().toISOString(),
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', threads: options.threads },
    reps,
    batches,
    levels,
  };
}

/** Stores a latency table beside its model, atomically. */
export async function saveLatencyTable(modelPath: string, table: LatencyTable): Promise<string> {
  const file = latencyTablePath(modelPath);
  await writeFileAtomic(file, JSON.stringify(table, null, 2) + '\n');
  return file;
}

/**
 * Reads the latency table `dynn profile` stored beside a model. Rejects with a DynnError when there is none,
 * when it is malformed, or when the model file changed since it was measured (a stale table).
 */
export async function readLatencyTable(modelPath: string): Promise<LatencyTable> {
  const file = latencyTablePath(modelPath);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    throw new DynnError(`${modelPath} has no latency table (${file}); run \`dynn profile ${modelPath}\``);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new DynnError(`${file} is not valid JSON; run \`dynn profile ${modelPath}\` again`);
  }
  const parsed = tableSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DynnError(`${file}: invalid latency table at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  if (parsed.data.modelSha256 !== sha256(await readModelFile(modelPath))) {
    throw new DynnError(`${file} was measured on another version of ${modelPath}; run \`dynn profile ${modelPath}\` again`);
  }
  return parsed.data;
}
