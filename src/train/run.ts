import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import {
  checkDataFiles,
  isCheckpointDir,
  loadCheckpoint,
  MANIFEST_FILE,
  readCheckpointInfo,
  saveCheckpoint,
  summarizeIssues,
  trainedModelArgs,
  CONTROLLER_KIND,
  GATES_KIND,
  checkpointHolds,
  type CheckpointInfo,
} from '../checkpoint/checkpoint.js';
import { createModel, models, type ModelArgs } from '../models/zoo.js';
import { isGateWeight } from '../route/mechanisms.js';
import type { Network } from '../models/network.js';
import { DynnError } from '../util/errors.js';
import { isDerivedRunFile } from './run-files.js';
import { MODEL_ARG_FLAGS } from './flags.js';
import { tail } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Optimizer } from './optimizer.js';
import { parseTrainMeta, type TrainMeta } from './meta.js';

export { parseTrainMeta, type EpochRecord, type TrainMeta } from './meta.js';

const count = z.number().int().nonnegative();
const positive = z.number().int().positive();

/** Model arguments every model shares; a model's own arguments are sizes, names or flags (or lists of them). */
const commonArgs = {
  inputShape: z.array(positive).length(3),
  numClasses: z.number().int().min(2),
  groups: positive,
  batchNorm: z.boolean(),
  seed: z.number().int(),
};
const anyArg = z.union([count, z.string(), z.boolean(), z.array(z.union([count, z.string()]))]);

/** The schema of one model argument, from the type of its default: a size, a ratio, a name, a flag, or a list of one of them. */
function argSchema(example: unknown): z.ZodType {
  // A fractional default (DenseNet's compression 0.5) is a ratio, not a size.
  if (typeof example === 'number') return Number.isInteger(example) ? count : z.number().nonnegative();
  if (typeof example === 'string') return z.string();
  if (typeof example === 'boolean') return z.boolean();
  if (Array.isArray(example) && example.length > 0) return z.array(argSchema(example[0]));
  return anyArg;
}

/**
 * The numbers `dynn train` takes as model-argument flags, in the bounds the CLI reads them with: a ratio, weight or
 * temperature (a capacity factor of 1.25, a temperature of 2.5) whether or not the model has a default for it.
 */
const flaggedNumbers = Object.fromEntries(
  Object.entries(MODEL_ARG_FLAGS).flatMap(([key, how]) => {
    if (typeof how !== 'object') return [];
    let s = z.number().finite();
    if (how.int) s = s.int();
    if (how.min !== undefined) s = s.min(how.min);
    if (how.max !== undefined) s = s.max(how.max);
    return [[key, s]];
  }),
);

/** Model arguments that are numbers but not sizes: the size check below leaves them alone. */
const notSizes = new Set(['seed', 'inputShape', 'annealEpochs', ...Object.entries(MODEL_ARG_FLAGS).filter(([, how]) => typeof how === 'object' && !how.int).map(([key]) => key)]);

function modelArgsSchema(model: string) {
  const defaults = models.has(model) ? models.get(model).defaults : {};
  const own = Object.fromEntries(Object.entries(defaults).filter(([k]) => !(k in commonArgs)).map(([k, v]) => [k, argSchema(v)]));
  return z.object({ ...commonArgs, ...own, ...flaggedNumbers }).partial().catchall(anyArg);
}

/**
 * Validates the model arguments of a checkpoint before the network is built from them. Sizes the checkpoint's
 * weights cannot hold are refused here, because building such a network first could allocate without bound:
 * a layer size larger than every weight dimension, or an input with more values per sample than the network
 * has weights (a dense layer over a flattened input of that size could not fit in them).
 */
export function checkModelArgs(info: CheckpointInfo, file: string): ModelArgs {
  const parsed = modelArgsSchema(info.config.model).safeParse(info.config.args);
  if (!parsed.success) throw new DynnError(`${file} is invalid: ${summarizeIssues(parsed.error.issues, ['config', 'args'])}`);
  // An empty array ([0, n]) bounds nothing: its other dimensions cost no memory.
  const held = info.weights.filter((w) => !w.shape.includes(0));
  const largest = Math.max(0, ...held.flatMap((w) => w.shape));
  const values = held.reduce((sum, w) => sum + w.shape.reduce((a, b) => a * b, 1), 0);
  const input = parsed.data.inputShape;
  if (input && input.reduce((a, b) => a * b, 1) > values) {
    throw new DynnError(`${file} is invalid: config.args.inputShape: ${input.join('x')} inputs have more values than the network's ${values} weights`);
  }
  for (const [key, value] of Object.entries(parsed.data)) {
    if (notSizes.has(key)) continue;
    const sizes = (Array.isArray(value) ? value : [value]).filter((v): v is number => typeof v === 'number');
    const i = sizes.findIndex((v) => v > largest);
    if (i >= 0) {
      const where = Array.isArray(value) ? `${key}[${value.indexOf(sizes[i]!)}]` : key;
      throw new DynnError(`${file} is invalid: config.args.${where}: ${sizes[i]} is larger than any weight dimension it holds (${largest})`);
    }
  }
  return trainedModelArgs(parsed.data as ModelArgs);
}

/**
 * Builds a registered model from arguments read from a file. A build that fails part-way has already created
 * some layers' variables; they are disposed here, and any failure becomes a DynnError naming `what`.
 */
export function buildModel(name: string, args: ModelArgs, what: string): Network {
  const before = new Set(Object.keys(tf.engine().registeredVariables));
  try {
    return createModel(name, args);
  } catch (err) {
    for (const [key, v] of Object.entries(tf.engine().registeredVariables)) if (!before.has(key)) v.dispose();
    const message = err instanceof Error ? err.message : String(err);
    throw new DynnError(`${what}: cannot rebuild its network: ${message}`, { cause: err });
  }
}

/**
 * Refuses a checkpoint whose weights and config disagree on whether the model is dynamic (gates inside that
 * decide per sample), saying so rather than listing every missing or unexpected weight: a dynamic model's
 * checkpoint cannot load as a static network (its gates and per-route statistics would be dropped), nor a
 * static one as a dynamic network (it has no gates).
 */
export function checkDynamicMatch(dir: string, checkpoint: { config: { model: string; args: Record<string, unknown> }; weights: { name: string }[] }, model: Network): void {
  const gates = checkpoint.weights.filter((w) => isGateWeight(w.name)).map((w) => w.name);
  const { model: name, args } = checkpoint.config;
  if (gates.length && !model.gated) {
    throw new DynnError(
      `${dir}: the checkpoint holds the per-sample gates of a dynamic model (${gates[0]}${gates.length > 1 ? ` and ${gates.length - 1} more` : ''}) but its config builds a static ${name} (no dynamic mechanism): a dynamic model's checkpoint cannot load as a static one`,
    );
  }
  if (!gates.length && model.gated) {
    throw new DynnError(`${dir}: its config builds ${name} with ${String(args.dynamic)} gates, but the checkpoint holds no gate weights: a static model's checkpoint cannot load as a dynamic one`);
  }
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

/** Refuses a checkpoint that is not a training run (a controller, learned gates) before its metadata is read as one. */
function checkTrainingRun(info: CheckpointInfo, dir: string): void {
  const tag = info.config.model;
  if (tag === CONTROLLER_KIND || tag === GATES_KIND) throw new DynnError(`${dir} holds ${checkpointHolds(tag)}, not a training run; give the run it was made for (its checkpoint says: ${String((info.meta.run as { path?: unknown } | undefined)?.path ?? 'unknown')})`);
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
  const file = path.join(dir, MANIFEST_FILE);
  checkTrainingRun(info, dir);
  const meta = parseTrainMeta(info.meta, file);
  await checkDataFiles(dir);
  const model = buildModel(info.config.model, checkModelArgs(info, file), dir);
  try {
    checkDynamicMatch(dir, info, model);
    const ckpt = await loadCheckpoint(dir, {
      model: info.config.model,
      weights: model.weights().map((w) => ({ name: w.name, shape: w.variable.shape })),
    });
    model.setWeights(ckpt.weights);
    return { model, meta };
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

/** A run directory's checkpoint, read for `--resume`. */
export interface ResumePoint {
  info: CheckpointInfo;
  meta: TrainMeta;
  /** The validated model arguments it was trained with. */
  args: ModelArgs;
}

/** Files training itself leaves in a run directory before its first checkpoint: no reason to refuse it. */
const LEFTOVER = /^(progress\.json|(progress\.json\.|checkpoint\.json\.|weights-|optimizer-).*\.tmp)$/;

/**
 * Checks, before any training, that `dir` can take a run and that nothing there would be lost: an existing run
 * needs `resume` (continue it) or `force` (replace it), a non-empty directory that is not a run needs `force`,
 * and `resume` needs a checkpoint. Changes nothing on disk. Returns the checkpoint to resume from, if any.
 */
export async function checkRunDir(dir: string, options: { resume?: boolean; force?: boolean } = {}): Promise<ResumePoint | null> {
  const { resume = false, force = false } = options;
  if (resume && force) throw new DynnError('--resume continues the run in --out and --force replaces it; pass one of them');
  let stat;
  try {
    stat = await fsp.stat(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new DynnError(`cannot use ${dir} as the run directory: ${(err as Error).message}`);
    if (resume) throw new DynnError(`cannot resume ${dir}: it does not exist`);
    await checkCreatable(dir);
    return null;
  }
  if (!stat.isDirectory()) throw new DynnError(`--out ${dir} is a file, not a run directory`);
  await checkWritable(dir);
  if (isCheckpointDir(dir)) {
    if (resume) {
      const info = await readCheckpointInfo(dir);
      const file = path.join(dir, MANIFEST_FILE);
      checkTrainingRun(info, dir);
      const meta = parseTrainMeta(info.meta, file);
      await checkDataFiles(dir);
      return { info, meta, args: checkModelArgs(info, file) };
    }
    if (!force) throw new DynnError(`${dir} already holds a training run${await describeRun(dir)}; use --resume to continue it or --force to replace it`);
    return null;
  }
  const names = (await fsp.readdir(dir)).sort();
  if (resume) {
    const data = names.filter((n) => /^(weights|optimizer)-.*\.bin$/.test(n));
    const held = data.length ? ` (it holds ${listNames(data)} but no ${MANIFEST_FILE} that says what they are)` : '';
    throw new DynnError(`cannot resume ${dir}: it has no ${MANIFEST_FILE}${held}; nothing was changed`);
  }
  const others = names.filter((n) => !LEFTOVER.test(n));
  if (others.length && !force) {
    throw new DynnError(`${dir} is not empty and holds no training run (${listNames(others)}); use --force to train into it anyway, or choose another --out`);
  }
  return null;
}

/**
 * The files beside the run in `dir` that other commands made from its weights (`isDerivedRunFile`): what
 * `train --force` removes once the new run's first checkpoint has replaced the old one. Empty when `dir`
 * holds no run (a directory that is not a run keeps its files).
 */
export async function staleRunFiles(dir: string): Promise<string[]> {
  if (!isCheckpointDir(dir)) return [];
  return (await fsp.readdir(dir)).filter(isDerivedRunFile).sort();
}

async function describeRun(dir: string): Promise<string> {
  try {
    const { config, meta } = await readCheckpointInfo(dir);
    const epochs = Array.isArray(meta.history) ? meta.history.length : meta.epoch;
    return ` (${config.model} on ${String(meta.dataset)}, ${String(epochs)} epoch${epochs === 1 ? '' : 's'})`;
  } catch {
    return '';
  }
}

function listNames(names: string[]): string {
  return names.slice(0, 3).join(', ') + (names.length > 3 ? ` and ${names.length - 3} more` : '');
}

async function checkWritable(dir: string): Promise<void> {
  try {
    await fsp.access(dir, constants.W_OK | constants.X_OK);
  } catch {
    throw new DynnError(`cannot write the run directory ${dir}: permission denied`);
  }
}

/** The nearest existing ancestor of a missing `dir` must be a writable directory, or the first save fails. */
async function checkCreatable(dir: string): Promise<void> {
  let parent = path.dirname(path.resolve(dir));
  for (;;) {
    try {
      const stat = await fsp.stat(parent);
      if (!stat.isDirectory()) throw new DynnError(`cannot create the run directory ${dir}: ${parent} is a file, not a directory`);
      try {
        await fsp.access(parent, constants.W_OK | constants.X_OK);
      } catch {
        throw new DynnError(`cannot create the run directory ${dir}: ${parent} is not writable`);
      }
      return;
    } catch (err) {
      if (err instanceof DynnError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new DynnError(`cannot create the run directory ${dir}: ${(err as Error).message}`);
      const up = path.dirname(parent);
      if (up === parent) return;
      parent = up;
    }
  }
}
