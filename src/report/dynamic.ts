import { promises as fsp } from 'node:fs';
import type { RoutedPoint } from '../eval/routed.js';
import type { SpatialMasks } from '../eval/spatial.js';
import { z } from 'zod';
import { summarizeIssues } from '../checkpoint/checkpoint.js';
import { DynnError } from '../util/errors.js';
import { commandLine } from './commands.js';

// A dynamic run's threshold sweep file (`dynn sweep RUN --json > RUN/sweep.json` on a run with gates), read
// and validated free of TF.js, and the views of it that `dynn info`, the report and the dashboard share.

/**
 * One inference threshold of a dynamic run's sweep file, as read: what `routedSweep` writes (numbers stored
 * as null read back as NaN), the per-class accuracy absent in files written before it was recorded.
 */
export type DynamicPoint = Omit<RoutedPoint, 'perClassAccuracy' | 'classSkipRates'> & { perClassAccuracy?: number[]; classSkipRates?: Record<string, number[]> };

/** A dynamic run's threshold sweep, validated against the run it lies beside. */
export interface DynamicSweepData {
  /** The file it was read from. */
  path: string;
  model: string;
  mechanism: string;
  dataset: string;
  testSamples: number;
  /** Class names from the file, else numbered. */
  classNames: string[];
  /** The points in file order (`dynn sweep` writes the trained threshold first). */
  points: DynamicPoint[];
  /** The point at the threshold the run was trained with. */
  trained: DynamicPoint;
  /** The backbone with nothing skipped and no gate, run the same way. */
  full: { accuracy: number; latencyMs: { batch1: number; batch64: number } };
  /** The trained decisions run the way the field runs them: every channel, then the mask. */
  masked: { latencyMs: { batch64: number } };
  /** How the decisions ran when it was measured (`masked`: every channel computed), when the file records it. */
  execution?: 'sliced' | 'masked';
  /** Spatial gates: the positions each block computed on the first test images (`spatialMasks`). */
  masks?: SpatialMasks;
  /** A command line that remakes the file. */
  command: string;
}

/** What the views need to know of the run the file lies beside. */
export interface DynamicRunRef {
  dir: string;
  model: string;
  mechanism: string;
  /** The run's training threshold (meta.options.gateThreshold), when recorded. */
  trainedThreshold?: number;
  /** The data set the run trained on and its class count: a sweep of other data is not this run's. */
  dataset?: string;
  numClasses?: number;
}

const fraction = z.number().min(0).max(1);
const nonnegative = z.number().nonnegative();
/** JSON has no NaN: a missing latency or an empty class is written as null. */
const orNaN = <T extends z.ZodNumber>(n: T) => n.nullable().transform((x) => x ?? NaN);
const name = z.string().min(1).max(200);

const pointSchema = z.object({
  threshold: fraction,
  accuracy: fraction,
  flopsRatio: nonnegative,
  flopsMin: nonnegative,
  flopsMax: nonnegative,
  gateShare: nonnegative,
  skipRates: z.record(name, fraction),
  classFlops: z.array(orNaN(nonnegative)).min(1),
  perClassAccuracy: z.array(orNaN(fraction)).optional(),
  classSkipRates: z.record(name, z.array(orNaN(fraction))).optional(),
  histogram: z.array(z.number().int().nonnegative()).length(10),
  latencyMs: z.object({ batch1: orNaN(nonnegative), batch64: orNaN(nonnegative) }),
  routes: z.record(name, z.array(z.array(orNaN(fraction)).min(1).max(64))).optional(),
  experts: z
    .record(
      name,
      z
        .object({ load: z.array(fraction).min(1).max(4096), cv: nonnegative, maxShare: fraction, classes: z.array(z.array(orNaN(fraction)).max(4096)).max(4096), overflowRate: fraction })
        .refine((e) => e.classes.every((row) => row.length === e.load.length), { message: 'every class row has one share per expert' }),
    )
    .optional(),
  overflowRate: fraction.optional(),
});

const side = z.number().int().min(1).max(256);
/** Cells (pixels and mask positions over every sample) the mask pictures may hold. */
const MAX_MASK_CELLS = 200_000;
const masksSchema = z
  .object({
    threshold: fraction,
    height: side,
    width: side,
    blocks: z.array(z.object({ name, height: side, width: side })).min(1).max(64),
    samples: z
      .array(
        z.object({
          index: z.number().int().nonnegative(),
          label: z.number().int().nonnegative(),
          predicted: z.number().int().nonnegative(),
          image: z.array(z.number().int().min(0).max(255)),
          masks: z.array(z.array(z.union([z.literal(0), z.literal(1)]))),
        }),
      )
      .max(16),
  })
  .superRefine((m, ctx) => {
    // The pictures draw one cell per pixel and position: bounded so a crafted file cannot exhaust memory.
    const cells = m.samples.length * (m.height * m.width + m.blocks.reduce((a, b) => a + b.height * b.width, 0));
    if (cells > MAX_MASK_CELLS) ctx.addIssue({ code: 'custom', path: ['samples'], message: `${cells} image and mask cells, more than the ${MAX_MASK_CELLS} the report draws` });
    m.samples.forEach((s, i) => {
      const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path: ['samples', i, ...path], message });
      if (s.image.length !== m.height * m.width) issue(['image'], `${s.image.length} pixels, expected ${m.height} x ${m.width}`);
      if (s.masks.length !== m.blocks.length) issue(['masks'], `${s.masks.length} masks for ${m.blocks.length} blocks`);
      s.masks.forEach((k, j) => {
        const b = m.blocks[j];
        if (b && k.length !== b.height * b.width) issue(['masks', j], `${k.length} positions, ${b.name} has ${b.height} x ${b.width}`);
      });
    });
  });

const sweepSchema = z
  .object({
    model: name,
    dynamic: name,
    dataset: name,
    testSamples: z.number().int().positive(),
    trainedThreshold: fraction.optional(),
    execution: z.enum(['sliced', 'masked']).optional(),
    classNames: z.array(z.string().max(200)).optional(),
    points: z.array(pointSchema).min(1),
    full: z.object({ accuracy: fraction, latencyMs: z.object({ batch1: orNaN(nonnegative), batch64: orNaN(nonnegative) }) }),
    masked: z.object({ latencyMs: z.object({ batch64: orNaN(nonnegative) }) }),
    masks: masksSchema.optional(),
  })
  .superRefine((s, ctx) => {
    const classes = s.classNames?.length ?? s.points[0].classFlops.length;
    s.points.forEach((p, i) => {
      const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path: ['points', i, ...path], message });
      if (p.classFlops.length !== classes) issue(['classFlops'], `${p.classFlops.length} classes, expected ${classes}`);
      if (p.perClassAccuracy && p.perClassAccuracy.length !== classes) issue(['perClassAccuracy'], `${p.perClassAccuracy.length} classes, expected ${classes}`);
      for (const [gate, t] of Object.entries(p.routes ?? {})) {
        if (t.length !== classes) issue(['routes', gate], `${t.length} classes, expected ${classes}`);
        if (t.some((r) => r.length !== t[0].length)) issue(['routes', gate], 'every class needs a share of each route');
      }
      for (const [block, rates] of Object.entries(p.classSkipRates ?? {})) {
        if (!(block in p.skipRates)) issue(['classSkipRates', block], 'a block with no skip rate');
        else if (rates.length !== classes) issue(['classSkipRates', block], `${rates.length} classes, expected ${classes}`);
      }
      const counted = p.histogram.reduce((a, b) => a + b, 0);
      if (counted !== s.testSamples) issue(['histogram'], `counts ${counted} samples, the sweep has ${s.testSamples}`);
    });
  });

/** What a dynamic run's sweep file is, for messages. */
export const DYNAMIC_SWEEP_WHAT = 'a threshold sweep of a dynamic run (`dynn sweep RUN --json`)';

/**
 * Parses a dynamic run's sweep file: `{ missing }` when `raw` is null (no file) or holds a sweep over u (the
 * backbone's, as `dynn report --save-sweep` writes), else the validated sweep. A malformed file, or one made
 * for another model or mechanism, is a DynnError naming the file and the field.
 */
export function parseDynamicSweep(raw: unknown, file: string, run: DynamicRunRef): { sweep: DynamicSweepData } | { missing: string } {
  const remake = `\`${commandLine(['dynn', 'sweep', run.dir, '--json'])} > ${file}\``;
  if (raw === null) return { missing: `no threshold sweep beside the run: ${remake} makes one` };
  const obj = typeof raw === 'object' && !Array.isArray(raw) ? (raw as Record<string, unknown>) : null;
  if (obj && obj.dynamic === undefined && Array.isArray(obj.points) && obj.points.length > 0 && obj.points.every((p) => typeof p === 'object' && p !== null && 'u' in p)) {
    return { missing: `${file} holds the backbone's sweep over u, not the gates' threshold sweep: ${remake} replaces it` };
  }
  const parsed = sweepSchema.safeParse(raw);
  if (!parsed.success) throw new DynnError(`${file}: not ${DYNAMIC_SWEEP_WHAT}: ${summarizeIssues(parsed.error.issues)}; remake it with ${remake}`);
  const s = parsed.data;
  if (s.model !== run.model || s.dynamic !== run.mechanism) {
    throw new DynnError(`${file}: a threshold sweep of ${s.model} with ${s.dynamic} gates, but the run is ${run.model} with ${run.mechanism} gates; remake it with ${remake}`);
  }
  const classes = s.points[0].classFlops.length;
  if ((run.dataset !== undefined && s.dataset !== run.dataset) || (run.numClasses !== undefined && classes !== run.numClasses)) {
    throw new DynnError(`${file}: a threshold sweep on ${s.dataset} (${classes} classes), but the run trained on ${run.dataset ?? s.dataset} (${run.numClasses ?? classes} classes); remake it with ${remake}`);
  }
  const t = s.trainedThreshold ?? run.trainedThreshold ?? 0.5;
  const trained = s.points.find((p) => p.threshold === t) ?? s.points[0];
  const others = s.points.map((p) => p.threshold).filter((x) => x !== trained.threshold);
  return {
    sweep: {
      path: file,
      model: s.model,
      mechanism: s.dynamic,
      dataset: s.dataset,
      testSamples: s.testSamples,
      classNames: s.classNames ?? Array.from({ length: classes }, (_, c) => `class ${c}`),
      points: s.points,
      trained,
      full: s.full,
      masked: s.masked,
      ...(s.execution ? { execution: s.execution } : {}),
      ...(s.masks ? { masks: s.masks } : {}),
      // Sweeps take the first N test samples: N as the file recorded it remakes the same points.
      command: commandLine(['dynn', 'sweep', run.dir, ...(others.length ? ['--thresholds', others.join(',')] : []), ...(s.testSamples !== undefined ? ['--test-limit', s.testSamples] : []), '--json']) + ` > ${file}`,
    },
  };
}

/** Reads and parses a dynamic run's sweep file (see `parseDynamicSweep`); an absent file is `{ missing }`. */
export async function readDynamicSweep(file: string, run: DynamicRunRef): Promise<{ sweep: DynamicSweepData } | { missing: string }> {
  return parseDynamicSweep(await readJsonFile(file, DYNAMIC_SWEEP_WHAT), file, run);
}

/** The parsed JSON of `file`, or null when it does not exist; a DynnError naming the file when unreadable. */
export async function readJsonFile(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new DynnError(`${file}: cannot read it: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new DynnError(`${file}: not valid JSON (${(err as Error).message}); expected ${what}`);
  }
}

/** Skip rate per gated block at a point, in the network's order. */
export function blockSkips(p: DynamicPoint): { block: string; skipped: number }[] {
  return Object.entries(p.skipRates).map(([block, skipped]) => ({ block, skipped }));
}

/**
 * Which blocks each class skips at a point: per class, the share of each gated block's groups its samples
 * skipped (for a mechanism that skips whole blocks, how often the class skips the block), or null when the
 * file predates it.
 */
export function classSkips(s: DynamicSweepData, p: DynamicPoint): { blocks: string[]; classes: { name: string; skipped: number[] }[] } | null {
  if (!p.classSkipRates) return null;
  const blocks = Object.keys(p.skipRates).filter((b) => p.classSkipRates![b]);
  return { blocks, classes: s.classNames.map((name, c) => ({ name, skipped: blocks.map((b) => p.classSkipRates![b][c]) })) };
}

/** Compute and accuracy per class at a point (accuracy NaN when the file does not record it). */
export function classCompute(s: DynamicSweepData, p: DynamicPoint): { name: string; flopsRatio: number; accuracy: number }[] {
  return s.classNames.map((name, c) => ({ name, flopsRatio: p.classFlops[c], accuracy: p.perClassAccuracy?.[c] ?? NaN }));
}

/** Per switch at a point: each class's share of samples on each route (cheapest first); empty when the file records none. */
export function classRoutes(s: DynamicSweepData, p: DynamicPoint): { gate: string; routes: number; classes: { name: string; shares: number[] }[] }[] {
  return Object.entries(p.routes ?? {}).map(([gate, t]) => ({ gate, routes: t[0]?.length ?? 0, classes: s.classNames.map((name, c) => ({ name, shares: t[c] })) }));
}

/** Per mixture-of-experts block at a point: the expert load and each class's share per expert; empty when the file records none. */
export function expertTables(s: DynamicSweepData, p: DynamicPoint): { block: string; load: number[]; cv: number; maxShare: number; overflowRate: number; classes: { name: string; shares: number[] }[] }[] {
  return Object.entries(p.experts ?? {}).map(([block, e]) => ({ block, load: e.load, cv: e.cv, maxShare: e.maxShare, overflowRate: e.overflowRate, classes: s.classNames.map((name, c) => ({ name, shares: e.classes[c] ?? [] })) }));
}

/** The histogram's bins as labels: `0.0-0.1`, ..., `0.9+`. */
export const HISTOGRAM_BINS = Array.from({ length: 10 }, (_, i) => (i === 9 ? '0.9+' : `${(i / 10).toFixed(1)}-${((i + 1) / 10).toFixed(1)}`));

/**
 * The rows of the spatial masks drawn over their images: per sample and gated block, each position of the
 * block's grid with the image's mean intensity over it and whether it was computed.
 */
export function maskCells(s: DynamicSweepData): { sample: string; block: string; x: number; y: number; intensity: number; computed: number }[] {
  const m = s.masks;
  if (!m) return [];
  const name = (c: number) => s.classNames[c] ?? `class ${c}`;
  return m.samples.flatMap((smp) => {
    const sample = `#${smp.index}: ${name(smp.label)}${smp.predicted === smp.label ? '' : ` (taken for ${name(smp.predicted)})`}`;
    return m.blocks.flatMap((b, j) =>
      Array.from({ length: b.height * b.width }, (_, p) => {
        const [y, x] = [Math.floor(p / b.width), p % b.width];
        // The image's pixels under this position (the grid divides the image evenly in resnet-d and resnet38).
        const [y0, y1] = [Math.floor((y * m.height) / b.height), Math.max(Math.floor((y * m.height) / b.height) + 1, Math.floor(((y + 1) * m.height) / b.height))];
        const [x0, x1] = [Math.floor((x * m.width) / b.width), Math.max(Math.floor((x * m.width) / b.width) + 1, Math.floor(((x + 1) * m.width) / b.width))];
        let sum = 0;
        for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) sum += smp.image[yy * m.width + xx];
        return { sample, block: b.name, x, y, intensity: Math.round(sum / ((y1 - y0) * (x1 - x0))), computed: smp.masks[j][p] };
      }),
    );
  });
}
