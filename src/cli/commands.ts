import { choiceOption, ms, numberOption, pct, si, table, uListOption, type Io } from './io.js';
import { trainingProgress } from './progress.js';
import { U_SCHEDULES, type USchedule } from '../train/schedule.js';
import { OPTIMIZERS } from '../train/optimizer.js';
import { LR_SCHEDULES } from '../train/schedule.js';
import { GATING_MODES } from '../gating/gating.js';
import { GATE_ESTIMATORS } from '../route/modes.js';
import { DynnError, StoppedError } from '../util/errors.js';
import type { Network } from '../models/network.js';
import type { SweepPoint } from '../eval/sweep.js';
import type { ExpertStats } from '../eval/routed.js';
import type { TrainMeta } from '../train/run.js';
import { exitInfo, scalingTrainOptions } from './scaling-commands.js';
import { intListOption } from './deploy-commands.js';
import { MODEL_ARG_FLAGS, kebab, type ModelArgFlag } from '../train/flags.js';
import type { ModelArgs } from '../models/types.js';

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
const DEFAULT_US = [0.125, 0.25, 0.5, 0.75, 1];

type Opts = Record<string, unknown>;

/** The model arguments of `dynn train`'s flags, read as `MODEL_ARG_FLAGS` says (absent flags are undefined). */
function modelArgsFrom(o: Opts): ModelArgs {
  const read = (key: string, how: ModelArgFlag) => {
    const v = o[key];
    if (how === 'text') return v === undefined ? undefined : String(v);
    if (how === 'switch') return v ? true : undefined;
    return how === 'int-list' ? intListOption(v, kebab(key)) : numberOption(v, kebab(key), how);
  };
  return Object.fromEntries(Object.entries(MODEL_ARG_FLAGS).map(([key, how]) => [key, read(key, how)]));
}

/** Options of `dynn train` (and `dynn demo`), as the trainer takes them. */
export function trainOptionsFrom(o: Opts) {
  if (o.vanilla && o.curriculum) throw new DynnError('--vanilla and --curriculum exclude each other');
  const schedule: USchedule | undefined = o.vanilla
    ? 'vanilla'
    : o.curriculum
      ? 'curriculum'
      : choiceOption(o.schedule, 'schedule', U_SCHEDULES);
  return {
    model: o.model as string | undefined,
    dataset: o.dataset as string | undefined,
    dataDir: o.dataDir as string | undefined,
    trainLimit: numberOption(o.trainLimit, 'train-limit', { int: true, min: 1 }),
    testLimit: numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }),
    validationSamples: numberOption(o.valSamples, 'val-samples', { int: true, min: 0 }),
    fullWidth: numberOption(o.fullWidth, 'full-width', { min: 0, max: 1 }),
    epochs: numberOption(o.epochs, 'epochs', { int: true, min: 1 }),
    batchSize: numberOption(o.batchSize, 'batch-size', { int: true, min: 1 }),
    optimizer: choiceOption(o.optimizer, 'optimizer', OPTIMIZERS),
    lr: numberOption(o.lr, 'lr', { min: Number.MIN_VALUE }),
    lrSchedule: choiceOption(o.lrSchedule, 'lr-schedule', LR_SCHEDULES),
    schedule,
    gating: choiceOption(o.gating, 'gating', GATING_MODES),
    seed: numberOption(o.seed, 'seed', { int: true }),
    workers: numberOption(o.workers, 'workers', { int: true, min: 0 }),
    engine: choiceOption(o.engine, 'engine', ENGINES),
    init: o.init === undefined ? undefined : String(o.init),
    modelArgs: modelArgsFrom(o),
    widthTarget: numberOption(o.widthTarget, 'width-target', { min: Number.MIN_VALUE, max: 1 }),
    flopsTarget: numberOption(o.flopsTarget, 'flops-target', { min: Number.MIN_VALUE, max: 1 }),
    skipTarget: numberOption(o.skipTarget, 'skip-target', { min: Number.MIN_VALUE, max: 1 }),
    // Its open range (0, 1) is checked with the training options.
    spatialTarget: numberOption(o.spatialTarget, 'spatial-target'),
    efficiencyWeight: numberOption(o.efficiencyWeight, 'efficiency-weight', { min: 0 }),
    pretrainEpochs: numberOption(o.pretrainEpochs, 'pretrain-epochs', { int: true, min: 0 }),
    gateThreshold: numberOption(o.gateThreshold, 'gate-threshold', { min: 0, max: 1 }),
    gateEstimator: choiceOption(o.gateEstimator, 'gate-estimator', GATE_ESTIMATORS),
    ...scalingTrainOptions(o),
  };
}

export async function trainCommand(o: Opts, io: Io): Promise<void> {
  const opts = trainOptionsFrom(o);
  if (!o.out) throw new DynnError('train needs --out DIR (the run directory)');
  const { train, TrainingStopped } = await import('../train/trainer.js');
  const { progressRecorder } = await import('../dashboard/progress.js');
  // A spatial gate's execution rate is of positions, a skipping gate's of blocks.
  const { mechanisms } = await import('../route/mechanisms.js');
  const dynamic = String(opts.modelArgs.dynamic);
  const spatial = mechanisms.has(dynamic) && mechanisms.get(dynamic).spatial === true;
  const progress = trainingProgress(io, spatial ? 'positions computed' : 'blocks executed');
  // RUN/progress.json lets `dynn dashboard` follow the run step by step.
  const recorder = progressRecorder(String(o.out));
  // Ctrl-C (or SIGTERM) stops training between steps (the run keeps its last checkpoint) and progress.json says
  // it stopped rather than training forever; a second signal ends the process at once.
  const stop = new AbortController();
  let signalled: NodeJS.Signals | null = null;
  let finished = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) process.exit(sig === 'SIGTERM' ? 143 : 130);
    signalled = sig;
    stop.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    let r: Awaited<ReturnType<typeof train>>;
    try {
      r = await train({
        ...opts,
        out: String(o.out),
        resume: Boolean(o.resume),
        force: Boolean(o.force),
        signal: stop.signal,
        onStep: (p) => {
          progress.onStep(p);
          recorder.onStep(p);
        },
        onEpoch: (e) => {
          finished++;
          progress.onEpoch(e);
          recorder.onEpoch(e);
        },
      });
    } catch (err) {
      progress.stop();
      await recorder.stop();
      if (!(err instanceof TrainingStopped)) throw err;
      // What the folder holds now: this command's last epoch, the run it resumed, the run it was to replace, or nothing.
      const kept = finished > 0
        ? `keeps its checkpoint of epoch ${err.epoch} (\`dynn train --out ${o.out} --resume\` continues it)`
        : o.resume
          ? `is as it was (\`dynn train --out ${o.out} --resume\` continues it)`
          : o.force
            ? 'still holds the run it was to replace: no epoch of the new one finished'
            : 'has no run: no epoch finished';
      if (o.json) io.out(JSON.stringify({ out: o.out, stopped: signalled, epochsTrained: finished }, null, 2) + '\n');
      throw new StoppedError(`train: ${signalled}: stopped; ${o.out} ${kept}`, signalled === 'SIGTERM' ? 143 : 130);
    }
    r.model.dispose();
    if (r.epochsTrained === 0) {
      // A resumed run that had already reached its epochs: its files, progress.json included, stay as they were.
      if (o.json) io.out(JSON.stringify({ out: o.out, epochsTrained: 0, meta: r.meta }, null, 2) + '\n');
      else io.out(`${o.out} is already complete (${r.meta.epoch} epochs, ${r.meta.dataset}); nothing to train — pass --epochs N (more than ${r.meta.epoch}) to train it further\n`);
      return;
    }
    await recorder.close();
    if (o.json) io.out(JSON.stringify({ out: o.out, epochsTrained: r.epochsTrained, meta: r.meta, removedStale: r.removedStale }, null, 2) + '\n');
    else {
      io.out(`saved ${o.out} (${r.meta.epoch} epoch${r.meta.epoch === 1 ? '' : 's'}, ${r.meta.dataset})\n`);
      // Two-step training may stop after its first step; say so, or the run reads as a trained dynamic network.
      const pretrain = Number(r.meta.options.pretrainEpochs ?? 0);
      if (pretrain > 0 && r.meta.epoch <= pretrain) io.out(`its gates have not trained yet: all ${r.meta.epoch} epochs were --pretrain-epochs ${pretrain} (the backbone alone); \`dynn train --out ${o.out} --resume --epochs N\` with N > ${pretrain} trains them\n`);
      if (r.removedStale.length) io.out(`removed the replaced run's ${r.removedStale.join(', ')} (made from its old weights)\n`);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    progress.stop();
  }
}

/** Per conditional convolution: its routing entropy and the class-by-expert table of mean mixing weights. */
function mixtureTables(stats: import('../eval/mixtures.js').MixtureStats, classNames: string[]): string {
  return stats.layers
    .map((l) => {
      const head = `\n${l.layer}: mean routing entropy ${l.meanEntropy.toFixed(3)} nats of at most ${l.maxEntropy.toFixed(3)} (log ${l.experts})\n`;
      const rows = l.perClass.map((w, c) => [classNames[c] ?? String(c), ...w.map((v) => v.toFixed(3))]);
      rows.push(['all', ...l.meanWeights.map((v) => v.toFixed(3))]);
      return head + table(['class', ...l.meanWeights.map((_, j) => `kernel ${j}`)], rows);
    })
    .join('');
}

/** The sweep table a person reads. */
function sweepTable(points: SweepPoint[]): string {
  return table(
    ['u', 'accuracy', 'FLOPs', 'FLOPs ratio', 'params', 'ms @1', 'ms @128'],
    points.map((p) => [p.u, pct(p.accuracy), si(p.flops), p.flopsRatio.toFixed(3), si(p.params), ms(p.latencyMs.batch1), ms(p.latencyMs.batch128)]),
  );
}

export async function sweepCommand(run: string, o: Opts, io: Io): Promise<void> {
  const given = uListOption(o.u);
  const us = given ?? DEFAULT_US;
  const { readCheckpointInfo } = await import('../checkpoint/checkpoint.js');
  if ((await readCheckpointInfo(run)).config.args.dynamic !== undefined) return gatedSweepCommand(run, o, io);
  if (o.thresholds !== undefined) return (await import('./scaling-commands.js')).exitSweepCommand(run, o, io);
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  const { sweep } = await import('../eval/sweep.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  try {
    // A network with no throttleable unit (SE, CondConv) runs whole at every u: one point says all.
    const fixed = model.blocks().length === 0;
    if (fixed && given?.some((u) => u !== 1)) throw new DynnError(`--u does not apply to ${model.config.model}: it has no throttleable unit, so every u runs the whole network`);
    const dataset = String(o.dataset ?? meta.dataset);
    const data = await loadDataset(dataset, { dataDir: o.dataDir as string | undefined, testLimit: numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }) });
    checkDataFits(model, data.test.height, data.test.width, data.test.channels, dataset);
    const gating = choiceOption(o.gating, 'gating', GATING_MODES);
    const points = sweep(model, data.test, fixed ? [1] : us, {
      gating,
      seed: numberOption(o.seed, 'seed', { int: true }),
      noLatency: o.latency === false,
      onPoint: (p) => {
        if (!o.json) io.err(`u=${p.u}: ${pct(p.accuracy)}\n`);
      },
    });
    // Dynamic parameters (CondConv): how each layer mixes its experts, overall and per class.
    const { hasMixtures, mixtureStats } = await import('../eval/mixtures.js');
    const routing = hasMixtures(model) ? mixtureStats(model, data.test) : undefined;
    if (o.json) {
      const out = { model: model.config.model, dataset, testSamples: data.test.count, gating: gating ?? 'nested', classNames: data.classNames, points, ...(routing ? { routing } : {}) };
      io.out(JSON.stringify(out, null, 2) + '\n');
    }
    else io.out(`${model.config.model} on ${dataset} (${data.test.count} test samples)\n` + sweepTable(points) + (routing ? mixtureTables(routing, data.classNames) : ''));
  } finally {
    model.dispose();
  }
}

/**
 * `dynn sweep` of a dynamic run: the gates' inference threshold swept (the trained one first), each point's
 * accuracy, executed FLOPs (mean, least, most) and latency, beside the backbone and the masked baseline.
 */
async function gatedSweepCommand(run: string, o: Opts, io: Io): Promise<void> {
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  const { routedSweep } = await import('../eval/routed.js');
  const { thresholdsOption } = await import('./scaling-commands.js');
  const { mechanisms } = await import('../route/mechanisms.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  try {
    const mixture = model.config.args.dynamic === 'moe';
    if (o.u !== undefined) {
      throw new DynnError(`--u does not apply to a dynamic run: ${mixture ? 'each sample runs its top-k experts; `dynn sweep RUN` gives its one operating point' : 'its gates choose per sample; sweep --thresholds instead'}`);
    }
    const trained = typeof meta.options.gateThreshold === 'number' ? meta.options.gateThreshold : 0.5;
    const given = thresholdsOption(o.thresholds)?.map((t) => {
      if (Array.isArray(t) || !(t >= 0 && t <= 1)) throw new DynnError(`--thresholds of a dynamic run are numbers in [0, 1], got ${Array.isArray(t) ? t.join(':') : t}`);
      return t;
    });
    // A mixture's experts do not depend on a threshold: one point, at the trained one.
    if (mixture && given) throw new DynnError('--thresholds does not apply to a mixture of experts: each sample runs its top-k experts whatever the threshold');
    const thresholds = mixture ? [trained] : [...new Set([trained, ...(given ?? [0.2, 0.35, 0.65, 0.8])])];
    const dataset = String(o.dataset ?? meta.dataset);
    const data = await loadDataset(dataset, { dataDir: o.dataDir as string | undefined, testLimit: numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }) });
    checkDataFits(model, data.test.height, data.test.width, data.test.channels, dataset);
    const s = routedSweep(model, data.test, thresholds, { noLatency: o.latency === false });
    const gates = await gatesInfo(model);
    if (o.json) {
      // Spatial gates: the positions each block computed on a few test images, for the report to draw.
      const masks = (await import('../eval/spatial.js')).spatialMasks(model, data.test, { threshold: trained });
      const out = { model: model.config.model, dynamic: model.config.args.dynamic, ...gates, dataset, testSamples: data.test.count, trainedThreshold: trained, classNames: data.classNames, ...s, ...(masks ? { masks } : {}) };
      io.out(JSON.stringify(out, null, 2) + '\n');
      return;
    }
    io.out(`${model.config.model} with ${String(model.config.args.dynamic)} gates on ${dataset} (${data.test.count} test samples); the backbone alone: ${pct(s.full.accuracy)}, ${ms(s.full.latencyMs.batch64)} ms @64\n`);
    io.out(`${gates.note}\n`);
    io.out(
      table(
        ['threshold', 'accuracy', 'FLOPs ratio', 'least', 'most', 'ms @1', 'ms @64'],
        s.points.map((p) => [p.threshold, pct(p.accuracy), p.flopsRatio.toFixed(3), p.flopsMin.toFixed(3), p.flopsMax.toFixed(3), ms(p.latencyMs.batch1), ms(p.latencyMs.batch64)]),
      ),
    );
    for (const p of s.points.slice(0, 1)) io.out(expertLines(p.experts, p.overflowRate));
    const masked = mechanisms.get(String(model.config.args.dynamic)).maskedWork ?? 'every channel computed';
    io.out(`masked (${masked}, then the mask) at threshold ${thresholds[0]}: ${ms(s.masked.latencyMs.batch64)} ms @64; the gates cost ${(100 * (s.points[0]?.gateShare ?? 0)).toFixed(1)}% of the backbone's FLOPs\n`);
  } finally {
    model.dispose();
  }
}

/** A mixture's expert load per block for a person: shares, CV, the most used expert's share and the overflow rate. */
export function expertLines(experts: Record<string, ExpertStats> | undefined, overflowRate: number | undefined): string {
  if (!experts) return '';
  const rows = Object.entries(experts).map(([block, e]) => [block, e.load.map((l) => (100 * l).toFixed(1)).join(' / '), e.cv.toFixed(3), pct(e.maxShare), pct(e.overflowRate)]);
  return `expert load per block (share of the assignments each expert ran), overflow ${pct(overflowRate ?? 0)} of the assignments:\n` + table(['block', 'load % by expert', 'CV', 'most used', 'overflow'], rows);
}

/** How a dynamic model's gates decide and run, for `info` and `sweep`: channel decisions run masked, and say so. */
async function gatesInfo(model: Network): Promise<{ decisions: string; execution: 'sliced' | 'masked'; note: string }> {
  const { decisionForms } = await import('../route/unit.js');
  const { WidthSwitch } = await import('../route/width.js');
  const sw = model.layers.find((l): l is InstanceType<typeof WidthSwitch> => l instanceof WidthSwitch);
  if (sw) {
    const widths = Array.from({ length: sw.routes }, (_, k) => `${sw.routeGroups(k)}`).join(', ');
    return { decisions: 'nested', execution: 'sliced', note: `a width switch after ${model.layers[model.layers.indexOf(sw) - 1].name}: each sample takes one of ${sw.routes} widths (${widths} of the groups) for the rest of the network, each width's samples run the sliced network as one batch` };
  }
  const decisions = String(model.config.args.decisions ?? 'nested');
  if (model.config.args.dynamic === 'moe') {
    const a = model.config.args;
    const note = `a mixture of ${a.experts} experts per block, top-${a.topK} (noisy in training), capacity factor ${a.capacityFactor} in training and ${a.evalCapacityFactor === undefined ? 'no limit' : a.evalCapacityFactor} at evaluation, overflow ${a.overflow}: each expert runs once per batch on the rows assigned to it`;
    return { decisions: 'top-k', execution: 'sliced', note };
  }
  const { WholeSwitch } = await import('../route/whole.js');
  const whole = model.layers.find((l): l is InstanceType<typeof WholeSwitch<never>> => l instanceof WholeSwitch);
  if (whole) {
    const routes = Array.from({ length: whole.routes }, (_, k) => whole.routeLabel(k)).join('; ');
    return { decisions, execution: 'sliced', note: `a switch at the input: each sample takes one of ${whole.routes} routes (${routes}), each run only on the samples that took it (the batch split by route)` };
  }
  const { SpatialResidualBlock } = await import('../route/spatial.js');
  if (model.layers.some((l) => l instanceof SpatialResidualBlock)) {
    return { decisions: 'positions', execution: 'sliced', note: 'spatial masks: each gated block computes only the output positions its gate selects (3x3 patches gathered, one matrix product per convolution, results scattered back; the other positions keep the shortcut); a skip rate is the fraction of a block\'s positions not computed' };
  }
  const masked = decisionForms.get(decisions).masked;
  const note = masked
    ? `${decisions} decisions, executed masked: every channel is computed, then multiplied by the decisions; FLOPs count only the channels on (as the paper reports), times are the masked ones`
    : `${decisions} decisions: skipped channels are not computed (the batch split by route, sliced convolutions)`;
  return { decisions, execution: masked ? 'masked' : 'sliced', note };
}

function checkDataFits(model: Network, h: number, w: number, c: number, dataset: string): void {
  const [mh, mw, mc] = model.inputShape;
  if (mh !== h || mw !== w || mc !== c) {
    throw new DynnError(`data set ${dataset} has ${h}x${w}x${c} images; the model takes ${mh}x${mw}x${mc}`);
  }
}

export async function infoCommand(run: string, o: Opts, io: Io): Promise<void> {
  const given = uListOption(o.u);
  const { loadRun } = await import('../train/run.js');
  const { initEngine } = await import('../engine/backend.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  try {
    // A network with one operating point (no throttleable block) has one row to show.
    const single = model.levelUtilizations().length === 1;
    const us = given ?? (single ? [1] : DEFAULT_US);
    const full = model.cost(1);
    const costs = us.map((u) => model.cost(u));
    const exits = await exitInfo(model);
    const dynamic = await dynamicInfo(run, model, meta);
    const info = {
      model: model.config.model,
      args: model.config.args,
      dataset: meta.dataset,
      epochs: meta.epoch,
      seed: meta.seed,
      dynnVersion: meta.dynnVersion,
      options: meta.options,
      parameters: model.trainableWeights().reduce((a, w) => a + w.variable.size, 0),
      blocks: model.blocks(),
      history: meta.history,
      cost: costs.map((c) => ({
        u: c.u,
        macs: c.macs,
        flops: c.flops,
        flopsRatio: c.flops / full.flops,
        params: c.params,
        layers: c.layers,
      })),
      ...(exits ? { exits: exits.exits } : {}),
      ...(model.gated ? { gates: await gatesInfo(model) } : {}),
      ...(dynamic ? { dynamic: dynamic.json } : {}),
    };
    if (o.json) {
      io.out(JSON.stringify(info, null, 2) + '\n');
      return;
    }
    io.out(
      `${info.model}  ${JSON.stringify(info.args)}\n` +
        `trained ${info.epochs} epoch(s) on ${info.dataset}, seed ${info.seed}, dynn ${info.dynnVersion}; ${si(info.parameters)} parameters\n` +
        (single
          ? 'throttleable blocks: none (one operating point: u does not change its compute)\n'
          : `throttleable blocks: ${info.blocks.map((b) => (b.kind === 'width' ? `${b.name} (D=${b.groups})` : `${b.name} (depth, stage ${b.stage})`)).join(', ')}\n`) +
        (info.gates ? `per-sample gates (${String(model.config.args.dynamic)}): ${info.gates.note}\n` : '') +
        '\n',
    );
    io.out(table(['u', 'MACs', 'FLOPs', 'FLOPs ratio', 'active params'], info.cost.map((c) => [c.u, si(c.macs), si(c.flops), c.flopsRatio.toFixed(3), si(c.params)])));
    const layerNames = costs[costs.length - 1].layers.filter((l) => l.macs > 0).map((l) => l.name);
    io.out(
      '\nFLOPs per layer\n' +
        table(['layer', ...us.map((u) => `u=${u}`)], layerNames.map((name) => [name, ...costs.map((c) => si(2 * (c.layers.find((l) => l.name === name)?.macs ?? 0)))])),
    );
    if (exits) io.out('\n' + exits.text);
    if (meta.history?.length) io.out('\ntraining history\n' + historyTable(meta));
    if (dynamic) io.out('\n' + dynamic.text);
  } finally {
    model.dispose();
  }
}

/** Text from a run's files for a terminal: control characters (escape sequences) shown as '?'. */
const plain = (text: string) => text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');

/**
 * What `dynn info` shows of a dynamic run: its mechanism, FLOPs target and the gates' share of the FLOPs,
 * and from its threshold sweep file, skip rates per block and compute per class at the trained threshold.
 * A missing or malformed sweep file is stated, with the command that makes it; the rest of the info stands.
 */
async function dynamicInfo(run: string, model: Network, meta: TrainMeta): Promise<{ json: Record<string, unknown>; text: string } | null> {
  const mechanism = model.config.args.dynamic;
  if (typeof mechanism !== 'string') return null;
  const path = await import('node:path');
  const { gateShare } = await import('../eval/routed.js');
  const { readDynamicSweep, blockSkips, classCompute, classRoutes, classSkips, expertTables, HISTOGRAM_BINS } = await import('../report/dynamic.js');
  const { RUN_FILES } = await import('../report/sources.js');
  const { mechanisms } = await import('../route/mechanisms.js');
  const o = meta.options;
  const trainedThreshold = typeof o.gateThreshold === 'number' ? o.gateThreshold : undefined;
  // Unrecorded training options took the mechanism's defaults.
  const entry = mechanisms.has(mechanism) ? mechanisms.get(mechanism) : undefined;
  const option = entry?.efficiency.option ?? 'flopsTarget';
  const target = typeof o[option] === 'number' ? (o[option] as number) : entry?.defaults.target;
  const efficiencyWeight = typeof o.efficiencyWeight === 'number' ? o.efficiencyWeight : entry?.defaults.efficiencyWeight;
  const share = gateShare(model);
  const file = path.join(run, RUN_FILES.sweep);
  let sweep = null;
  let missing: string | undefined;
  try {
    const r = await readDynamicSweep(file, { dir: run, model: model.config.model, mechanism, trainedThreshold, dataset: meta.dataset, numClasses: model.numClasses });
    if ('sweep' in r) sweep = r.sweep;
    else missing = r.missing;
  } catch (err) {
    if (!(err instanceof DynnError)) throw err;
    missing = err.message;
  }
  const json: Record<string, unknown> = { mechanism, [option]: target ?? null, efficiencyWeight: efficiencyWeight ?? null, trainedThreshold: trainedThreshold ?? 0.5, gateShare: share };
  const goal = entry?.fixedCost
    ? 'no FLOPs target (its cost is set by top-k)'
    : `${option === 'skipTarget' ? 'skip target (blocks executed)' : option === 'spatialTarget' ? 'spatial target (positions computed per block)' : 'FLOPs target'} ${target ?? '-'} (efficiency weight ${efficiencyWeight ?? '-'}), trained threshold ${trainedThreshold ?? 0.5}`;
  let text = `per-sample gates: ${mechanism}; ${goal}; the gates cost ${(100 * share).toFixed(1)}% of the backbone's FLOPs\n`;
  if (!sweep) {
    json.sweepMissing = missing;
    return { json, text: text + plain(missing ?? '') + '\n' };
  }
  const p = sweep.trained;
  const skips = blockSkips(p);
  const classes = classCompute(sweep, p);
  json.sweep = { file, dataset: sweep.dataset, testSamples: sweep.testSamples, threshold: p.threshold, accuracy: p.accuracy, flopsRatio: p.flopsRatio, flopsMin: p.flopsMin, flopsMax: p.flopsMax, skipRates: p.skipRates, classes };
  text +=
    `at threshold ${p.threshold} on ${sweep.testSamples} ${plain(sweep.dataset)} test samples (${plain(file)}): accuracy ${pct(p.accuracy)}, ` +
    `FLOPs ratio ${p.flopsRatio.toFixed(3)} (least ${p.flopsMin.toFixed(3)}, most ${p.flopsMax.toFixed(3)}); the backbone with no gate ${pct(sweep.full.accuracy)}\n`;
  text += `samples per FLOPs ratio ${HISTOGRAM_BINS.map((b, i) => `${b}: ${p.histogram[i]}`).join(', ')}\n`;
  // A spatial gate's groups are its block's output positions.
  const unit = option === 'spatialTarget' ? 'positions' : 'groups';
  if (skips.length) text += `\n${unit} skipped per gated block\n` + skipTable(skips);
  // Which blocks each class skips (per-class routes), when the sweep records them.
  const perClass = classSkips(sweep, p);
  if (perClass) {
    json.sweep = { ...(json.sweep as object), classSkipRates: p.classSkipRates };
    text += `\n${unit} skipped per class and block\n` + table(['class', ...perClass.blocks.map(plain)], perClass.classes.map((c) => [plain(c.name), ...c.skipped.map((s) => (Number.isFinite(s) ? pct(s) : '-'))]));
  }
  // Most compute first: which classes the gates spend on.
  const ranked = [...classes].sort((a, b) => (Number.isFinite(b.flopsRatio) ? b.flopsRatio : -1) - (Number.isFinite(a.flopsRatio) ? a.flopsRatio : -1));
  text += '\ncompute per class (most first)\n' + table(['class', 'FLOPs ratio', 'accuracy'], ranked.map((c) => [plain(c.name), Number.isFinite(c.flopsRatio) ? c.flopsRatio.toFixed(3) : '-', pct(c.accuracy)]));
  const mixtures = expertTables(sweep, p);
  if (mixtures.length) {
    json.experts = p.experts;
    json.overflowRate = p.overflowRate;
    text += '\n' + expertLines(p.experts, p.overflowRate);
    for (const m of mixtures) {
      text += `\nexperts each class ran at ${plain(m.block)} (share of its assignments)\n` + table(['class', ...m.load.map((_, e) => `e${e}`)], m.classes.map((c) => [plain(c.name), ...c.shares.map((v) => pct(v))]));
    }
  }
  const routes = mixtures.length ? [] : classRoutes(sweep, p);
  if (routes.length) json.routes = Object.fromEntries(routes.map((g) => [g.gate, g.classes]));
  for (const g of routes) {
    const head = Array.from({ length: g.routes }, (_, k) => routeLabel(model, g.gate, k));
    text += `\nroute each class took at ${plain(g.gate)} (share of its samples; cheapest first)\n` + table(['class', ...head], g.classes.map((c) => [plain(c.name), ...c.shares.map((v) => pct(v))]));
  }
  return { json, text };
}

/** A switch's route k as `info` names it (`vgg-w 8,8,16,16`, `14x14`), else `route k`. */
function routeLabel(model: Network, gate: string, k: number): string {
  const sw = model.layers.find((l) => l.name === gate) as { routeLabel?: (k: number) => string } | undefined;
  return sw?.routeLabel ? sw.routeLabel(k) : `route ${k}`;
}

/** Skip rates as a stage-by-block grid when every name is `stage.block` (resnet38: 3 x 6), else one row each. */
function skipTable(skips: { block: string; skipped: number }[]): string {
  const split = skips.map((s) => ({ ...s, at: s.block.lastIndexOf('.') }));
  if (split.some((s) => s.at <= 0)) return table(['block', 'skipped'], skips.map((s) => [plain(s.block), pct(s.skipped)]));
  const rows = [...new Set(split.map((s) => s.block.slice(0, s.at)))];
  const cols = [...new Set(split.map((s) => s.block.slice(s.at + 1)))];
  const rate = new Map(skips.map((s) => [s.block, s.skipped]));
  return table(['', ...cols.map(plain)], rows.map((r) => [plain(r), ...cols.map((c) => (rate.has(`${r}.${c}`) ? pct(rate.get(`${r}.${c}`)!) : ''))]));
}

function historyTable(meta: TrainMeta): string {
  const us = Object.keys(meta.history[0].testAccuracy);
  const gated = meta.history.some((h) => h.gated);
  // Rate targets (layer skipping): the execution rate training's sampled gates reported, and the deterministic one.
  const rates = meta.history.some((h) => h.gated?.trainExecutionRate !== undefined);
  const rate = (v: number | undefined) => (v === undefined ? '-' : v.toFixed(3));
  return table(
    ['epoch', 'loss', 'train acc', 'samples/s', 'ms/step', ...us.map((u) => `test u=${u}`), ...(gated ? ['gated', 'FLOPs ratio'] : []), ...(rates ? ['executed (training)', 'executed'] : [])],
    meta.history.map((h) => [
      h.epoch,
      h.loss.toFixed(4),
      pct(h.trainAccuracy),
      h.samplesPerSec.toFixed(0),
      h.msPerStep.toFixed(0),
      ...us.map((u) => pct(h.testAccuracy[u])),
      ...(gated ? [h.gated ? pct(h.gated.accuracy) : '-', h.gated ? h.gated.flopsRatio.toFixed(3) : '-'] : []),
      ...(rates ? [rate(h.gated?.trainExecutionRate), rate(h.gated?.executionRate)] : []),
    ]),
  );
}

/** The demo's epochs unless --epochs says otherwise (as its help in cli.ts says). */
const DEMO_EPOCHS = 2;

export async function demoCommand(o: Opts, io: Io): Promise<void> {
  const opts = trainOptionsFrom(o);
  const { train } = await import('../train/trainer.js');
  const { sweep } = await import('../eval/sweep.js');
  const us = uListOption(o.u) ?? DEFAULT_US;
  const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as typeof opts;
  const model = given.model ?? 'vgg-w';
  const dataset = given.dataset ?? 'mnist';
  const what = dataset === 'mnist' ? 'the embedded MNIST digits' : dataset;
  io.err(`dynn demo: training a throttleable ${model} on ${what} (u ~ U(0,1] per batch)\n`);
  const progress = trainingProgress(io);
  const t0 = performance.now();
  const r = await train({
    ...given,
    model,
    dataset,
    epochs: given.epochs ?? DEMO_EPOCHS,
    lr: given.lr ?? 2e-3,
    out: o.out as string | undefined,
    force: Boolean(o.force),
    evalUs: [1],
    onStep: progress.onStep,
    onEpoch: progress.onEpoch,
  });
  progress.stop();
  try {
    io.err(`trained in ${((performance.now() - t0) / 1000).toFixed(1)} s; measuring each operating point\n`);
    const points = sweep(r.model, r.dataset.test, us);
    if (o.json) io.out(JSON.stringify({ model, dataset, points }, null, 2) + '\n');
    else
      io.out(
        `\none network, many operating points (${r.dataset.test.count} ${dataset} test images; latency measured on this machine):\n` + sweepTable(points),
      );
  } finally {
    r.model.dispose();
  }
}

export async function modelsCommand(o: Opts, io: Io): Promise<void> {
  const { models } = await import('../models/zoo.js');
  const { mechanisms } = await import('../route/mechanisms.js');
  const rows = models.list().map((name) => ({ name, description: models.get(name).description, dynamic: models.get(name).dynamic === true }));
  if (o.json) {
    io.out(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  io.out(table(['model', 'description'], rows.map((r) => [r.dynamic ? `${r.name} (--dynamic)` : r.name, r.description])));
  io.out('\nper-sample mechanisms (dynn train --dynamic NAME)\n');
  io.out(table(['mechanism', 'description'], mechanisms.list().map((m) => [m, mechanisms.get(m).description])));
}
