import { promises as fsp } from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { CommandModule } from './types.js';
import { choiceOption, ms, numberOption, si, table, uListOption, type Io } from './io.js';
import { DynnError } from '../util/errors.js';
import type { OnnxMetadata } from '../export/metadata.js';
import type { GatingMode } from '../gating/gating.js';
import type { LatencyTable } from '../runtime/profile.js';

type Opts = Record<string, unknown>;

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;

/** Parses a comma-separated list of positive integers (batch sizes). */
export function intListOption(value: unknown, name: string): number[] | undefined {
  if (value === undefined) return undefined;
  const parts = String(value).split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw new DynnError(`--${name} needs a comma-separated list of positive integers`);
  return parts.map((p) => {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 1) throw new DynnError(`--${name}: ${p} is not a positive integer`);
    return n;
  });
}

/** The class names of a run's data set, or null when the data set cannot be opened here. */
async function datasetClassNames(dataset: string, numClasses: number): Promise<string[] | null> {
  try {
    const { loadDataset } = await import('../data/datasets.js');
    const data = await loadDataset(dataset, { trainLimit: 1, testLimit: 1 });
    return data.classNames.length === numClasses ? data.classNames : null;
  } catch {
    return null;
  }
}

function levelsTable(meta: OnnxMetadata): string {
  return table(
    ['u', 'level', 'min u', 'FLOPs', 'FLOPs ratio', 'params'],
    meta.levels.map((l) => [Number(l.u.toFixed(4)), l.level, Number(l.minU.toFixed(4)), si(l.flops), l.flopsRatio.toFixed(3), si(l.params)]),
  );
}

/**
 * Refuses an `--onnx` target that is a folder (a file path is expected) or an existing file without
 * `force`, before anything heavy is loaded.
 */
async function checkOnnxTarget(file: string, force: boolean): Promise<void> {
  if (/[\\/]$/.test(file)) throw new DynnError(`--onnx ${file} names a folder; give the file to write, e.g. ${path.join(file, 'model.onnx')}`);
  let stat: import('node:fs').Stats;
  try {
    stat = await fsp.stat(file);
  } catch {
    return;
  }
  if (stat.isDirectory()) throw new DynnError(`--onnx ${file} is a folder; give the file to write, e.g. ${path.join(file, 'model.onnx')}`);
  const { isCheckpointFile } = await import('../checkpoint/checkpoint.js');
  if (isCheckpointFile(file)) throw new DynnError(`--onnx ${file} is a file of the run in ${path.dirname(file)}; export to another file (e.g. ${path.join(path.dirname(file), 'model.onnx')})`);
  if (!force) throw new DynnError(`${file} exists; pass --force to overwrite it`);
}

/** `dynn export RUN --onnx FILE [--levels LIST] [--force]`. */
export async function exportCommand(run: string, o: Opts, io: Io): Promise<void> {
  if (!o.onnx || typeof o.onnx !== 'string') throw new DynnError('export needs --onnx FILE (the ONNX file to write)');
  // A folder is the target of a dynamic run (export by segments), which only the run itself tells apart.
  const folder = /[\\/]$/.test(o.onnx) || (await fsp.stat(o.onnx).catch(() => null))?.isDirectory() === true;
  if (!folder) await checkOnnxTarget(o.onnx, o.force === true);
  const levels = uListOption(o.levels, 'levels');
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { saveOnnx } = await import('../export/export.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  if (model.gated) {
    try {
      await exportDynamic(model, meta, o as Opts & { onnx: string }, io);
    } finally {
      model.dispose();
    }
    return;
  }
  if (folder) {
    model.dispose();
    await checkOnnxTarget(o.onnx, o.force === true);
  }
  let policy: import('../control/policy.js').Policy | undefined;
  try {
    if (o.controller !== undefined) {
      const { loadController } = await import('../control/store.js');
      policy = (await loadController(String(o.controller), model, run)).policy;
    }
    const classNames = (await datasetClassNames(meta.dataset, model.numClasses)) ?? undefined;
    const gating = (meta.options?.gating as GatingMode | undefined) ?? 'nested';
    // A policy stored by `dynn fit-exits --save` becomes the runtime's default exit policy.
    const stored = (meta as { exitPolicy?: { rule: string; thresholds: number[] } }).exitPolicy;
    const exitPolicy = stored ? { rule: stored.rule, thresholds: stored.thresholds } : undefined;
    const { isTemporal, TemporalController } = await import('../control/temporal.js');
    // A temporal controller plans the next frame from this one's scores; a stream starts where TF.js's does.
    const temporal = policy && isTemporal(policy) ? { start: new TemporalController(policy).start, ...(policy.resolutions && { resolutions: policy.resolutions }) } : undefined;
    const controller = policy ? { network: policy.net, actions: policy.actions, ...(temporal ? { temporal } : {}) } : undefined;
    const metadata = await saveOnnx(model, o.onnx, { levels, classNames, gating, controller, exitPolicy });
    if (o.json) io.out(JSON.stringify({ onnx: o.onnx, metadata }, null, 2) + '\n');
    else {
      const parts = [`${metadata.levels.length} levels`];
      const ex = metadata.exits;
      if (ex) parts.push(`${ex.count} exits ${ex.inGraph ? `in one run, the ${ex.inGraph.rule} rule in the graph` : 'run stage by stage'}${ex.policy ? ` (default policy: ${ex.policy.rule} ${ex.policy.thresholds.join(':')})` : ''}`);
      const rs = metadata.controller?.temporal?.resolutions;
      const over = rs ? `(u, r) = ${metadata.controller!.actions.map((u, k) => `(${u}, ${rs[k]})`).join(', ')}` : `u = ${metadata.controller?.actions.join(', ')}`;
      if (metadata.controller) parts.push(`a${metadata.controller.temporal ? ' temporal' : ''} controller over ${over} (FLOPs ratio ${metadata.controller.flopsRatio.toFixed(4)})`);
      io.out(levelsTable(metadata) + `wrote ${o.onnx} (${metadata.model.model}, ${parts.join(', ')}; input images NCHW [batch, ${metadata.input.shape.join(', ')}] and scalar u)\n`);
    }
  } finally {
    policy?.dispose();
    model.dispose();
  }
}

/** `dynn export` of a run with per-sample gates: a folder of segment graphs and their manifest. */
async function exportDynamic(model: import('../models/network.js').Network, meta: import('../train/meta.js').TrainMeta, o: Opts & { onnx: string }, io: Io): Promise<void> {
  if (o.levels !== undefined || o.controller !== undefined) {
    throw new DynnError(`--levels and --controller do not apply to a dynamic run: its gates choose each sample's width inside the network`);
  }
  if (/\.onnx$/i.test(o.onnx.replace(/[\\/]+$/, ''))) {
    throw new DynnError(`${model.config.model} with ${String(model.config.args.dynamic)} gates exports by segments to a folder; --onnx ${o.onnx} names a file: give a folder name, e.g. ${o.onnx.replace(/\.onnx[\\/]*$/i, '')}`);
  }
  const { saveSegments } = await import('../export/segments.js');
  const classNames = (await datasetClassNames(meta.dataset, model.numClasses)) ?? undefined;
  const threshold = typeof meta.options.gateThreshold === 'number' ? meta.options.gateThreshold : 0.5;
  const manifest = await saveSegments(model, o.onnx, { classNames, threshold, force: o.force === true });
  if (o.json) io.out(JSON.stringify({ onnx: o.onnx, manifest }, null, 2) + '\n');
  else {
    const gated = manifest.segments.filter((s) => s.kind === 'gated').length;
    const switches = manifest.segments.flatMap((s) => (s.kind === 'switch' ? [`a switch (${s.name}) of a gate and ${s.routes.length} route graphs`] : []));
    const mixtures = manifest.segments.flatMap((s) =>
      s.kind === 'moe' ? [`a mixture (${s.name}) of a router and ${s.experts} expert graphs`] : s.kind === 'plain' ? (s.mixtures ?? []).map((mx) => `a mixture (${mx.name}) of ${mx.experts} experts dispatched inside its graph`) : [],
    );
    const spatial = manifest.segments.filter((s) => s.kind === 'spatial').length;
    const parts = [...(gated || !(switches.length + mixtures.length + spatial) ? [`${gated} gated blocks each a gate and a body graph`] : []), ...(spatial ? [`${spatial} spatially gated blocks each one graph`] : []), ...switches, ...mixtures].join(', ');
    io.out(`wrote ${o.onnx}/ (${manifest.model.model} with ${String(model.config.args.dynamic)} gates: ${manifest.segments.length} segment${manifest.segments.length === 1 ? '' : 's'}, ${parts}, threshold ${threshold}; serve it with \`dynn serve ${o.onnx}\`)\n`);
  }
}

function latencyRows(t: LatencyTable): string {
  return table(
    ['u', 'level', 'FLOPs ratio', ...t.batches.flatMap((b) => [`ms @${b}`, `ratio @${b}`])],
    t.levels.map((l) => {
      const top = t.levels[t.levels.length - 1];
      return [
        Number(l.u.toFixed(4)),
        l.level,
        l.flopsRatio.toFixed(3),
        ...t.batches.flatMap((b) => [ms(l.latencyMs[String(b)]), (l.latencyMs[String(b)] / top.latencyMs[String(b)]).toFixed(3)]),
      ];
    }),
  );
}

/** `dynn profile MODEL [--batches LIST] [--reps N]`. */
export async function profileCommand(file: string, o: Opts, io: Io): Promise<void> {
  const batches = intListOption(o.batches, 'batches') ?? [1, 64];
  const reps = numberOption(o.reps, 'reps', { int: true, min: 1 }) ?? 20;
  const warmup = numberOption(o.warmup, 'warmup', { int: true, min: 0 }) ?? 3;
  if ((await fsp.stat(file).catch(() => null))?.isDirectory()) {
    throw new DynnError(`${file} is a folder (a dynamic model exported by segments, or not a model): profile measures the levels of one ONNX file; a dynamic model's time depends on the routes its inputs take (dynn sweep RUN times it per threshold)`);
  }
  const { OnnxModel, defaultThreads, MAX_THREADS } = await import('../runtime/node.js');
  const { checkProfileOptions, profileModel, saveLatencyTable } = await import('../runtime/profile.js');
  const threads = numberOption(o.threads, 'threads', { int: true, min: 1 }) ?? defaultThreads();
  if (threads > MAX_THREADS) throw new DynnError(`--threads must be at most ${MAX_THREADS}, got ${threads}`);
  // Before loading: the batch bound needs no model; the input-size bound is checked again once the shape is known.
  checkProfileOptions({ batches, reps, warmup });
  const model = await OnnxModel.load(file, { threads });
  let bar: cliProgress.SingleBar | null = null;
  try {
    if (io.errIsTTY) {
      bar = new cliProgress.SingleBar({ format: 'profiling [{bar}] {value}/{total} level x batch', stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic);
      bar.start(model.levels.length * batches.length, 0);
    }
    const t = await profileModel(model, { batches, reps, warmup, threads, onStep: (done) => bar?.update(done) });
    bar?.stop();
    const saved = await saveLatencyTable(file, t);
    if (o.json) io.out(JSON.stringify(t, null, 2) + '\n');
    else io.out(latencyRows(t) + `saved ${saved} (median of ${reps} runs, ${threads} threads)\n`);
  } finally {
    bar?.stop();
    await model.dispose();
  }
}

/** The deployment commands: export, profile. */
export const deployCommands: CommandModule = (cli, io) => {
  cli
    .command('export <run>', 'write a trained run as one ONNX model with a utilization input u (an If chain over its levels); a run with per-sample gates as a folder of segment graphs')
    .option('--onnx <file>', 'the ONNX file to write (required; written atomically); the folder, for a dynamic run')
    .option('--force', 'overwrite the --onnx file if it exists')
    .option('--levels <list>', 'utilizations whose levels to export, e.g. 0.25,0.5,0.75,1 [default: every level]')
    .option('--controller <dir>', 'also export this controller (from `dynn controller train`, or --temporal: it then plans each next frame from this one): the whole adaptive model runs in ONNX Runtime')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu (only reads the weights)')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn export runs/fm-vgg --onnx fm-vgg.onnx --levels 0.25,0.5,0.75,1')
    .example('dynn export runs/fm-vgg --onnx fm-adaptive.onnx --controller runs/fm-ctrl')
    .action(async (run, o) => exportCommand(run, o, io));

  cli
    .command('profile <model>', 'measure ONNX Runtime latency per level and batch size here; stores <model>.profile.json')
    .option('--batches <list>', 'batch sizes [default: 1,64]')
    .option('--reps <n>', 'timed runs per level and batch; the median is kept [default: 20]')
    .option('--warmup <n>', 'untimed runs first [default: 3]')
    .option('--threads <n>', 'ONNX Runtime intra-op threads [default: the core count]')
    .option('--json', 'print the latency table as JSON')
    .example('dynn profile fm-vgg.onnx --batches 1,64 --json')
    .action(async (model, o) => profileCommand(model, o, io));
};
