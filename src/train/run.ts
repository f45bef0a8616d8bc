import { loadCheckpoint, readCheckpointInfo, saveCheckpoint } from '../checkpoint/checkpoint.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { DynnError } from '../util/errors.js';
import { tail } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Optimizer } from './optimizer.js';

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

/** Writes a run's checkpoint (weights, optimizer state, metadata) atomically. */
export async function saveRun(dir: string, model: Network, meta: TrainMeta, optimizer?: Optimizer): Promise<void> {
  await saveCheckpoint(dir, {
    config: model.config,
    weights: model.getWeights(),
    optimizer: optimizer ? { kind: optimizer.kind, state: { learningRate: optimizer.learningRate }, arrays: await optimizer.getState() } : undefined,
    meta: meta as unknown as Record<string, unknown>,
  });
}

/** A trained network loaded from a run directory, with its metadata. */
export interface LoadedRun {
  model: Network;
  meta: TrainMeta;
}

/**
 * Loads a run's network. The architecture comes from the checkpoint; names, shapes and sizes are validated
 * against it, so a corrupt, truncated or mismatched checkpoint fails with a clear message.
 */
export async function loadRun(dir: string): Promise<LoadedRun> {
  const info = await readCheckpointInfo(dir);
  let model: Network;
  try {
    model = createModel(info.config.model, info.config.args);
  } catch (err) {
    if (err instanceof DynnError) throw new DynnError(`${dir}: cannot rebuild its network: ${err.message}`);
    throw err;
  }
  try {
    const ckpt = await loadCheckpoint(dir, {
      model: info.config.model,
      weights: model.weights().map((w) => ({ name: w.name, shape: w.variable.shape })),
    });
    model.setWeights(ckpt.weights);
    return { model, meta: ckpt.meta as unknown as TrainMeta };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/** The validation split a run held out of its data set's training split (the last `validationSamples`). */
export function validationSplit(meta: TrainMeta, train: ImageSet): ImageSet {
  const n = meta.validationSamples ?? 0;
  if (n === 0) throw new DynnError('this run held out no validation split; train it with --val-samples N');
  if (train.count < n) throw new DynnError(`the training split has ${train.count} samples, fewer than the run's ${n} validation samples`);
  return tail(train, n);
}
