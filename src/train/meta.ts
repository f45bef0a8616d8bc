import { z } from 'zod';
import { summarizeIssues } from '../checkpoint/checkpoint.js';
import { DynnError } from '../util/errors.js';
import { GATING_MODES } from '../gating/gating.js';
import { OPTIMIZERS } from './optimizer.js';
import { LR_SCHEDULES, U_SCHEDULES } from './schedule.js';

// A run's metadata and its schema, free of TF.js so the dashboard can validate runs without loading it.

/** One epoch of a training run's history. */
export interface EpochRecord {
  epoch: number;
  loss: number;
  trainAccuracy: number;
  samplesPerSec: number;
  msPerStep: number;
  seconds: number;
  lr: number;
  /** Test accuracy by utilization (after BatchNorm calibration). */
  testAccuracy: Record<string, number>;
  /** Early-exit models: test accuracy of each exit on its own at u = 1. */
  exitAccuracy?: number[];
  /** Dynamic models: test accuracy and mean executed FLOPs ratio with the gates deciding at `threshold`. */
  gated?: {
    threshold: number;
    accuracy: number;
    flopsRatio: number;
    /** The mean share of each gate's groups executed at `threshold` (for `skip`, of blocks executed). */
    executionRate?: number;
    /** The same share under training's sampled decisions, over the epoch's steps. */
    trainExecutionRate?: number;
    /** Mixtures of experts: the largest coefficient of variation of a block's expert load at evaluation. */
    expertCv?: number;
    /** Mixtures of experts: the share of assignments that found their expert full, at evaluation and in training. */
    overflowRate?: number;
    trainOverflowRate?: number;
  };
}

/** What a run's checkpoint records besides the weights. */
export interface TrainMeta {
  dynnVersion: string;
  dataset: string;
  /** Samples trained on. */
  trainSamples: number;
  /** The last N samples of the data set's training split, held out for validation (see `validationSplit`). */
  validationSamples?: number;
  testSamples: number;
  options: Record<string, unknown>;
  seed: number;
  /** Epochs completed. */
  epoch: number;
  history: EpochRecord[];
}

const count = z.number().int().nonnegative();
const positive = z.number().int().positive();
const fraction = z.number().min(0).max(1);
/** Throughput and timing; a zero-length timing once recorded Infinity, which JSON stores as null. */
const rate = z.number().nonnegative().nullable();

const epochRecordSchema = z.looseObject({
  epoch: positive,
  loss: z.number(),
  trainAccuracy: fraction,
  samplesPerSec: rate,
  msPerStep: rate,
  seconds: rate,
  lr: z.number().nonnegative(),
  testAccuracy: z.record(z.string(), fraction),
  exitAccuracy: z.array(fraction).optional(),
  gated: z.object({ threshold: fraction, accuracy: fraction, flopsRatio: z.number().nonnegative(), executionRate: fraction.optional(), trainExecutionRate: fraction.optional(), expertCv: z.number().nonnegative().optional(), overflowRate: fraction.optional(), trainOverflowRate: fraction.optional() }).optional(),
});

/** The recorded training options; every field optional, as runs of older versions may lack some. */
const trainOptionsSchema = z.looseObject({
  model: z.string().min(1),
  dataset: z.string().min(1),
  dataDir: z.string(),
  trainLimit: positive,
  testLimit: positive,
  validationSamples: count,
  fullWidth: fraction,
  epochs: positive,
  batchSize: positive,
  optimizer: z.enum(OPTIMIZERS as [string, ...string[]]),
  lr: z.number().positive(),
  lrSchedule: z.enum(LR_SCHEDULES as [string, ...string[]]),
  schedule: z.enum(U_SCHEDULES as [string, ...string[]]),
  sandwichWidths: count,
  inplaceDistill: z.boolean(),
  inplaceAlpha: fraction,
  teacher: z.string(),
  distillAlpha: fraction,
  distillT: z.number().positive(),
  exitWeights: z.array(z.number().nonnegative()),
  gating: z.enum(GATING_MODES as [string, ...string[]]),
  seed: z.number().int(),
  workers: z.number().int(),
  engine: z.string(),
  evalUs: z.array(z.number().gt(0).max(1)),
  calibrationSamples: count,
  flopsTarget: z.number().gt(0).max(1),
  skipTarget: z.number().gt(0).max(1),
  spatialTarget: z.number().gt(0).lt(1),
  efficiencyWeight: z.number().nonnegative(),
  pretrainEpochs: count,
  gateThreshold: fraction,
}).partial();

const trainMetaSchema = z.looseObject({
  dynnVersion: z.string(),
  dataset: z.string().min(1),
  trainSamples: count,
  validationSamples: count.optional(),
  testSamples: count,
  options: trainOptionsSchema,
  seed: z.number().int(),
  epoch: count,
  history: z.array(epochRecordSchema),
});

/** Validates a run's metadata as read from `file`; errors name the field (`meta.history[2].loss: ...`). */
export function parseTrainMeta(meta: unknown, file: string): TrainMeta {
  const parsed = trainMetaSchema.safeParse(meta);
  if (!parsed.success) throw new DynnError(`${file} is not a valid training run: ${summarizeIssues(parsed.error.issues, ['meta'])}`);
  return parsed.data as TrainMeta;
}
