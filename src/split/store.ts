import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { BITS_RANGE } from './quantize.js';
import { WIRE_FORMAT, WIRE_VERSION } from './wire.js';

/** Value of the metadata's `format`: a split written by `dynn split`. */
export const SPLIT_FORMAT = 'dynn-split/1';
/** The metadata file in a split directory. */
export const SPLIT_FILE = 'split.json';
export const HEAD_FILE = 'head.onnx';
export const TAIL_FILE = 'tail.onnx';

const MAX_DIM = 65536;
const dim = z.number().int().positive().max(MAX_DIM);
const fraction = z.number().min(0).max(1);

/** One trained bottleneck: its size on the wire and the split model's test accuracy with it. */
const pointSchema = z.object({
  channels: dim,
  bits: z.number().int().min(BITS_RANGE.min).max(BITS_RANGE.max),
  /** The sample's 8-byte header and its bit-packed codes (the 16-byte frame header excluded). */
  bytesPerSample: z.number().int().positive(),
  accuracy: fraction,
});

const metaSchema = z.object({
  format: z.literal(SPLIT_FORMAT),
  dynnVersion: z.string(),
  model: z.object({ model: z.string().min(1), args: z.record(z.string(), z.unknown()) }),
  /** The data set it was trained and measured on (what `dynn head` reads frames from by default). */
  dataset: z.string().optional(),
  /** The layer the network is split after. */
  at: z.string().min(1),
  /** The images the head takes: NCHW float32 in [0, 1], per-sample [C, H, W]. */
  input: z.object({ layout: z.literal('NCHW'), shape: z.array(dim).length(3) }),
  /** The split point's features, [C, H, W]. */
  features: z.object({ shape: z.array(dim).length(3) }),
  bottleneck: z.object({ maxChannels: dim, relu: z.boolean() }),
  numClasses: z.number().int().min(2).max(1_000_000),
  classNames: z.array(z.string()),
  points: z.array(pointSchema).min(1).max(4096),
  baseAccuracy: fraction,
  inputBytesPerSample: z.number().positive(),
  inputPngBytesPerSample: z.number().nonnegative(),
  wire: z.looseObject({ version: z.literal(WIRE_VERSION) }),
  training: z.record(z.string(), z.unknown()),
});

/** What `split.json` holds: the model, the split point, every bottleneck's figures and the exact wire format. */
export type SplitMeta = z.infer<typeof metaSchema>;
export type SplitFigure = z.infer<typeof pointSchema>;

/** The wire format as the metadata records it. */
export function wireSpec(): SplitMeta['wire'] {
  return { ...WIRE_FORMAT };
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

/** Writes a split directory, every file atomically, the metadata last (a split is complete once it is there). */
export async function saveSplit(dir: string, head: Uint8Array, tail: Uint8Array, meta: SplitMeta): Promise<void> {
  await writeFileAtomic(path.join(dir, HEAD_FILE), head);
  await writeFileAtomic(path.join(dir, TAIL_FILE), tail);
  await writeFileAtomic(path.join(dir, SPLIT_FILE), JSON.stringify(meta, null, 2) + '\n');
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
  const r = metaSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new DynnError(`${file} is not a valid split: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const m = r.data;
  if (m.points.some((p) => p.channels > m.bottleneck.maxChannels)) throw new DynnError(`${file}: a point has more channels than the bottleneck's ${m.bottleneck.maxChannels}`);
  if (m.bottleneck.maxChannels > m.features.shape[0]) throw new DynnError(`${file}: the bottleneck is wider than the features`);
  return m;
}

/** Whether a directory holds a split (its metadata file), for commands that take either a split or a model. */
export async function isSplitDir(dir: string): Promise<boolean> {
  return (await fsp.stat(path.join(dir, SPLIT_FILE)).catch(() => null))?.isFile() ?? false;
}
