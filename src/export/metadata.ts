import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { ModelMetadataOnly } from './onnx-proto.js';

/** Value of the `dynn.format` metadata key: marks a model dynn exported. */
export const ONNX_FORMAT = 'dynn-onnx/1';

/** The graph's input and output names. */
export const ONNX_IO = {
  images: 'images',
  u: 'u',
  scores: 'scores',
  /** Early-exit models: the stage to run (float32 scalar, 0-based); `images` is then the stage's input. */
  stage: 'stage',
  /** Early-exit models: the stage's backbone output, the next stage's input. */
  features: 'features',
  /** Models exported with a controller: its action logits, [batch, actions]. */
  controller: 'controller_scores',
} as const;

const levelSchema = z.object({
  /** The utilization this level was exported for (its representative; what `run` reports as used). */
  u: z.number().gt(0).lte(1),
  /** The network's operating level (BatchNorm statistics row; active groups or blocks). */
  level: z.number().int().nonnegative(),
  /** The smallest u that reaches this level under dynn's rounding rule; the graph's branch threshold. */
  minU: z.number().gt(0).lte(1),
  flops: z.number().nonnegative(),
  macs: z.number().nonnegative(),
  /** Active parameters. */
  params: z.number().nonnegative(),
  /** flops / FLOPs at u = 1. */
  flopsRatio: z.number().nonnegative(),
  /** Early-exit models: FLOPs of a sample that leaves at each exit (segments and exit classifiers passed). */
  exitFlops: z.array(z.number().nonnegative()).optional(),
});

const exitsSchema = z.object({
  /** Exits, the final classifier included: the graph runs one stage per exit. */
  count: z.number().int().min(2),
  /** The fitted exit policy stored by `dynn fit-exits --save`, the runtime's default. */
  policy: z.object({ rule: z.string(), thresholds: z.array(z.number()) }).optional(),
});

const controllerSchema = z.object({
  /** The utilization each controller output stands for, ascending. */
  actions: z.array(z.number().gt(0).lte(1)).min(1),
  /** Cost of one decision: added to every sample's cost. */
  flops: z.number().nonnegative(),
  macs: z.number().nonnegative(),
  /** flops / the network's FLOPs at u = 1. */
  flopsRatio: z.number().nonnegative(),
});

const metadataSchema = z.object({
  format: z.literal(ONNX_FORMAT),
  dynnVersion: z.string(),
  model: z.object({ model: z.string(), args: z.record(z.string(), z.unknown()) }),
  /** The image input: NCHW float32, per-sample shape [C, H, W]. */
  input: z.object({ name: z.string(), layout: z.literal('NCHW'), shape: z.array(z.number().int().positive()).length(3) }),
  numClasses: z.number().int().min(2),
  classNames: z.array(z.string()),
  /** Exported levels, cheapest first. */
  levels: z.array(levelSchema).min(1),
  /** Early-exit models: the graph runs stage by stage (inputs `images` = the stage input, `u`, `stage`). */
  exits: exitsSchema.optional(),
  /** A per-input controller exported with the network (output `controller_scores`). */
  controller: controllerSchema.optional(),
});

/** One exported operating level. */
export type OnnxLevel = z.infer<typeof levelSchema>;

/** What a dynn ONNX file says about itself (stored in `metadata_props`, one JSON value per key). */
export type OnnxMetadata = z.infer<typeof metadataSchema>;

/** The metadata as ONNX `metadata_props` entries: `dynn.<field>` keys with JSON values. */
export function metadataProps(meta: OnnxMetadata): { key: string; value: string }[] {
  return Object.entries(meta).map(([k, v]) => ({ key: `dynn.${k}`, value: typeof v === 'string' ? v : JSON.stringify(v) }));
}

/**
 * Reads and validates the dynn metadata of ONNX bytes without decoding the weights. A file that is not
 * protobuf (corrupt, truncated) or not exported by dynn fails with a DynnError naming `source`.
 */
export function readOnnxMetadata(bytes: Uint8Array, source: string): OnnxMetadata {
  let props: { key: string; value: string }[];
  try {
    const msg = ModelMetadataOnly.toObject(ModelMetadataOnly.decode(bytes), { defaults: true }) as { metadata_props: { key: string; value: string }[] };
    props = msg.metadata_props;
  } catch (err) {
    throw new DynnError(`${source}: not a valid ONNX model (${(err as Error).message}); is the file truncated or corrupt?`);
  }
  const raw: Record<string, unknown> = {};
  for (const { key, value } of props) {
    if (!key.startsWith('dynn.')) continue;
    const field = key.slice('dynn.'.length);
    try {
      raw[field] = field === 'format' || field === 'dynnVersion' ? value : JSON.parse(value);
    } catch {
      throw new DynnError(`${source}: metadata entry ${key} is not valid JSON`);
    }
  }
  if (raw.format === undefined) throw new DynnError(`${source}: no dynn metadata; export the model with \`dynn export\``);
  const parsed = metadataSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DynnError(`${source}: invalid dynn metadata at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/**
 * The index (into `levels`) of the exported level that runs at utilization u: the most expensive level
 * whose `minU` is at most u, else the cheapest. The exported graph's `If` chain makes the same choice.
 */
export function levelIndexFor(levels: readonly OnnxLevel[], u: number): number {
  let i = 0;
  for (let j = 1; j < levels.length; j++) if (u >= levels[j].minU) i = j;
  return i;
}
