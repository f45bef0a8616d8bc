import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { CONTROLLER_KIND, GATES_KIND, readCheckpointInfo, trainedModelArgs } from '../checkpoint/checkpoint.js';
import type { TrainMeta } from '../train/run.js';
import type { EngineName } from '../engine/backend.js';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { commandLine, trainCommandLine } from './commands.js';
import { RUN_FILES } from '../train/run-files.js';
import { DYNAMIC_SWEEP_WHAT, parseDynamicSweep, readJsonFile } from './dynamic.js';
import type { ControllerEvalData, ExitData, GatesEvalData, OnnxLatencyData, RunData, SweepData } from './types.js';

export { RUN_FILES };

/** The config.model tags of checkpoints that belong to a run rather than being one (src/control/store.ts). */
const COMPANION_KINDS = { controller: CONTROLLER_KIND, gates: GATES_KIND } as const;

/** Options of `gatherRuns`. */
export interface GatherOptions {
  /** Run a sweep for runs without `RUN/sweep.json` (default true); false leaves those runs without one. */
  sweep?: boolean;
  /** Utilizations of the sweeps run here (default: one per level of the model, at most 16 levels, else 8). */
  us?: number[];
  /** Data set of the sweeps run here (default: each run's own). */
  dataset?: string;
  dataDir?: string;
  /** Evaluate on the first N test samples only. */
  testLimit?: number;
  /** Measure latency in the sweeps run here (default true). */
  latency?: boolean;
  /** Save each sweep run here as `RUN/sweep.json`, so the next report reads it. */
  saveSweep?: boolean;
  /** Tensor engine for the sweeps (default 'auto'). */
  engine?: EngineName | 'auto';
  /** Progress messages (one line each). */
  onProgress?: (message: string) => void;
  /**
   * A malformed `RUN/sweep.json` is stated where its charts would be instead of failing (the dashboard's
   * run pages); default false: a DynnError naming the file.
   */
  lenient?: boolean;
}

const nullableNumber = z.number().nullable().transform((x) => x ?? NaN);

const sweepSchema = z.object({
  model: z.string().optional(),
  dataset: z.string(),
  testSamples: z.number().int().positive().optional(),
  gating: z.string().optional(),
  classNames: z.array(z.string()).optional(),
  command: z.string().optional(),
  points: z
    .array(
      z.object({
        u: z.number().gt(0).lte(1),
        accuracy: z.number().min(0).max(1),
        perClassAccuracy: z.array(nullableNumber),
        flops: z.number().nonnegative(),
        flopsRatio: z.number().nonnegative(),
        params: z.number().nonnegative(),
        latencyMs: z.object({ batch1: nullableNumber, batch128: nullableNumber }),
      }),
    )
    .min(1),
  /** Conditional convolutions' routing statistics (`dynn sweep` of a dynamic-parameter model). */
  routing: z
    .object({
      count: z.number().int().nonnegative(),
      layers: z.array(
        z.object({
          layer: z.string(),
          experts: z.number().int().positive(),
          meanEntropy: z.number(),
          maxEntropy: z.number(),
          meanWeights: z.array(z.number()),
          perClass: z.array(z.array(nullableNumber)),
        }),
      ),
    })
    .optional(),
});

const histogram = z.record(z.string(), z.number().nonnegative());
// What `dynn compare` ranks: accuracies in [0, 1], FLOPs ratios >= 0 (a negative ratio would win every budget).
const accuracy = z.number().min(0).max(1);
const ratio = z.number().nonnegative();
const controllerReportSchema = z.object({
  accuracy,
  meanU: z.number(),
  meanFlopsRatio: ratio,
  uHistogram: histogram,
  fixed: z.array(z.object({ u: z.number(), accuracy, flopsRatio: ratio })),
  oracle: z.object({
    accuracy,
    meanU: z.number(),
    meanFlopsRatio: ratio,
    uHistogram: histogram.optional(),
    curve: z.array(z.object({ accuracy, flopsRatio: ratio })).min(1).optional(),
  }),
});

/** What `dynn eval --json` adds around the controller report: which controller, on which samples. */
const evalFileSchema = controllerReportSchema.extend({
  controller: z.string().max(200).optional(),
  dataset: z.string().max(200).optional(),
  split: z.string().max(20).optional(),
  samples: z.number().int().positive().optional(),
});

const exitSweepSchema = z.object({
  dataset: z.string(),
  testSamples: z.number().int().positive().optional(),
  rule: z.string(),
  u: z.number(),
  exitAccuracy: z.array(accuracy),
  baseline: z.object({ accuracy, flops: ratio }),
  points: z
    .array(z.object({ threshold: z.union([z.number(), z.array(z.number())]), accuracy, flops: ratio, flopsRatio: ratio, exitShares: z.array(z.number()) }))
    .min(1),
});

const gatesEvalSchema = z.object({
  gates: z.string().optional(),
  dataset: z.string(),
  split: z.string(),
  points: z
    .array(
      z.object({
        u: z.number(),
        complexity: z.number(),
        flopsRatio: z.number(),
        accuracy: z.number(),
        nested: z.object({ accuracy: z.number(), flopsRatio: z.number() }),
      }),
    )
    .min(1),
});

const latencyTableSchema = z.object({
  batches: z.array(z.number().int().positive()).min(1),
  host: z.object({ threads: z.number().int().positive() }),
  levels: z.array(z.object({ u: z.number(), flopsRatio: z.number(), latencyMs: z.record(z.string(), z.number()) })).min(1),
});

const gatesMetaSchema = z.object({
  options: z.object({ method: z.string().optional() }).passthrough().optional(),
  pattern: z.array(z.object({ u: z.number(), complexity: z.number(), blocks: z.record(z.string(), z.number()) })).min(1),
  run: z.object({ path: z.string(), model: z.string() }),
});

const controllerMetaSchema = z.object({
  validation: controllerReportSchema.optional(),
  run: z.object({ path: z.string(), model: z.string() }),
});

/** Reads and validates an optional JSON file: null when absent, a DynnError naming the file when malformed. */
async function readJson<T>(file: string, schema: z.ZodType<T>, what: string): Promise<T | null> {
  return parseJson(await readJsonFile(file, what), schema, file, what);
}

function parseJson<T>(raw: unknown, schema: z.ZodType<T>, file: string, what: string): T | null {
  if (raw === null) return null;
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DynnError(`${file}: not ${what}: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/** Gathers every run's data, in order; names are the folders' base names, made unique with their parents. */
export async function gatherRuns(dirs: string[], options: GatherOptions = {}): Promise<RunData[]> {
  if (dirs.length === 0) throw new DynnError('no runs given; pass one or more run directories');
  const names = uniqueNames(dirs);
  const runs: RunData[] = [];
  for (let i = 0; i < dirs.length; i++) runs.push(await gatherRun(dirs[i], names[i], options));
  return runs;
}

function uniqueNames(dirs: string[]): string[] {
  const base = dirs.map((d) => path.basename(path.resolve(d)));
  return dirs.map((d, i) => (base.filter((b) => b === base[i]).length > 1 ? path.relative(process.cwd(), path.resolve(d)) || d : base[i]));
}

/** Everything about one run the report can draw from: its checkpoint, the files beside it, its companions. */
export async function gatherRun(dir: string, name: string, options: GatherOptions = {}): Promise<RunData> {
  const info = await readCheckpointInfo(dir);
  const kind = Object.entries(COMPANION_KINDS).find(([, tag]) => tag === info.config.model)?.[0];
  if (kind) throw new DynnError(`${dir} holds a ${kind} checkpoint, not a training run; give the run it was made for`);
  const meta = info.meta as unknown as TrainMeta;
  if (!Array.isArray(meta.history)) throw new DynnError(`${dir}: its checkpoint has no training history; is it a dynn training run?`);
  const opts = meta.options ?? {};
  const modelArgs = trainedModelArgs(info.config.args);
  const run: RunData = {
    dir,
    name,
    model: info.config.model,
    modelArgs,
    meta,
    schedule: String(opts.schedule ?? 'uniform'),
    gating: String(opts.gating ?? 'nested'),
    trainCommand: trainCommandLine(dir, meta, modelArgs),
    sweep: null,
    dynamic: null,
    controllers: await readControllerEvals(dir),
    gates: [],
    gatesEvals: await readGatesEvals(dir),
    exits: await readExits(dir),
    onnxLatency: await readOnnxLatency(dir),
  };
  await readSweeps(run, options);
  await addCompanions(run);
  if (!run.sweep && !run.sweepMissing) {
    if (await withoutSubnet(run)) {
      run.noFixedU = true;
      run.sweepMissing = `${run.model} has no network at a fixed u (each sample runs its own experts): its gates' sweep (\`dynn sweep RUN --json\`) is what it has`;
    } else if (options.sweep === false) run.sweepMissing = run.dynamic ? `not measured, and ${RUN_FILES.sweep} holds the gates' threshold sweep` : `no ${RUN_FILES.sweep} beside the run`;
    else run.sweep = await computeSweep(run, options);
  }
  return run;
}

/** Whether the run's mechanism has no fixed-plan sub-network to sweep over u (a mixture of experts). */
async function withoutSubnet(run: RunData): Promise<boolean> {
  const mechanism = run.modelArgs.dynamic;
  if (typeof mechanism !== 'string') return false;
  const { mechanisms } = await import('../route/mechanisms.js');
  return mechanisms.has(mechanism) && mechanisms.get(mechanism).noSubnet === true;
}

/**
 * Reads `RUN/sweep.json`: a sweep over u, or a dynamic run's threshold sweep (then the u-curve of its
 * backbone is measured or missing, as for a run without a sweep file). With `lenient`, a malformed file is
 * the reason its charts are missing.
 */
async function readSweeps(run: RunData, options: GatherOptions): Promise<void> {
  const file = path.join(run.dir, RUN_FILES.sweep);
  const mechanism = run.modelArgs.dynamic;
  try {
    const raw = await readJsonFile(file, typeof mechanism === 'string' ? DYNAMIC_SWEEP_WHAT : SWEEP_WHAT);
    if (typeof mechanism === 'string') {
      const opts = run.meta.options ?? {};
      const ref = { dir: run.dir, model: run.model, mechanism, trainedThreshold: typeof opts.gateThreshold === 'number' ? opts.gateThreshold : undefined, dataset: run.meta.dataset, numClasses: typeof run.modelArgs.numClasses === 'number' ? run.modelArgs.numClasses : undefined };
      const r = parseDynamicSweep(raw, file, ref);
      if ('sweep' in r) run.dynamic = r.sweep;
      else run.dynamicMissing = r.missing;
    }
    run.sweep = await parseSweep(raw, run.dir, typeof mechanism === 'string');
  } catch (err) {
    if (!options.lenient || !(err instanceof DynnError)) throw err;
    if (typeof mechanism === 'string') run.dynamicMissing = err.message;
    run.sweepMissing = err.message;
  }
}

const SWEEP_WHAT = 'a sweep (`dynn sweep RUN --json`)';

/** The sweep over u in the parsed `RUN/sweep.json`: null when absent or when it is a dynamic run's threshold sweep. */
async function parseSweep(raw: unknown, dir: string, dynamicRun: boolean): Promise<SweepData | null> {
  const file = path.join(dir, RUN_FILES.sweep);
  const what = SWEEP_WHAT;
  const mechanism = typeof raw === 'object' && raw !== null ? (raw as { dynamic?: unknown }).dynamic : undefined;
  if (mechanism !== undefined && dynamicRun) return null;
  if (mechanism !== undefined) throw new DynnError(`${file}: a threshold sweep of a model with gates, but ${dir} has none; expected ${what}`);
  const s = parseJson(raw, sweepSchema, file, what);
  if (!s) return null;
  return {
    dataset: s.dataset,
    points: [...s.points].sort((a, b) => a.u - b.u),
    testSamples: s.testSamples,
    gating: s.gating,
    classNames: s.classNames ?? (await datasetClassNames(s.dataset)) ?? undefined,
    // Sweeps take the first N test samples: N as the file recorded it remakes the same points.
    command: s.command ?? commandLine(['dynn', 'sweep', dir, ...(s.testSamples !== undefined ? ['--test-limit', s.testSamples] : []), '--json']) + ` > ${file}`,
    source: { kind: 'file', path: file },
    ...(s.routing ? { routing: s.routing } : {}),
  };
}

async function readControllerEvals(dir: string): Promise<ControllerEvalData[]> {
  const files = (await listDir(dir)).filter((f) => f.startsWith(RUN_FILES.evalPrefix) && f.endsWith('.json')).sort();
  const out: ControllerEvalData[] = [];
  for (const f of files) {
    const file = path.join(dir, f);
    const r = await readJson(file, evalFileSchema, 'a controller evaluation (`dynn eval RUN --controller NAME --json`)');
    const name = f.slice(RUN_FILES.evalPrefix.length, -'.json'.length);
    if (!r) continue;
    const { samples, ...report } = r;
    out.push({ name, samples: f, file, ...report, ...(samples !== undefined ? { testSamples: samples } : {}), command: commandLine(['dynn', 'eval', dir, '--controller', r.controller ?? name, '--json']) + ` > ${file}` });
  }
  return out;
}

async function readGatesEvals(dir: string): Promise<GatesEvalData[]> {
  const files = (await listDir(dir)).filter((f) => f.startsWith(RUN_FILES.gatesEvalPrefix) && f.endsWith('.json')).sort();
  const out: GatesEvalData[] = [];
  for (const f of files) {
    const file = path.join(dir, f);
    const r = await readJson(file, gatesEvalSchema, 'a gates evaluation (`dynn gates eval RUN --gates DIR --json`)');
    const name = f.slice(RUN_FILES.gatesEvalPrefix.length, -'.json'.length).replace(/^-/, '') || 'gates';
    if (!r) continue;
    const args = ['dynn', 'gates', 'eval', dir, '--gates', r.gates ?? 'DIR', '--dataset', r.dataset, '--split', r.split, '--json'];
    out.push({ name, dataset: r.dataset, split: r.split, points: [...r.points].sort((a, b) => a.u - b.u), command: commandLine(args) + ` > ${file}` });
  }
  return out;
}

async function readExits(dir: string): Promise<ExitData | null> {
  const file = path.join(dir, RUN_FILES.exitSweep);
  const s = await readJson(file, exitSweepSchema, 'an early-exit sweep (`dynn sweep RUN --thresholds LIST --json`)');
  return s && { ...s, command: commandLine(['dynn', 'sweep', dir, '--thresholds', s.points.map((p) => (Array.isArray(p.threshold) ? p.threshold.join(':') : p.threshold)).join(','), '--rule', s.rule, '--json']) + ` > ${file}` };
}

async function readOnnxLatency(dir: string): Promise<OnnxLatencyData | null> {
  const file = path.join(dir, RUN_FILES.onnxProfile);
  const t = await readJson(file, latencyTableSchema, 'an ONNX latency table (`dynn profile MODEL`)');
  if (!t) return null;
  const model = path.join(dir, RUN_FILES.onnx);
  return { path: file, batches: t.batches, threads: t.host.threads, levels: t.levels, command: commandLine(['dynn', 'profile', model, '--batches', t.batches.join(',')]) };
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch {
    return [];
  }
}

/**
 * Controller and gates checkpoints made for this run: inside its folder or beside it, with a run reference
 * (meta.run.path) that resolves to this folder, or names a folder of the same name and model.
 */
async function addCompanions(run: RunData): Promise<void> {
  const self = path.resolve(run.dir);
  const inside = (await listDir(run.dir)).map((f) => path.join(run.dir, f));
  const parent = path.dirname(self);
  const beside = (await listDir(parent)).map((f) => path.join(parent, f)).filter((d) => path.resolve(d) !== self);
  for (const dir of [...inside, ...beside].sort()) {
    let info;
    try {
      if (!(await fsp.stat(path.join(dir, 'checkpoint.json'))).isFile()) continue;
      info = await readCheckpointInfo(dir);
    } catch {
      continue;
    }
    const kind = info.config.model;
    if (kind !== COMPANION_KINDS.controller && kind !== COMPANION_KINDS.gates) continue;
    const ref = (info.meta as { run?: { path?: unknown; model?: unknown } }).run;
    if (!ref || typeof ref.path !== 'string') continue;
    const samePath = path.resolve(ref.path) === self;
    const sameName = path.basename(path.resolve(ref.path)) === path.basename(self) && ref.model === run.model;
    if (!samePath && !sameName) continue;
    const rel = path.relative(process.cwd(), dir) || dir;
    if (kind === COMPANION_KINDS.gates) {
      const m = gatesMetaSchema.safeParse(info.meta);
      if (!m.success) continue;
      run.gates.push({
        name: path.basename(dir),
        dir: rel,
        method: m.data.options?.method,
        pattern: [...m.data.pattern].sort((a, b) => a.u - b.u),
        command: commandLine(['dynn', 'gates', 'train', run.dir, '--method', m.data.options?.method ?? 'reinforce', '--out', rel]),
      });
    } else {
      const m = controllerMetaSchema.safeParse(info.meta);
      if (!m.success || !m.data.validation) continue;
      run.controllers.push({
        name: path.basename(dir),
        samples: 'validation split',
        split: 'val',
        ...m.data.validation,
        command: commandLine(['dynn', 'controller', 'train', run.dir, '--out', rel]),
      });
    }
  }
}

/** The class names of a data set, or null when it cannot be opened here. */
export async function datasetClassNames(dataset: string, dataDir?: string): Promise<string[] | null> {
  try {
    const { loadDataset } = await import('../data/datasets.js');
    return (await loadDataset(dataset, { dataDir, trainLimit: 1, testLimit: 1 })).classNames;
  } catch {
    return null;
  }
}

const MAX_LEVELS = 16;
const FALLBACK_US = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1];

/** Measures a sweep of a run here: its network on the test set at each u, with its training gating. */
async function computeSweep(run: RunData, options: GatherOptions): Promise<SweepData> {
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  const { sweep } = await import('../eval/sweep.js');
  await initEngine(options.engine ?? 'auto');
  const { model } = await loadRun(run.dir);
  try {
    const dataset = options.dataset ?? run.meta.dataset;
    // The run's own test subset unless told otherwise, as its other files were measured on.
    const own = run.meta.options.testLimit;
    const testLimit = options.testLimit ?? (dataset === run.meta.dataset && typeof own === 'number' ? own : undefined);
    const data = await loadDataset(dataset, { dataDir: options.dataDir, testLimit });
    const [h, w, c] = model.inputShape;
    const t = data.test;
    if (t.height !== h || t.width !== w || t.channels !== c) {
      throw new DynnError(`data set ${dataset} has ${t.height}x${t.width}x${t.channels} images; ${run.dir}'s model takes ${h}x${w}x${c}`);
    }
    const levels = model.levelUtilizations();
    const us = options.us ?? (levels.length <= MAX_LEVELS ? levels : FALLBACK_US);
    const gating = run.gating === 'independent' ? 'independent' : 'nested';
    options.onProgress?.(`${run.name}: sweeping ${us.length} utilizations on ${t.count} ${dataset} test samples`);
    const points = sweep(model, t, us, {
      gating,
      noLatency: options.latency === false,
      onPoint: (p) => options.onProgress?.(`${run.name}: u=${p.u.toFixed(3)} accuracy ${(100 * p.accuracy).toFixed(2)}%`),
    });
    const args: (string | number)[] = ['dynn', 'sweep', run.dir, '--u', us.join(','), '--dataset', dataset, '--gating', gating];
    if (testLimit !== undefined) args.push('--test-limit', testLimit);
    if (options.latency === false) args.push('--no-latency');
    const result: SweepData = {
      dataset,
      points,
      testSamples: t.count,
      gating,
      classNames: data.classNames,
      // `dynn sweep` of a dynamic run sweeps its gates' threshold: its backbone at fixed u only a report measures.
      command: run.modelArgs.dynamic === undefined ? commandLine([...args, '--json']) : `# ${run.name}: the backbone at fixed u, measured by dynn report (dynn sweep of a dynamic run sweeps its gates' threshold)`,
      source: { kind: 'computed' },
    };
    const { hasMixtures, mixtureStats } = await import('../eval/mixtures.js');
    if (hasMixtures(model)) result.routing = mixtureStats(model, t);
    if (options.saveSweep && run.dynamic) {
      // RUN/sweep.json holds the gates' threshold sweep: the backbone's u-curve is not saved over it.
      options.onProgress?.(`${run.name}: not saved: ${RUN_FILES.sweep} holds the gates' threshold sweep`);
    } else if (options.saveSweep) {
      const file = path.join(run.dir, RUN_FILES.sweep);
      const { source: _source, ...saved } = result;
      await writeFileAtomic(file, JSON.stringify({ model: model.config.model, ...saved }, null, 2) + '\n');
      result.source = { kind: 'computed', savedTo: file };
    }
    return result;
  } finally {
    model.dispose();
  }
}
