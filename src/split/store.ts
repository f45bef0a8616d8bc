import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { BITS_RANGE } from './quantize.js';
import { WIRE_FORMAT, WIRE_VERSION } from './wire.js';

/** Value of the metadata's `format`: a split written by `dynn split` (one or several split points). */
export const SPLIT_FORMAT = 'dynn-split/2';
/** The format of folders with one split point written before version 2; still read. */
export const SPLIT_FORMAT_V1 = 'dynn-split/1';
/** The metadata file in a split directory. */
export const SPLIT_FILE = 'split.json';
/** The graphs of a version 1 folder. */
export const HEAD_FILE = 'head.onnx';
export const TAIL_FILE = 'tail.onnx';

const MAX_DIM = 65536;
const dim = z.number().int().positive().max(MAX_DIM);
const fraction = z.number().min(0).max(1);
/** A graph's file name in the folder: a plain name, never a path (split.json is input like any other). */
const graphFile = z.string().regex(/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}\.onnx$/, 'a file name in the split folder (letters, digits, ., _, -; ending .onnx)');

/** One trained bottleneck: its size on the wire and the split model's test accuracy with it. */
const pointSchema = z.object({
  /** The split point's layer (version 1 folders: filled in from `at`). */
  at: z.string().min(1).optional(),
  channels: dim,
  bits: z.number().int().min(BITS_RANGE.min).max(BITS_RANGE.max),
  /** The sample's 8-byte header and its bit-packed codes (the 16-byte frame header excluded). */
  bytesPerSample: z.number().int().positive(),
  accuracy: fraction,
  /** FLOPs of the head per sample: the network up to the split point and the encoder's `channels` outputs. */
  headFlops: z.number().nonnegative().optional(),
});

/** One split point of a folder: its layer, feature size, bottleneck and graphs. */
const splitSchema = z.object({
  at: z.string().min(1),
  /** The split point's features, [C, H, W]. */
  features: z.object({ shape: z.array(dim).length(3) }),
  bottleneck: z.object({ maxChannels: dim, relu: z.boolean() }),
  head: graphFile,
  tail: graphFile,
  /** FLOPs per sample of the tail at the widest bottleneck (decoder and the rest of the network). */
  tailFlops: z.number().nonnegative().optional(),
  /** Median ms of one sample through the head and the tail (ONNX Runtime, 1 thread) where `dynn split` ran. */
  measured: z.object({ headMs: z.number().nonnegative(), tailMs: z.number().nonnegative() }).optional(),
});

const common = {
  dynnVersion: z.string(),
  model: z.object({ model: z.string().min(1), args: z.record(z.string(), z.unknown()) }),
  /** The data set it was trained and measured on (what `dynn head` reads frames from by default). */
  dataset: z.string().optional(),
  /** The images the head takes: NCHW float32 in [0, 1], per-sample [C, H, W]. */
  input: z.object({ layout: z.literal('NCHW'), shape: z.array(dim).length(3) }),
  numClasses: z.number().int().min(2).max(1_000_000),
  classNames: z.array(z.string()),
  baseAccuracy: fraction,
  inputBytesPerSample: z.number().positive(),
  inputPngBytesPerSample: z.number().nonnegative(),
  training: z.record(z.string(), z.unknown()),
};

const metaSchema = z.object({
  format: z.literal(SPLIT_FORMAT),
  ...common,
  splits: z.array(splitSchema).min(1).max(256),
  /** Every operating point, each naming its split point in `at`. */
  points: z.array(pointSchema.required({ at: true })).min(1).max(4096),
  wire: z.looseObject({ version: z.literal(WIRE_VERSION) }),
});

const metaV1Schema = z.object({
  format: z.literal(SPLIT_FORMAT_V1),
  ...common,
  at: z.string().min(1),
  features: z.object({ shape: z.array(dim).length(3) }),
  bottleneck: z.object({ maxChannels: dim, relu: z.boolean() }),
  points: z.array(pointSchema).min(1).max(4096),
  wire: z.looseObject({ version: z.literal(1) }),
});

/**
 * What `split.json` holds: the model, its split points (each with its graphs), every operating point (split
 * point, channels, bits) with its figures, and the exact wire format.
 */
export type SplitMeta = z.infer<typeof metaSchema>;
/** One split point of a folder. */
export type SplitPointMeta = z.infer<typeof splitSchema>;
/** One operating point. */
export type SplitFigure = SplitMeta['points'][number];

/** The wire format as the metadata records it. */
export function wireSpec(): SplitMeta['wire'] {
  return { ...WIRE_FORMAT };
}

/** A split point's graph file names (its layer name kept to what a file name may hold). */
export function graphFiles(at: string): { head: string; tail: string } {
  const safe = at.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[.]/, '_');
  return { head: `head.${safe}.onnx`, tail: `tail.${safe}.onnx` };
}

/**
 * Checks before any training that `dir` may receive a split: absent, an empty folder, or anything with
 * `force` (its split files are then replaced). Changes nothing on disk.
 */
export async function checkSplitDir(dir: string, force = false): Promise<void> {
  const stat = await fsp.stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw new DynnError(`cannot use ${dir} for the split: ${err.message}`);
  });
  if (!stat) return;
  if (!stat.isDirectory()) throw new DynnError(`--out ${dir} is a file, not a directory`);
  if (!force && (await fsp.readdir(dir)).length > 0) throw new DynnError(`${dir} is not empty; pass --force to replace the split in it`);
}

/**
 * Writes a split directory: each split point's head and tail (`graphs[i]` for `meta.splits[i]`), every file
 * atomically, the metadata last (a split is complete once it is there).
 */
export async function saveSplit(dir: string, graphs: { head: Uint8Array; tail: Uint8Array }[], meta: SplitMeta): Promise<void> {
  if (graphs.length !== meta.splits.length) throw new Error(`internal: ${graphs.length} graph pairs for ${meta.splits.length} split points`);
  for (const [i, s] of meta.splits.entries()) {
    await writeFileAtomic(path.join(dir, s.head), graphs[i].head);
    await writeFileAtomic(path.join(dir, s.tail), graphs[i].tail);
  }
  await writeFileAtomic(path.join(dir, SPLIT_FILE), JSON.stringify(meta, null, 2) + '\n');
}

/** A version 1 folder (one split point, head.onnx and tail.onnx) in the version 2 form. */
function fromV1(m: z.infer<typeof metaV1Schema>): SplitMeta {
  const { at, features, bottleneck, points, format: _format, wire: _wire, ...rest } = m;
  return {
    format: SPLIT_FORMAT,
    ...rest,
    splits: [{ at, features, bottleneck, head: HEAD_FILE, tail: TAIL_FILE }],
    points: points.map((p) => ({ ...p, at })),
    wire: wireSpec(),
  };
}

/** Reads and validates a split directory's metadata; anything wrong is a DynnError naming the file. */
export async function loadSplitMeta(dir: string): Promise<SplitMeta> {
  const file = path.join(dir, SPLIT_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new DynnError(`${dir} is not a split directory (no readable ${SPLIT_FILE}: ${(err as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new DynnError(`${file} is not valid JSON`);
  }
  const format = (json as { format?: unknown } | null)?.format;
  const r = format === SPLIT_FORMAT_V1 ? metaV1Schema.safeParse(json) : metaSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new DynnError(`${file} is not a valid split: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const m = r.data.format === SPLIT_FORMAT_V1 ? fromV1(r.data) : r.data;
  const byAt = new Map(m.splits.map((s) => [s.at, s]));
  if (byAt.size !== m.splits.length) throw new DynnError(`${file}: a split point is listed twice`);
  for (const s of m.splits) {
    if (s.bottleneck.maxChannels > s.features.shape[0]) throw new DynnError(`${file}: the bottleneck at ${s.at} is wider than its features`);
  }
  for (const p of m.points) {
    const s = byAt.get(p.at);
    if (!s) throw new DynnError(`${file}: a point names split point "${p.at}"; the folder has ${[...byAt.keys()].join(', ')}`);
    if (p.channels > s.bottleneck.maxChannels) throw new DynnError(`${file}: a point at ${p.at} has more channels than its bottleneck's ${s.bottleneck.maxChannels}`);
  }
  for (const s of m.splits) if (!m.points.some((p) => p.at === s.at)) throw new DynnError(`${file}: split point ${s.at} has no operating point`);
  if (new Set(m.splits.flatMap((s) => [s.head, s.tail])).size !== 2 * m.splits.length) throw new DynnError(`${file}: two graphs share a file`);
  return m;
}

/** Whether a directory holds a split (its metadata file), for commands that take either a split or a model. */
export async function isSplitDir(dir: string): Promise<boolean> {
  return (await fsp.stat(path.join(dir, SPLIT_FILE)).catch(() => null))?.isFile() ?? false;
}
