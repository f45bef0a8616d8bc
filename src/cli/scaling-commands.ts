import type { CAC } from 'cac';
import { choiceOption, ms, numberOption, pct, si, table, uListOption, type Io } from './io.js';
import { DynnError } from '../util/errors.js';
import type { CommandModule } from './types.js';
import type { ExitSweep } from '../scaling/exit-sweep.js';
import type { ExitOutcome } from '../scaling/budget.js';
import type { Network } from '../models/network.js';

type Opts = Record<string, unknown>;

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
const GATINGS = ['nested', 'independent'] as const;
const RULES = ['entropy', 'confidence'] as const;

/** A comma-separated list of non-negative numbers. */
function numberList(value: unknown, name: string): number[] | undefined {
  if (value === undefined) return undefined;
  const parts = String(value).split(',').map((s) => s.trim()).filter(Boolean);
  const nums = parts.map(Number);
  if (!parts.length || nums.some((n) => !Number.isFinite(n) || n < 0)) {
    throw new DynnError(`--${name} needs a comma-separated list of non-negative numbers, got ${JSON.stringify(value)}`);
  }
  return nums;
}

/** The scaling fields of `dynn train`'s options, as the trainer takes them. */
export function scalingTrainOptions(o: Opts) {
  return {
    sandwichWidths: numberOption(o.sandwichWidths, 'sandwich-widths', { int: true, min: 0 }),
    inplaceDistill: o.inplaceDistill === false ? false : undefined,
    inplaceAlpha: numberOption(o.inplaceAlpha, 'inplace-alpha', { min: 0, max: 1 }),
    teacher: o.teacher === undefined ? undefined : String(o.teacher),
    distillAlpha: numberOption(o.distillAlpha, 'distill-alpha', { min: 0, max: 1 }),
    distillT: numberOption(o.distillT, 'distill-t', { min: Number.MIN_VALUE }),
    exitWeights: numberList(o.exitWeights, 'exit-weights'),
  };
}

/**
 * Exit thresholds: a comma-separated list of settings, each one number for every exit or one number per
 * intermediate exit joined by ':' (`0.2,0.5,0.1:0.3:0.6`).
 */
export function thresholdsOption(value: unknown): (number | number[])[] | undefined {
  if (value === undefined) return undefined;
  const parts = String(value).split(',').map((s) => s.trim()).filter(Boolean);
  if (!parts.length) throw new DynnError('--thresholds needs a comma-separated list of numbers');
  return parts.map((p) => {
    const nums = p.split(':').map(Number);
    if (nums.some((n) => !Number.isFinite(n))) throw new DynnError(`--thresholds: ${p} is not a number (or numbers joined by ':')`);
    return nums.length === 1 ? nums[0] : nums;
  });
}

/** The commands of width and depth scaling: calibrate and fit-exits (threshold sweeps go through `dynn sweep`). */
export const scalingCommands: CommandModule = (cli: CAC, io: Io) => {
  cli
    .command('calibrate <run>', 'recompute the BatchNorm statistics of the given widths from training data and store them in the checkpoint')
    .option('--u <list>', 'utilizations to calibrate (required)')
    .option('--dataset <name>', 'data set whose training split is used [default: the run’s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--samples <n>', 'training samples per utilization [default: 2048]')
    .option('--gating <mode>', 'nested or independent [default: nested]')
    .option('--seed <n>', 'seed of independent gating choices [default: the run’s]')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn calibrate runs/fm-slim --dataset fashion-mnist --u 0.3,0.45,0.6')
    .action((run: string, o: Opts) => calibrateCommand(run, o, io));

  cli
    .command('fit-exits <run>', 'fit early-exit thresholds on the run’s validation split so the mean cost meets a budget')
    .option('--budget <list>', 'mean FLOPs relative to the last exit alone, one fit per value (required)')
    .option('--rule <name>', 'entropy or confidence [default: entropy]')
    .option('--u <x>', 'backbone utilization [default: 1]')
    .option('--dataset <name>', 'data set [default: the run’s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--test-limit <n>', 'use the first N test samples')
    .option('--save', 'store the (last) fitted policy in the checkpoint’s metadata')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn fit-exits runs/fm-exits --budget 0.5,0.6')
    .action((run: string, o: Opts) => fitExitsCommand(run, o, io));
};

async function calibrateCommand(run: string, o: Opts, io: Io): Promise<void> {
  const us = uListOption(o.u);
  if (!us) throw new DynnError('calibrate needs --u LIST (the widths whose statistics are recomputed)');
  const samples = numberOption(o.samples, 'samples', { int: true, min: 1 });
  const seed = numberOption(o.seed, 'seed', { int: true });
  const gating = choiceOption(o.gating, 'gating', GATINGS);
  const { initEngine } = await import('../engine/backend.js');
  const { calibrateRun } = await import('../scaling/calibrate.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const r = await calibrateRun(run, { us, dataset: o.dataset as string | undefined, dataDir: o.dataDir as string | undefined, samples, gating, seed });
  if (o.json) io.out(JSON.stringify({ run, us, ...r }, null, 2) + '\n');
  else io.out(`calibrated ${run}: u ${us.join(', ')} (levels ${r.levels.join(', ')}), ${r.rows} statistic rows from ${r.samples} ${r.dataset} training samples each\n`);
}

/** Loads a run and its data set for the exit commands; the caller disposes the model. */
async function loadForExits(run: string, o: Opts) {
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  const testLimit = numberOption(o.testLimit, 'test-limit', { int: true, min: 1 });
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  try {
    const dataset = String(o.dataset ?? meta.dataset);
    const sameData = dataset === meta.dataset;
    const data = await loadDataset(dataset, {
      dataDir: o.dataDir as string | undefined,
      testLimit,
      trainLimit: sameData ? (meta.options?.trainLimit as number | undefined) : undefined,
      seed: meta.seed,
    });
    const { height, width, channels } = data.test;
    if ([height, width, channels].join() !== model.inputShape.join()) {
      throw new DynnError(`data set ${dataset} has ${height}x${width}x${channels} images; the model takes ${model.inputShape.join('x')}`);
    }
    return { model, meta, data, dataset };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/** One utilization from `--u` (the exit commands run one backbone width). */
function singleU(o: Opts): number {
  const us = uListOption(o.u) ?? [1];
  if (us.length !== 1) throw new DynnError('with --thresholds, --u takes one utilization (the backbone width)');
  return us[0];
}

/** `dynn sweep RUN --thresholds ...` on an early-exit model: accuracy, FLOPs, exit shares and batch time per threshold. */
export async function exitSweepCommand(run: string, o: Opts, io: Io): Promise<void> {
  const thresholds = thresholdsOption(o.thresholds)!;
  const rule = choiceOption(o.rule, 'rule', RULES) ?? 'entropy';
  const u = singleU(o);
  const gating = choiceOption(o.gating, 'gating', GATINGS);
  const { sweepExits } = await import('../scaling/exit-sweep.js');
  const { model, data, dataset } = await loadForExits(run, o);
  try {
    const s = sweepExits(model, data.test, thresholds, {
      rule,
      u,
      gating,
      noLatency: o.latency === false,
      onPoint: (p) => {
        if (!o.json) io.err(`threshold ${thresholdText(p.threshold)}: ${pct(p.accuracy)}, FLOPs ratio ${p.flopsRatio.toFixed(3)}\n`);
      },
    });
    if (o.json) io.out(JSON.stringify({ model: model.config.model, dataset, testSamples: data.test.count, ...s }, null, 2) + '\n');
    else io.out(`${model.config.model} on ${dataset} (${data.test.count} test samples), rule ${rule}, u = ${u}\n` + exitSweepTable(s));
  } finally {
    model.dispose();
  }
}

const thresholdText = (t: number | number[]) => (Array.isArray(t) ? t.join(':') : String(t));

function exitSweepTable(s: ExitSweep): string {
  const head = ['threshold', 'accuracy', 'FLOPs', 'FLOPs ratio', 'exit shares', 'ms @256'];
  const rows: (string | number)[][] = [
    ['last exit alone', pct(s.baseline.accuracy), si(s.baseline.flops), '1.000', '-', ms(s.baseline.latencyMs.batch256)],
    ...s.points.map((p) => [
      thresholdText(p.threshold),
      pct(p.accuracy),
      si(p.flops),
      p.flopsRatio.toFixed(3),
      p.exitShares.map((x) => (100 * x).toFixed(0)).join('/'),
      ms(p.latencyMs.batch256),
    ]),
  ];
  return table(head, rows) + `accuracy of each exit alone: ${s.exitAccuracy.map(pct).join(', ')}\n`;
}

async function fitExitsCommand(run: string, o: Opts, io: Io): Promise<void> {
  const budgets = numberList(o.budget, 'budget');
  if (!budgets) throw new DynnError('fit-exits needs --budget LIST (mean FLOPs relative to the last exit alone)');
  const rule = choiceOption(o.rule, 'rule', RULES) ?? 'entropy';
  const u = singleU(o);
  const { validationSplit } = await import('../train/run.js');
  const { exitTable, fitThresholds, simulateExits } = await import('../scaling/budget.js');
  const { EarlyExitRunner } = await import('../scaling/runner.js');
  const { exitCount } = await import('../models/exits.js');
  const { model, meta, data, dataset } = await loadForExits(run, o);
  try {
    if (exitCount(model) < 2) throw new DynnError(`model ${model.config.model} has no early exits`);
    if (dataset !== meta.dataset) throw new DynnError(`the validation split is part of ${meta.dataset}; fit on the run's own data set`);
    const val = validationSplit(meta, data.train);
    const runner = EarlyExitRunner.freeze(model, u);
    let fits: { budget: number; family: string; validation: ExitOutcome; test: ExitOutcome }[];
    try {
      const valTable = exitTable(runner, val, rule);
      const testTable = exitTable(runner, data.test, rule);
      fits = budgets.map((budget) => {
        const f = fitThresholds(valTable, rule, budget);
        return { budget, family: f.family, validation: simulateExits(valTable, rule, f.thresholds), test: simulateExits(testTable, rule, f.thresholds) };
      });
    } finally {
      runner.dispose();
    }
    if (o.save) {
      const { loadCheckpoint, saveCheckpoint } = await import('../checkpoint/checkpoint.js');
      const ckpt = await loadCheckpoint(run);
      const last = fits[fits.length - 1];
      const exitPolicy = { rule, u, budget: last.budget, thresholds: last.validation.thresholds };
      await saveCheckpoint(run, { ...ckpt, meta: { ...ckpt.meta, exitPolicy } });
    }
    if (o.json) {
      io.out(JSON.stringify({ model: model.config.model, dataset, rule, u, validationSamples: val.count, fits }, null, 2) + '\n');
      return;
    }
    io.out(
      `${model.config.model} on ${dataset}: thresholds fitted on ${val.count} validation samples, rule ${rule}, u = ${u}\n` +
        table(
          ['budget', 'thresholds', 'val acc', 'val FLOPs ratio', 'test acc', 'test FLOPs ratio', 'test exit shares'],
          fits.map((f) => [
            f.budget,
            f.validation.thresholds.map((t) => t.toPrecision(4)).join(':'),
            pct(f.validation.accuracy),
            f.validation.flopsRatio.toFixed(3),
            pct(f.test.accuracy),
            f.test.flopsRatio.toFixed(3),
            f.test.exitShares.map((x) => (100 * x).toFixed(0)).join('/'),
          ]),
        ) +
        (o.save ? `saved the policy for budget ${fits[fits.length - 1].budget} in ${run}\n` : ''),
    );
  } finally {
    model.dispose();
  }
}

/** Early-exit models: where each exit sits and what leaving there costs at u = 1, for `dynn info` (null otherwise). */
export async function exitInfo(model: Network) {
  const { exitSegments, exitCosts } = await import('../models/exits.js');
  const { segments, heads } = exitSegments(model);
  if (heads.length === 0) return null;
  const full = model.cost(1).flops;
  const exits = exitCosts(model, model.plan(1)).map((c, k) => ({
    exit: k + 1,
    after: segments[k][segments[k].length - 1]?.name ?? 'input',
    headFlops: c.headFlops,
    cumulativeFlops: c.cumulativeFlops,
    cumulativeRatio: c.cumulativeFlops / full,
  }));
  const text =
    'early exits at u = 1 (FLOPs of leaving there, exit classifiers passed included)\n' +
    table(['exit', 'after', 'classifier FLOPs', 'FLOPs to leave', 'ratio'], exits.map((e) => [e.exit, e.after, si(e.headFlops), si(e.cumulativeFlops), e.cumulativeRatio.toFixed(3)]));
  return { exits, text };
}
