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
  /** Early-exit models with their rule in the graph: float64 [exits - 1], one threshold per intermediate exit. */
  exitThresholds: 'exit_thresholds',
  /** Early-exit models with their rule in the graph: the exit each sample's scores come from, float32 [batch]. */
  exits: 'exits',
  /** Models exported with a controller: its action logits, [batch, actions]. */
  controller: 'controller_scores',
  /** Models exported with a temporal controller: the action index each sample ran at, float32 [batch]. */
  action: 'action',
  /** Temporal controllers over (u, r): the input resolution (height) the batch runs at, float32 scalar. */
  resolution: 'resolution',
} as const;

/**
 * What a temporal controller reads of the frame that just ran, in order (`control/temporal.ts`): its class
 * probabilities (softmax of `scores`), their top, the margin top minus second, the entropy over log(classes),
 * and the one-hot of the action it ran at. The exported graph computes them from `scores` and `action`.
 */
export const TEMPORAL_FEATURES = ['probabilities', 'top', 'margin', 'normalizedEntropy', 'actionOneHot'] as const;

/** Bounds on what a model file may claim, so a corrupt or hostile file cannot make the runtime allocate absurdly. */
export const METADATA_LIMITS = {
  /** Largest image side or channel count. */
  maxDim: 65536,
  /** Most values in one input sample (C x H x W). */
  maxSampleValues: 2 ** 26,
  maxClasses: 1_000_000,
  maxLevels: 4096,
  maxExits: 1024,
} as const;

/** A cost or count: a finite number >= 0 (zod 4 refuses NaN and infinities). */
const nonNegative = z.number().nonnegative();

const levelSchema = z.object({
  /** The utilization this level was exported for (its representative; what `run` reports as used). */
  u: z.number().gt(0).lte(1),
  /** The network's operating level (BatchNorm statistics row; active groups or blocks). */
  level: z.number().int().nonnegative(),
  /** The smallest u that reaches this level under dynn's rounding rule; the graph's branch threshold. */
  minU: z.number().gt(0).lte(1),
  flops: nonNegative,
  macs: nonNegative,
  /** Active parameters. */
  params: nonNegative,
  /** flops / FLOPs at u = 1. */
  flopsRatio: nonNegative,
  /** Early-exit models: FLOPs of a sample that leaves at each exit (segments and exit classifiers passed). */
  exitFlops: z.array(nonNegative).optional(),
});

const exitsSchema = z.object({
  /** Exits, the final classifier included: the graph runs one stage per exit. */
  count: z.number().int().min(2).max(METADATA_LIMITS.maxExits),
  /** The fitted exit policy stored by `dynn fit-exits --save`, the runtime's default. */
  policy: z.object({ rule: z.string().min(1), thresholds: z.array(z.number()) }).optional(),
  /**
   * The exit rule lowered into the graph (stage -2 runs every stage in one run, the input `exit_thresholds`
   * feeds the thresholds); absent where the runtime runs the stages in turn.
   */
  inGraph: z.object({ rule: z.string().min(1) }).optional(),
});

const controllerSchema = z.object({
  /** The utilization each controller output stands for, ascending. */
  actions: z.array(z.number().gt(0).lte(1)).min(1).max(METADATA_LIMITS.maxLevels),
  /** Cost of one decision: added to every sample's cost. */
  flops: nonNegative,
  macs: nonNegative,
  /** flops / the network's FLOPs at u = 1. */
  flopsRatio: nonNegative,
  /**
   * A temporal controller (`controller_scores` plans the next frame from this one's scores and the graph
   * input `action`), not a per-input one: where a stream starts and what the controller reads.
   */
  temporal: z
    .object({
      /** The action index a stream's first frame runs at. */
      start: z.number().int().nonnegative(),
      /** The feature layout, `TEMPORAL_FEATURES`. */
      features: z.array(z.string()),
      /** Actions (u, r): each action's input resolution (height), fed as the graph input `resolution`. */
      resolutions: z.array(z.number().int().positive().max(METADATA_LIMITS.maxDim)).optional(),
      /** With `resolutions`: the network's FLOPs ratio at each action (u at its resolution). */
      actionFlopsRatios: z.array(nonNegative).optional(),
    })
    .optional(),
});

const metadataSchema = z
  .object({
    format: z.literal(ONNX_FORMAT),
    dynnVersion: z.string(),
    model: z.object({ model: z.string().min(1), args: z.record(z.string(), z.unknown()) }),
    /** The image input: NCHW float32, per-sample shape [C, H, W]. */
    input: z.object({
      name: z.literal(ONNX_IO.images),
      layout: z.literal('NCHW'),
      shape: z.array(z.number().int().positive().max(METADATA_LIMITS.maxDim)).length(3),
    }),
    numClasses: z.number().int().min(2).max(METADATA_LIMITS.maxClasses),
    classNames: z.array(z.string()),
    /** Exported levels, cheapest first. */
    levels: z.array(levelSchema).min(1).max(METADATA_LIMITS.maxLevels),
    /**
     * Early-exit models: the graph runs stage by stage (inputs `images` = the stage input, `u`, `stage`), and
     * with `inGraph` also every stage in one run (stage -2; input `exit_thresholds`, output `exits`).
     */
    exits: exitsSchema.optional(),
    /**
     * A dynamic model exported by segments (a folder with `manifest.json`, see `manifest.ts`): its gates'
     * threshold and gated blocks. Never stored in a file's metadata; the runtime derives it from the manifest.
     */
    routed: z.object({ threshold: z.number().min(0).max(1), gatedBlocks: z.number().int().min(1) }).optional(),
    /** A per-input controller exported with the network (output `controller_scores`). */
    controller: controllerSchema.optional(),
    /**
     * SHA-256 of the model's initializers (see `export/digest.ts`), checked at load. Absent in models exported
     * before dynn stored it: those load unverified.
     */
    weightsSha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits').optional(),
  })
  .superRefine((m, ctx) => {
    const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
    const values = m.input.shape.reduce((a, b) => a * b, 1);
    if (values > METADATA_LIMITS.maxSampleValues) issue(['input', 'shape'], `[${m.input.shape}] is ${values} values per sample; at most ${METADATA_LIMITS.maxSampleValues}`);
    if (m.classNames.length !== m.numClasses) issue(['classNames'], `${m.classNames.length} class names for numClasses ${m.numClasses}`);
    m.levels.forEach((l, i) => {
      if (l.minU > l.u) issue(['levels', i, 'minU'], `minU ${l.minU} is above the level's u ${l.u}`);
      const prev = m.levels[i - 1];
      if (prev && !(l.level > prev.level && l.u > prev.u && l.minU > prev.minU)) {
        issue(['levels', i], 'levels must be strictly increasing (level, u and minU), cheapest first');
      }
      if (m.exits && l.exitFlops?.length !== m.exits.count) issue(['levels', i, 'exitFlops'], `needs one value per exit (${m.exits.count})`);
    });
    const policy = m.exits?.policy;
    if (m.exits && policy && policy.thresholds.length !== m.exits.count - 1) {
      issue(['exits', 'policy', 'thresholds'], `${policy.thresholds.length} thresholds for ${m.exits.count - 1} intermediate exits`);
    }
    if (m.exits?.inGraph && m.exits.inGraph.rule !== policy?.rule) issue(['exits', 'inGraph', 'rule'], `the graph's exit rule ${m.exits.inGraph.rule} is not the stored policy's (${policy?.rule ?? 'none'})`);
    const actions = m.controller?.actions ?? [];
    const temporal = m.controller?.temporal;
    const rs = temporal?.resolutions;
    if (rs) {
      // Operating points (u, r): a u repeats, once per resolution.
      if (rs.length !== actions.length) issue(['controller', 'temporal', 'resolutions'], `${rs.length} resolutions for ${actions.length} actions`);
      else if (actions.some((a, i) => i > 0 && (a < actions[i - 1] || (a === actions[i - 1] && rs[i] <= rs[i - 1])))) issue(['controller', 'actions'], 'actions (u, r) must be strictly increasing by u, then r');
      if (rs.some((r) => r > m.input.shape[1])) issue(['controller', 'temporal', 'resolutions'], `a resolution above the input's height ${m.input.shape[1]}`);
      if (temporal.actionFlopsRatios?.length !== actions.length) issue(['controller', 'temporal', 'actionFlopsRatios'], `needs one value per action (${actions.length})`);
    } else if (actions.some((a, i) => i > 0 && a <= actions[i - 1])) issue(['controller', 'actions'], 'actions must be strictly increasing');
    if (temporal && temporal.start >= actions.length) issue(['controller', 'temporal', 'start'], `start action ${temporal.start} is not one of the ${actions.length} actions`);
    if (temporal && temporal.features.join() !== TEMPORAL_FEATURES.join()) {
      issue(['controller', 'temporal', 'features'], `unknown feature layout [${temporal.features.join(', ')}]; this dynn reads [${TEMPORAL_FEATURES.join(', ')}]`);
    }
    if (temporal && m.exits) issue(['controller', 'temporal'], 'a temporal controller is not exported with early exits');
  });

/** One exported operating level. */
export type OnnxLevel = z.infer<typeof levelSchema>;

/** What a dynn ONNX file says about itself (stored in `metadata_props`, one JSON value per key). */
export type OnnxMetadata = z.infer<typeof metadataSchema>;

/** Fields stored as plain strings, not JSON (what `metadataProps` writes for a string value). */
const STRING_FIELDS = new Set(['format', 'dynnVersion', 'weightsSha256']);

/** The metadata as ONNX `metadata_props` entries: `dynn.<field>` keys with JSON values. */
export function metadataProps(meta: OnnxMetadata): { key: string; value: string }[] {
  return Object.entries(meta)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => ({ key: `dynn.${k}`, value: typeof v === 'string' ? v : JSON.stringify(v) }));
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
  return parseMetadataProps(props, source);
}

/**
 * Validates the `dynn.*` entries of a model's `metadata_props` (untrusted: types, ranges, and that levels,
 * class names, exits and actions agree), with a DynnError naming `source` and the first bad field.
 */
export function parseMetadataProps(props: readonly { key?: string; value?: string }[], source: string): OnnxMetadata {
  // No prototype: a key `dynn.__proto__` must stay a plain field.
  const raw: Record<string, unknown> = Object.create(null);
  for (const { key = '', value = '' } of props) {
    if (!key.startsWith('dynn.')) continue;
    const field = key.slice('dynn.'.length);
    try {
      raw[field] = STRING_FIELDS.has(field) ? value : JSON.parse(value);
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
