import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { annealTemperatures, checkAnnealing } from '../layers/condconv.js';
import { initEngine, type EngineName } from '../engine/backend.js';
import { loadDataset } from '../data/datasets.js';
import { allocShared, head } from '../data/imageset.js';
import type { Dataset } from '../data/types.js';
import { checkGatingMode, type GatingMode } from '../gating/gating.js';
import { createModel, models, resolveModelArgs, type ModelArgs } from '../models/zoo.js';
import type { NamedArray, Network } from '../models/network.js';
import { loadCheckpoint } from '../checkpoint/checkpoint.js';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { calibrateBatchNorm } from './calibrate.js';
import { gateFits, type FitContext } from './fit.js';
import { checkEfficiency, isGateWeight, mechanisms } from '../route/mechanisms.js';
import { checkGateEstimator } from '../route/modes.js';
import { evaluateRouted } from '../eval/routed.js';
import { executionRate } from '../route/context.js';
import { evaluate } from '../eval/evaluate.js';
import { LocalExecutor, ThreadExecutor, type GradientExecutor } from './executor.js';
import { checkOptimizer, Optimizer, type OptimizerName } from './optimizer.js';
import { checkLrSchedule, checkUSchedule, learningRate, sampleU, type LrSchedule, type USchedule } from './schedule.js';
import { VERSION } from '../version.js';
import { buildModel, checkDynamicMatch, checkRunDir, loadRun, saveRun, staleRunFiles, type EpochRecord, type ResumePoint, type TrainMeta } from './run.js';
import { optionFlag } from './flags.js';
import type { GateEstimator, Plan } from '../layers/types.js';
import { flatLayout, type StepSetup, type StepSpec } from './step.js';
import { exitCount } from '../models/exits.js';
import { checkDistill } from '../scaling/distill.js';
import { sandwichPlans } from '../scaling/sandwich.js';
import { exitTable } from '../scaling/budget.js';
import { EarlyExitRunner } from '../scaling/runner.js';

/** `train` stopped by its `signal` between steps: the run keeps the checkpoint of its last finished epoch (`epoch` of them). */
export class TrainingStopped extends DynnError {
  constructor(readonly epoch: number) {
    super(`training stopped during epoch ${epoch + 1}`);
  }
}

/** Everything a training run is configured by; unset fields take the defaults shown. */
export interface TrainOptions {
  /** Registered model name (default 'vgg-w'). */
  model?: string;
  /** Model arguments; input shape and class count come from the data set. */
  modelArgs?: ModelArgs;
  /** Registered data set name (default 'mnist'). */
  dataset?: string;
  /** Where the data set's files are. */
  dataDir?: string;
  /** Use the first N training samples. */
  trainLimit?: number;
  /** Use the first N test samples. */
  testLimit?: number;
  /**
   * Hold the last N training samples out of training as a validation split (for choosing operating
   * points without touching the test set); recorded in the run's metadata. Default 0.
   */
  validationSamples?: number;
  /**
   * Probability that a uniform or curriculum batch trains the full network (u = 1) instead of a drawn u
   * (default 0.2; see `sampleU`).
   */
  fullWidth?: number;
  epochs?: number;
  /** Batch size (default 128). */
  batchSize?: number;
  optimizer?: OptimizerName;
  /** Base learning rate (default 1e-3 for Adam, 0.05 for SGD). */
  lr?: number;
  lrSchedule?: LrSchedule;
  /** How u is drawn per batch (default 'uniform'); 'sandwich' trains several widths per batch. */
  schedule?: USchedule;
  /** Sandwich rule: random widths per step besides the widest and the narrowest (default 2). */
  sandwichWidths?: number;
  /** Sandwich rule: every narrower width learns from the widest's soft predictions, detached (default true). */
  inplaceDistill?: boolean;
  /**
   * Sandwich rule: weight of the widest's soft predictions in a narrower width's loss, the rest on the labels
   * (default 0.5; 1 is US-Nets' soft targets alone, which trained worse in short Fashion-MNIST runs).
   */
  inplaceAlpha?: number;
  /** Run directory of a trained network whose predictions at u = 1 the model learns from (knowledge distillation). */
  teacher?: string;
  /**
   * Run directory whose weights the model starts from (fine-tuning): every weight of the model must be in it
   * with the same shape, except a dynamic model's gates, which start open when the run has none. One step 1
   * (a throttleable backbone) then serves step 2 at several targets or mechanisms.
   */
  init?: string;
  /** Distillation: weight a of the soft-target term, in [0, 1] (default 0.5). */
  distillAlpha?: number;
  /** Distillation: temperature T of the soft targets (default 4). */
  distillT?: number;
  /** Early-exit models: loss weight of each exit, the last included (default 1 each). */
  exitWeights?: number[];
  /** Widthwise gating during training (default 'nested'). */
  gating?: GatingMode;
  /** Seed of initial weights, data order and sampled u (default 0). */
  seed?: number;
  /** Gradient threads: 0 runs in the calling thread; default one worker per core. */
  workers?: number;
  /** Tensor engine (default 'auto'). */
  engine?: EngineName | 'auto';
  /** Checkpoint directory, written after every epoch. */
  out?: string;
  /**
   * Continue the run in `out` from its last checkpoint, with the options it recorded; a set option that
   * contradicts them is refused (`epochs`, a new total, and `workers`, `engine`, `dataDir` may differ).
   */
  resume?: boolean;
  /** Replace the run in `out`, or train into a non-empty directory that holds none (refused otherwise). */
  force?: boolean;
  /** Stops training between steps once aborted: `train` then rejects with `TrainingStopped`, the run as its last checkpoint left it. */
  signal?: AbortSignal;
  /** Utilizations evaluated on the test set after every epoch (default 0.25, 0.5, 1). */
  evalUs?: number[];
  /** Training samples per level for BatchNorm calibration (default 2048). */
  calibrationSamples?: number;
  /**
   * Dynamic models (gates inside the network, `modelArgs.dynamic`): the mean executed FLOPs ratio, gates
   * included, that the efficiency term pulls toward (default: the mechanism's, 0.5 for ACS).
   */
  flopsTarget?: number;
  /**
   * `--dynamic width`: the mean FLOPs ratio, the gate included, that the gate's complexity term pulls toward
   * (DS-Net's target; default the mechanism's, 0.5). The same quantity as `flopsTarget`, named for the mechanism.
   */
  widthTarget?: number;
  /**
   * Dynamic models that skip whole blocks (`skip`, `skip-ff`): the mean fraction of gated blocks each
   * sample executes, per block (ConvNet-AIG's target rate; default the mechanism's, 0.6). It holds with
   * deterministic gates: after each epoch every gate is fitted to it on training samples.
   */
  skipTarget?: number;
  /**
   * `--dynamic spatial`: the mean fraction of output positions each gated block computes, per block, in
   * (0, 1) (dynconv's sparsity target; default the mechanism's, 0.5).
   */
  spatialTarget?: number;
  /** Dynamic models: weight of the efficiency term `(ratio - target)^2` (default: the mechanism's). */
  efficiencyWeight?: number;
  /**
   * Dynamic models: the first N of `epochs` train the backbone with every route at full width and no gate
   * (two-step training's step 1); the gates start open, so step 2 starts where step 1 ended. Default 0.
   */
  pretrainEpochs?: number;
  /** Dynamic models: the inference threshold of the gates for evaluation and calibration (default 0.5). */
  gateThreshold?: number;
  /** Dynamic models: how the gates' binary decisions get gradients, `sigmoid` or `gumbel` (default: the mechanism's, else 'sigmoid'). */
  gateEstimator?: GateEstimator;
  /** Called after every step. */
  onStep?: (p: StepProgress) => void;
  /** Called after every epoch. */
  onEpoch?: (r: EpochRecord) => void;
}

/** Progress of one training step. */
export interface StepProgress {
  epoch: number;
  epochs: number;
  step: number;
  steps: number;
  loss: number;
  accuracy: number;
  samplesPerSec: number;
  u: number;
  /** Dynamic models: the step's mean executed FLOPs ratio (gates included); absent in step 1 of two-step training. */
  flopsRatio?: number;
  /** Dynamic models: the step's mean share of each gate's groups executed (for `skip`, of blocks executed). */
  executionRate?: number;
  /** Mixtures of experts: the step's share of assignments that found their expert full. */
  overflowRate?: number;
}

/** The outcome of `train`: the network (caller disposes it), the data set and the run's metadata. */
export interface TrainResult {
  model: Network;
  dataset: Dataset;
  meta: TrainMeta;
  /** Epochs this call trained: 0 when a resumed run had already reached its epochs (nothing was written). */
  epochsTrained: number;
  /** Files of the run `force` replaced that described its old weights (sweeps, evaluations, exports), removed. */
  removedStale: string[];
}

type Optional = 'out' | 'dataDir' | 'trainLimit' | 'testLimit' | 'lr' | 'teacher' | 'init' | 'exitWeights' | 'flopsTarget' | 'widthTarget' | 'skipTarget' | 'spatialTarget' | 'efficiencyWeight' | 'gateEstimator';
type Resolved = Required<Omit<TrainOptions, Optional | 'onStep' | 'onEpoch' | 'modelArgs' | 'force' | 'signal'>> & Pick<TrainOptions, Optional>;

/** Options that define what a run trains; `--resume` restores them from the run and refuses a contradicting one. */
const RUN_OPTIONS = [
  'model', 'dataset', 'trainLimit', 'testLimit', 'validationSamples', 'fullWidth', 'batchSize', 'optimizer', 'lr', 'lrSchedule',
  'schedule', 'sandwichWidths', 'inplaceDistill', 'inplaceAlpha', 'teacher', 'init', 'distillAlpha', 'distillT', 'exitWeights', 'gating',
  'seed', 'evalUs', 'calibrationSamples', 'flopsTarget', 'widthTarget', 'skipTarget', 'spatialTarget', 'efficiencyWeight', 'pretrainEpochs', 'gateThreshold', 'gateEstimator',
] as const satisfies readonly (keyof TrainOptions)[];
/** Run options that are recorded only when set: absent from the record means unset, not an older default. */
const UNSET_WHEN_ABSENT = new Set<string>(['trainLimit', 'testLimit', 'teacher', 'init', 'exitWeights']);

/**
 * The options of a resumed run: what the run recorded, with the caller's `epochs` (a new total), `workers`,
 * `engine` and `dataDir`. A set run option that differs from the record, or a model argument that differs
 * from the checkpoint's, is refused, all of them named in one message.
 */
function resumeOptions(options: TrainOptions, run: ResumePoint, dir: string): TrainOptions {
  // The checkpoint's architecture is what the weights fit, whatever an older or edited record says.
  const recorded: Record<string, unknown> = {
    dataset: run.meta.dataset,
    seed: run.meta.seed,
    ...run.meta.options,
    model: run.info.config.model,
  };
  const given = options as Record<string, unknown>;
  const merged: Record<string, unknown> = { ...options };
  const conflicts: string[] = [];
  const show = (v: unknown) => (Array.isArray(v) ? v.join(',') : String(v));
  for (const key of RUN_OPTIONS) {
    const absent = !(key in recorded) || recorded[key] === undefined;
    if (absent && !UNSET_WHEN_ABSENT.has(key)) continue;
    const want = absent ? undefined : recorded[key];
    if (given[key] === undefined) merged[key] = want;
    else if (!sameOption(key, given[key], want)) {
      const had = want === undefined ? 'without it' : `${key === 'dataset' ? 'on' : 'with'} ${show(want)}`;
      conflicts.push(`${optionFlag(key)} ${show(given[key])} contradicts the run (trained ${had})`);
    }
  }
  for (const [key, value] of Object.entries(options.modelArgs ?? {})) {
    if (value === undefined || sameOption(key, value, run.args[key])) continue;
    const flag = optionFlag(key);
    // A static run resumed with --dynamic (or the reverse) would need other weights: say which it is.
    conflicts.push(`${flag.startsWith('--') ? flag : `modelArgs.${key}`} ${show(value)} contradicts the run (${run.args[key] === undefined ? `trained without it${key === 'dynamic' ? ': a static model' : ''}` : `trained with ${show(run.args[key])}`})`);
  }
  if (conflicts.length) {
    throw new DynnError(`cannot resume ${dir}: ${conflicts.join('; ')}; leave ${conflicts.length > 1 ? 'them' : 'it'} out to continue the run as recorded, or start a new run`);
  }
  if (options.epochs === undefined && typeof recorded.epochs === 'number') merged.epochs = recorded.epochs;
  if (options.dataDir === undefined && typeof recorded.dataDir === 'string') merged.dataDir = recorded.dataDir;
  return merged as TrainOptions;
}

function sameOption(key: string, a: unknown, b: unknown): boolean {
  if ((key === 'teacher' || key === 'init') && typeof a === 'string' && typeof b === 'string') return path.resolve(a) === path.resolve(b);
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Checks that a data set's two splits agree with each other and with its class count, before any training. */
function checkSplits(dataset: Dataset): void {
  const { train, test, name, numClasses } = dataset;
  const dims = (s: { height: number; width: number; channels: number }) => `${s.height}x${s.width}x${s.channels}`;
  if (dims(train) !== dims(test)) {
    throw new DynnError(`data set ${name}: the test set has ${dims(test)} images but the training set has ${dims(train)}; both splits need one image size`);
  }
  for (const [split, set] of [['training', train], ['test', test]] as const) {
    let top = 0;
    for (let i = 0; i < set.count; i++) if (set.labels[i]! > top) top = set.labels[i]!;
    if (top >= numClasses) {
      throw new DynnError(`data set ${name}: the ${split} set has labels up to ${top} (${top + 1} classes) but the data set has ${numClasses} classes`);
    }
  }
}

function resolveOptions(o: TrainOptions): Resolved {
  const r = {
    model: o.model ?? 'vgg-w',
    dataset: o.dataset ?? 'mnist',
    dataDir: o.dataDir,
    trainLimit: o.trainLimit,
    testLimit: o.testLimit,
    epochs: o.epochs ?? 3,
    batchSize: o.batchSize ?? 128,
    optimizer: o.optimizer ?? 'adam',
    lr: o.lr,
    lrSchedule: o.lrSchedule ?? 'cosine',
    schedule: o.schedule ?? 'uniform',
    gating: o.gating ?? 'nested',
    seed: o.seed ?? 0,
    workers: o.workers ?? -1,
    engine: o.engine ?? 'auto',
    out: o.out,
    resume: o.resume ?? false,
    evalUs: o.evalUs ?? [0.25, 0.5, 1],
    calibrationSamples: o.calibrationSamples ?? 2048,
    validationSamples: o.validationSamples ?? 0,
    fullWidth: o.fullWidth ?? 0.2,
    sandwichWidths: o.sandwichWidths ?? 2,
    inplaceDistill: o.inplaceDistill ?? true,
    inplaceAlpha: o.inplaceAlpha ?? 0.5,
    teacher: o.teacher,
    init: o.init,
    distillAlpha: o.distillAlpha ?? 0.5,
    distillT: o.distillT ?? 4,
    exitWeights: o.exitWeights,
    flopsTarget: o.flopsTarget,
    widthTarget: o.widthTarget,
    skipTarget: o.skipTarget,
    spatialTarget: o.spatialTarget,
    efficiencyWeight: o.efficiencyWeight,
    pretrainEpochs: o.pretrainEpochs ?? 0,
    gateThreshold: o.gateThreshold ?? 0.5,
    gateEstimator: o.gateEstimator,
  };
  checkOptimizer(r.optimizer);
  checkLrSchedule(r.lrSchedule);
  checkUSchedule(r.schedule);
  checkGatingMode(r.gating);
  // Rounded channel counts are prefixes; independent gating draws arbitrary groups (refused here, not mid-epoch).
  if (r.gating === 'independent' && (o.modelArgs?.channelMultiple ?? 1) > 1) {
    throw new DynnError(`channels rounded to multiples of ${o.modelArgs!.channelMultiple} need nested gating (the first groups active), not independent gating`);
  }
  for (const [k, v] of [['epochs', r.epochs], ['batchSize', r.batchSize]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new DynnError(`${k} must be a positive integer, got ${v}`);
  }
  if (r.lr !== undefined && !(r.lr > 0 && Number.isFinite(r.lr))) throw new DynnError(`lr must be a positive number, got ${r.lr}`);
  if (!(r.fullWidth >= 0 && r.fullWidth <= 1)) throw new DynnError(`fullWidth must be a probability in [0, 1], got ${r.fullWidth}`);
  if (!Number.isInteger(r.validationSamples) || r.validationSamples < 0) {
    throw new DynnError(`validationSamples must be a non-negative integer, got ${r.validationSamples}`);
  }
  if (!Number.isInteger(r.seed)) throw new DynnError(`seed must be an integer, got ${r.seed}`);
  if (r.resume && !r.out) throw new DynnError('resume needs the run directory (out)');
  if (!Number.isInteger(r.sandwichWidths) || r.sandwichWidths < 0) {
    throw new DynnError(`sandwichWidths must be a non-negative integer, got ${r.sandwichWidths}`);
  }
  checkDistill({ alpha: r.distillAlpha, temperature: r.distillT });
  if (!(r.inplaceAlpha >= 0 && r.inplaceAlpha <= 1)) throw new DynnError(`inplaceAlpha must be in [0, 1], got ${r.inplaceAlpha}`);
  if (!Number.isInteger(r.pretrainEpochs) || r.pretrainEpochs < 0) throw new DynnError(`pretrainEpochs must be a non-negative integer, got ${r.pretrainEpochs}`);
  if (!(r.gateThreshold >= 0 && r.gateThreshold <= 1)) throw new DynnError(`gateThreshold must be in [0, 1], got ${r.gateThreshold}`);
  checkEfficiency(r.flopsTarget ?? 0.5, r.efficiencyWeight ?? 0);
  checkEfficiency(r.widthTarget ?? 0.5, 0, 'the width target (--width-target)');
  checkEfficiency(r.skipTarget ?? 0.5, 0, 'the skip target (--skip-target)');
  // At 0 or 1 a block would compute nothing or all: no mask to learn.
  if (r.spatialTarget !== undefined && !(r.spatialTarget > 0 && r.spatialTarget < 1)) throw new DynnError(`the spatial target (--spatial-target) must be in (0, 1), got ${r.spatialTarget}`);
  if (r.gateEstimator !== undefined) checkGateEstimator(r.gateEstimator);
  if (r.exitWeights && !r.exitWeights.every((w) => w >= 0 && Number.isFinite(w))) {
    throw new DynnError(`exitWeights must be non-negative numbers, got ${JSON.stringify(r.exitWeights)}`);
  }
  return r;
}

/** Mixes a run seed with a purpose and an epoch into an independent stream seed. */
function streamSeed(seed: number, purpose: number, epoch: number): number {
  return (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(purpose, 0x85ebca6b) ^ Math.imul(epoch + 1, 0xc2b2ae35)) >>> 0;
}

/**
 * Trains a throttleable network (DTNN phase 1, Eq. 1): every batch draws a utilization from the schedule
 * and runs sliced at it, so one set of weights learns every operating point. After each epoch BatchNorm
 * statistics are calibrated per level, the test accuracy is measured at `evalUs`, and a checkpoint is
 * written atomically to `out`. Options add the sandwich rule with in-place distillation (universally
 * slimmable training), knowledge distillation from a teacher run, and joint training of early exits.
 */
export async function train(options: TrainOptions = {}): Promise<TrainResult> {
  if (options.resume && !options.out) throw new DynnError('resume needs the run directory (out)');
  // Everything that could refuse the run directory is checked before the data loads, let alone an epoch runs.
  const run = options.out ? await checkRunDir(options.out, { resume: options.resume, force: options.force }) : null;
  if (run) options = resumeOptions(options, run, options.out!);
  // A replaced run's sweeps, evaluations and exports would describe weights that are gone.
  const stale = options.force && options.out ? await staleRunFiles(options.out) : [];
  const removedStale: string[] = [];
  const o = resolveOptions(options);
  const done = run ? run.meta.history.length : 0;
  if (run && run.meta.epoch !== done) {
    throw new DynnError(`cannot resume ${o.out}: its metadata says ${run.meta.epoch} epochs but its history holds ${done}`);
  }
  if (o.epochs < done) throw new DynnError(`cannot resume ${o.out}: --epochs ${o.epochs} is fewer than the ${done} epochs it has already trained`);
  const engine = await initEngine(o.engine);
  const dataset = await loadDataset(o.dataset, { dataDir: o.dataDir, trainLimit: o.trainLimit, testLimit: o.testLimit, seed: o.seed });
  checkSplits(dataset);
  if (o.validationSamples >= dataset.train.count) {
    throw new DynnError(`validationSamples (${o.validationSamples}) must be fewer than the ${dataset.train.count} training samples`);
  }
  const { height, width, channels } = dataset.train;
  if (run && dataset.train.count - o.validationSamples !== run.meta.trainSamples) {
    throw new DynnError(
      `cannot resume ${o.out}: ${o.dataset} now gives ${dataset.train.count - o.validationSamples} training samples, the run trained on ${run.meta.trainSamples} (other data files or --data-dir?)`,
    );
  }
  const fresh = run ? null : resolveModelArgs(o.model, { ...options.modelArgs, inputShape: [height, width, channels], numClasses: dataset.numClasses, seed: options.modelArgs?.seed ?? o.seed });
  if (fresh && models.get(o.model).condconv) checkAnnealing(fresh, o.model);
  const model = run ? buildModel(run.info.config.model, run.args, o.out!) : createModel(o.model, fresh!);
  if (run && (model.inputShape.join('x') !== `${height}x${width}x${channels}` || model.numClasses !== dataset.numClasses)) {
    const message = `cannot resume ${o.out}: its network takes ${model.inputShape.join('x')} images in ${model.numClasses} classes; ${o.dataset} has ${height}x${width}x${channels} in ${dataset.numClasses}`;
    model.dispose();
    throw new DynnError(message);
  }
  const exits = exitCount(model);
  if (o.exitWeights && (exits === 1 || o.exitWeights.length !== exits)) {
    model.dispose();
    throw new DynnError(
      exits === 1
        ? `exitWeights needs an early-exit model; ${o.model} has no exits`
        : `exitWeights needs one weight per exit of ${o.model} (${exits}), got ${o.exitWeights.length}`,
    );
  }
  const gated = model.gated;
  const dynamicOptions = [
    ...(o.flopsTarget !== undefined ? ['flopsTarget'] : []),
    ...(o.widthTarget !== undefined ? ['widthTarget'] : []),
    ...(o.skipTarget !== undefined ? ['skipTarget'] : []),
    ...(o.spatialTarget !== undefined ? ['spatialTarget'] : []),
    ...(o.efficiencyWeight !== undefined ? ['efficiencyWeight'] : []),
    ...(o.pretrainEpochs > 0 ? ['pretrainEpochs'] : []),
    ...((o.gateEstimator ?? 'sigmoid') !== 'sigmoid' ? ['gateEstimator'] : []),
  ];
  if (!gated && dynamicOptions.length) {
    model.dispose();
    throw new DynnError(`${dynamicOptions.map((k) => `${k} (${optionFlag(k)})`).join(', ')} ${dynamicOptions.length > 1 ? 'need' : 'needs'} a dynamic model (--dynamic NAME); ${o.model} has no gates`);
  }
  const mechanism = gated ? mechanisms.get(String(model.config.args.dynamic)) : null;
  // A switch's routes (DS-Net's supernet, a multi-branch network's branches, the resolutions) train first like
  // any slimmable network (--pretrain-epochs, any u schedule), then the gate alone, the routes frozen.
  const frozenRoutes = mechanism?.frozenRoutes === true;
  if (gated && ((o.schedule === 'sandwich' && !frozenRoutes) || exits > 1)) {
    model.dispose();
    throw new DynnError(`a dynamic model trains at u = 1 with its gates deciding; ${o.schedule === 'sandwich' ? 'the sandwich schedule' : 'early exits'} cannot be combined with it`);
  }
  // Frozen routes must have been trained: here first (--pretrain-epochs) or in the run --init starts from.
  if (frozenRoutes && o.pretrainEpochs === 0 && !o.init && !run) {
    model.dispose();
    throw new DynnError(`--dynamic ${String(model.config.args.dynamic)} trains its gate with the routes frozen: train the routes first (--pretrain-epochs N) or start from a run that did (--init RUN)`);
  }
  // A fitted target is met with deterministic gates at the threshold, which must leave both decisions possible.
  const fit = mechanism?.efficiency.fit === undefined ? undefined : gateFits.get(mechanism.efficiency.fit);
  if (fit && !(o.gateThreshold > 0 && o.gateThreshold < 1)) {
    model.dispose();
    throw new DynnError(`--dynamic ${String(model.config.args.dynamic)} fits its gates to the target at the threshold: --gate-threshold must be in (0, 1), got ${o.gateThreshold}`);
  }
  // A cost fixed by the mechanism's settings (a mixture's k) has no target to pull toward.
  const fixedCost = (['flopsTarget', 'widthTarget', 'skipTarget', 'spatialTarget', 'efficiencyWeight'] as const).find((k) => mechanism?.fixedCost && o[k] !== undefined);
  if (mechanism && fixedCost) {
    model.dispose();
    throw new DynnError(`${optionFlag(fixedCost)} does not apply to --dynamic ${String(model.config.args.dynamic)}: ${mechanism.fixedCost}`);
  }
  // Each mechanism's target has its own option; the other one's would silently do nothing.
  const other = mechanism && (['flopsTarget', 'widthTarget', 'skipTarget', 'spatialTarget'] as const).find((k) => k !== mechanism.efficiency.option && o[k] !== undefined);
  if (mechanism && other) {
    model.dispose();
    throw new DynnError(`${optionFlag(other)} does not apply to --dynamic ${String(model.config.args.dynamic)}, whose target is ${mechanism.efficiency.flag}: ${mechanism.efficiency.what}`);
  }
  const efficiency = mechanism?.fixedCost ? undefined : mechanism ? { target: o[mechanism.efficiency.option] ?? mechanism.defaults.target, weight: o.efficiencyWeight ?? mechanism.defaults.efficiencyWeight } : undefined;
  const estimator = o.gateEstimator ?? mechanism?.defaults.estimator ?? 'sigmoid';
  if (o.init && !run) {
    try {
      await initFrom(o.init, model);
    } catch (err) {
      model.dispose();
      throw err;
    }
  }
  const lr = o.lr ?? (o.optimizer === 'adam' ? 1e-3 : 0.05);
  const optimizer = new Optimizer(o.optimizer, lr);
  const history: EpochRecord[] = [];
  let startEpoch = 0;

  if (run && o.out) {
    try {
      checkDynamicMatch(o.out, run.info, model);
      const ckpt = await loadCheckpoint(o.out, {
        model: run.info.config.model,
        weights: model.weights().map((w) => ({ name: w.name, shape: w.variable.shape })),
      });
      model.setWeights(ckpt.weights);
      if (ckpt.optimizer) {
        if (ckpt.optimizer.kind !== o.optimizer) {
          throw new DynnError(`${o.out} was trained with --optimizer ${ckpt.optimizer.kind}; resume it with the same optimizer, or start a new run`);
        }
        await optimizer.setState(ckpt.optimizer.arrays, flatLayout(model).total);
      }
      history.push(...run.meta.history);
      startEpoch = history.length;
    } catch (err) {
      optimizer.dispose();
      model.dispose();
      throw err;
    }
    if (startEpoch === o.epochs) {
      // Already complete: nothing to train, and nothing on disk is rewritten.
      optimizer.dispose();
      return { model, dataset, meta: run.meta, epochsTrained: 0, removedStale: [] };
    }
  }

  const trainPart = head(dataset.train, dataset.train.count - o.validationSamples);
  const fitContext: FitContext | undefined =
    fit && efficiency
      ? {
          model,
          data: trainPart,
          target: efficiency.target,
          samples: o.calibrationSamples,
          threshold: o.gateThreshold,
          recalibrate: () => calibrateBatchNorm(model, trainPart, { us: [1], samples: o.calibrationSamples, seed: o.seed, threshold: o.gateThreshold }),
        }
      : undefined;
  const train = o.workers === 0 ? trainPart : allocShared(trainPart);
  const threads = o.workers < 0 ? undefined : o.workers;
  let executor: GradientExecutor | null = null;
  let teacher: Network | null = null;
  const meta = (): TrainMeta => ({
    dynnVersion: VERSION,
    dataset: o.dataset,
    trainSamples: trainPart.count,
    validationSamples: o.validationSamples,
    testSamples: dataset.test.count,
    options: { ...o, lr, workers: executor?.threads ?? 0, engine, ...(gated ? { gateEstimator: estimator } : {}) },
    seed: o.seed,
    epoch: history.length,
    history,
  });
  try {
    const setup: StepSetup = { exitWeights: o.exitWeights };
    if (o.teacher) {
      teacher = await loadTeacher(o.teacher, model);
      setup.teacher = { model: teacher, settings: { alpha: o.distillAlpha, temperature: o.distillT } };
    }
    executor =
      o.workers === 0
        ? new LocalExecutor(model, train, o.batchSize, setup)
        : await ThreadExecutor.start(model, train, engine, o.batchSize, threads, setup);
    teacher?.dispose();
    teacher = null;
    const n = train.count;
    const stepsPerEpoch = Math.ceil(n / o.batchSize);
    const totalSteps = stepsPerEpoch * o.epochs;
    for (let epoch = startEpoch; epoch < o.epochs; epoch++) {
      // Dynamic convolution's softmax temperature, annealed per epoch: a weight, so the workers reload it.
      if (annealTemperatures(model.layers, epoch)) executor.reload();
      if (fit?.start && fitContext && epoch === o.pretrainEpochs) {
        fit.start(fitContext);
        executor.reload();
      }
      const order = new Rng(streamSeed(o.seed, 1, epoch)).permutation(n);
      const uRng = new Rng(streamSeed(o.seed, 2, epoch));
      const gateRng = new Rng(streamSeed(o.seed, 3, epoch));
      const t0 = performance.now();
      let lossSum = 0;
      let correct = 0;
      let seen = 0;
      let rateSum = 0;
      let rated = 0;
      let overflowSum = 0;
      let overflowSeen = 0;
      for (let step = 0; step < stepsPerEpoch; step++) {
        const progress = (epoch * stepsPerEpoch + step) / totalSteps;
        const sandwich = o.schedule === 'sandwich';
        // Step 2 of a dynamic model runs u = 1: its gates choose each sample's operating point. Step 1 trains the
        // backbone throttleable (u per batch, the schedule's, or every width of a sandwich step), so every prefix
        // of groups a gate may pick is good.
        const pretraining = gated && epoch < o.pretrainEpochs;
        const u = sandwich || (gated && !pretraining) ? 1 : sampleU(o.schedule, uRng, progress, o.fullWidth);
        optimizer.setLearningRate(learningRate(o.lrSchedule, lr, progress));
        const indices = order.subarray(step * o.batchSize, Math.min(n, (step + 1) * o.batchSize));
        const supernet = pretraining && frozenRoutes;
        // The gate's stage starts from fresh optimizer moments: the frozen weights' zero gradients then move nothing.
        if (frozenRoutes && !pretraining && epoch === o.pretrainEpochs && step === 0) optimizer.dispose();
        const sandwichStep = () => ({ plans: sandwichPlans(model, { n: o.sandwichWidths, rng: uRng, gating: o.gating, gateRng }), inplaceDistill: o.inplaceDistill, inplaceAlpha: o.inplaceAlpha });
        const work: Plan | StepSpec = gated && !supernet
          ? { plans: [model.plan(u)], routing: { mode: pretraining ? 'full' : 'soft', seed: streamSeed(o.seed, 4, epoch) + step, efficiency, estimator }, gatesOnly: frozenRoutes }
          : sandwich
            ? sandwichStep()
            : model.plan(u, { gating: o.gating, rng: gateRng });
        // A stop asked for (Ctrl-C) is seen between steps; the local executor computes synchronously, so the
        // loop yields once a step for the signal to arrive at all.
        if (options.signal) {
          await new Promise((r) => setImmediate(r));
          if (options.signal.aborted) throw new TrainingStopped(epoch);
        }
        const r = await executor.step(indices, work);
        if (!Number.isFinite(r.loss)) throw new DynnError(`training diverged: loss is ${r.loss} at epoch ${epoch + 1}, step ${step + 1} (try a lower --lr)`);
        await executor.update(optimizer);
        lossSum += r.loss * r.count;
        correct += r.correct;
        seen += r.count;
        if (r.overflowRate !== undefined) {
          overflowSum += r.overflowRate * r.count;
          overflowSeen += r.count;
        }
        if (r.executionRate !== undefined) {
          rateSum += r.executionRate * r.count;
          rated += r.count;
        }
        options.onStep?.({
          epoch,
          epochs: o.epochs,
          step,
          steps: stepsPerEpoch,
          loss: lossSum / seen,
          accuracy: correct / seen,
          samplesPerSec: seen / ((performance.now() - t0) / 1000),
          u,
          flopsRatio: r.flopsRatio,
          executionRate: r.executionRate,
          ...(r.overflowRate === undefined ? {} : { overflowRate: r.overflowRate }),
        });
      }
      const trainSeconds = (performance.now() - t0) / 1000;
      calibrateBatchNorm(model, trainPart, { samples: o.calibrationSamples, gating: o.gating, seed: o.seed });
      // Then each gated block's rows from the samples that take each route (statistics per route).
      // Not for frozen routes: the gate learned on their statistics over every sample, which a subset would shift.
      if (gated && !frozenRoutes) calibrateBatchNorm(model, trainPart, { us: [1], samples: o.calibrationSamples, seed: o.seed, threshold: o.gateThreshold });
      // The target must hold with deterministic gates, not only sampled ones: the mechanism's gate fit.
      if (fit && fitContext && epoch >= o.pretrainEpochs) {
        fit.epoch(fitContext);
        executor.reload();
      }
      const test: Record<string, number> = {};
      // A network with no fixed-plan sub-network (a mixture of experts) is measured with its gates deciding, at u = 1.
      // One operating point (no throttleable block: dynamic parameters, SE, skipping or spatial gates): u = 1 only.
      const evalUs = model.levelUtilizations().length === 1 ? [1] : o.evalUs;
      for (const u of mechanism?.noSubnet ? [] : evalUs) test[String(u)] = evaluate(model, dataset.test, u, { gating: o.gating, seed: o.seed }).accuracy;
      const routed = gated ? evaluateRouted(model, dataset.test, { threshold: o.gateThreshold }) : null;
      if (mechanism?.noSubnet && routed) test['1'] = routed.accuracy;
      const record: EpochRecord = {
        epoch: epoch + 1,
        loss: lossSum / seen,
        trainAccuracy: correct / seen,
        samplesPerSec: seen / trainSeconds,
        msPerStep: (trainSeconds * 1000) / stepsPerEpoch,
        seconds: (performance.now() - t0) / 1000,
        lr: optimizer.learningRate,
        testAccuracy: test,
        ...(exits > 1 ? { exitAccuracy: exitAccuracy(model, dataset.test) } : {}),
        ...(routed
          ? {
              gated: {
                threshold: routed.threshold,
                accuracy: routed.accuracy,
                flopsRatio: routed.flopsRatio,
                // A rate target's measure, deterministic and as training's sampled gates reported it.
                // A mixture's balance at evaluation and its overflow there and in training.
                ...(routed.experts ? { expertCv: Math.max(...Object.values(routed.experts).map((e) => e.cv)), overflowRate: routed.overflowRate, ...(overflowSeen ? { trainOverflowRate: overflowSum / overflowSeen } : {}) } : {}),
                ...(mechanism?.efficiency.rate ? { executionRate: executionRate(routed.skipRates), ...(rated ? { trainExecutionRate: rateSum / rated } : {}) } : {}),
              },
            }
          : {}),
      };
      history.push(record);
      if (o.out) await saveRun(o.out, model, meta(), optimizer);
      // Only now is the old run gone: an earlier failure leaves it whole, with its files.
      if (stale.length && !removedStale.length) {
        await Promise.all(stale.map((f) => fsp.rm(path.join(o.out!, f), { force: true })));
        removedStale.push(...stale);
      }
      options.onEpoch?.(record);
    }
    return { model, dataset, meta: meta(), epochsTrained: o.epochs - startEpoch, removedStale };
  } catch (err) {
    model.dispose();
    throw err;
  } finally {
    teacher?.dispose();
    optimizer.dispose();
    await executor?.close();
  }
}

/** Loads a distillation teacher and checks that it takes the student's inputs and predicts its classes. */
async function loadTeacher(dir: string, student: Network): Promise<Network> {
  return loadCompatible(dir, student, `teacher ${dir}`, 'the student');
}

/** Loads the run in `dir` (`what`), refused unless it takes the inputs and classes of `model` (`self`). */
async function loadCompatible(dir: string, model: Network, what: string, self: string): Promise<Network> {
  const { model: other } = await loadRun(dir);
  if (other.numClasses !== model.numClasses || other.inputShape.join() !== model.inputShape.join()) {
    const shape = (m: Network) => `${m.inputShape.join('x')} inputs, ${m.numClasses} classes`;
    const message = `${what} takes ${shape(other)}; ${self} takes ${shape(model)}`;
    other.dispose();
    throw new DynnError(message);
  }
  return other;
}

/** Starts `model` from the weights of the run in `dir` (`TrainOptions.init`); gates the run lacks keep their open start. */
async function initFrom(dir: string, model: Network): Promise<void> {
  const source = await loadCompatible(dir, model, `--init ${dir}`, 'this model');
  try {
    const have = new Map(source.getWeights().map((w) => [w.name, w]));
    const missing = model.weights().filter((w) => !have.has(w.name) && !isGateWeight(w.name)).map((w) => w.name);
    if (missing.length) {
      const more = missing.length > 3 ? ` and ${missing.length - 3} more` : '';
      throw new DynnError(`--init ${dir}: that run (${source.config.model}) has no ${missing.slice(0, 3).join(', ')}${more}; start from a run of the same backbone as ${model.config.model}`);
    }
    const mine = model.getWeights();
    // Gates come along only whole and alike (same mechanism and logit scale): a gate half copied, or whose
    // logits another scale multiplies, would not start where that run ended. Otherwise all start open.
    const args = (m: Network) => [m.config.args.dynamic, m.config.args.gateScale ?? 1, m.config.args.decisions ?? 'nested'].join();
    const gates = mine.filter((w) => isGateWeight(w.name));
    const keepGates = args(source) === args(model) && gates.every((w) => have.get(w.name)?.shape.join() === w.shape.join());
    const from = (w: (typeof mine)[number]) => {
      const a = isGateWeight(w.name) && !keepGates ? undefined : have.get(w.name);
      return a && isLevelStats(a, w) && a.shape[0] !== w.shape[0] ? fullWidthRows(a, w.shape[0]) : a;
    };
    for (const w of mine) {
      const a = from(w);
      if (a && a.shape.join() !== w.shape.join()) throw new DynnError(`--init ${dir}: weight ${w.name} has shape [${a.shape}] there, this model needs [${w.shape}]`);
    }
    model.setWeights(mine.map((w) => from(w) ?? w));
  } finally {
    source.dispose();
  }
}

/** Whether `a` and `w` are BatchNorm statistics per level ([levels, channels]) of as many channels. */
function isLevelStats(a: NamedArray, w: NamedArray): boolean {
  return /\.running_(mean|var)$/.test(w.name) && a.shape.length === 2 && w.shape.length === 2 && a.shape[1] === w.shape[1];
}

/**
 * Statistics for `levels` rows from a run with another number of levels (a throttleable backbone under a
 * spatial or skip network): its full-width row in each. Calibration after the first epoch replaces them.
 */
function fullWidthRows(a: NamedArray, levels: number): NamedArray {
  const c = a.shape[1];
  const top = a.data.subarray((a.shape[0] - 1) * c, a.shape[0] * c);
  const data = new Float32Array(levels * c);
  for (let r = 0; r < levels; r++) data.set(top, r * c);
  return { name: a.name, shape: [levels, c], data };
}

/** Test accuracy of each exit of an early-exit model on its own, at u = 1. */
function exitAccuracy(model: Network, test: Dataset['test']): number[] {
  const runner = EarlyExitRunner.freeze(model, 1);
  try {
    return exitTable(runner, test, 'confidence').correct.map((c) => c.reduce((a, b) => a + b, 0) / test.count);
  } finally {
    runner.dispose();
  }
}
