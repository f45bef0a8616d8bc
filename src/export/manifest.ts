import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { METADATA_LIMITS } from './metadata.js';

/**
 * The manifest of a dynamic model exported by segments (`dynn export RUN --onnx DIR` on a run with
 * per-sample gates): which ONNX graphs the folder holds, in what order they run, and what a sample's route
 * costs. TF-free: the Node and browser runtimes read it.
 */

/** Value of the manifest's `format` this dynn writes: /2 adds mixtures dispatched inside plain graphs and routers that give scores only. */
export const SEGMENTS_FORMAT = 'dynn-segments/2';

/** Every `format` this dynn reads (a /1 folder, written before /2, still loads). */
export const SEGMENTS_FORMATS = ['dynn-segments/1', SEGMENTS_FORMAT] as const;

/** The manifest's file name inside the folder. */
export const MANIFEST_FILE = 'manifest.json';

/** Input and output names of the segment graphs. */
export const SEGMENT_IO = {
  /** Every graph's input: the segment's input, NCHW float32 [batch, C, H, W] (the images for the first). */
  x: 'x',
  /** Body graphs: the number of inner groups to run, a float32 scalar in 0..groups. */
  k: 'k',
  /** Plain and body graphs' output: [batch, C, H, W], or [batch, classes] for the last segment. */
  y: 'y',
  /** Gate graphs' output: one logit per group, [batch, groups]. */
  logits: 'logits',
  /** Plain graphs with mixtures inside: each sample's experts, [batch, sum of the mixtures' k], float32. */
  routes: 'routes',
} as const;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits');

/** A graph file of the folder: a plain file name (no folder part, so it cannot name a file elsewhere). */
const graphRef = z.object({
  file: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*\.onnx$/, 'expected a plain .onnx file name inside the folder (letters, digits, . _ -)'),
  /** SHA-256 of the graph's initializers (`digest.ts`), checked at load. */
  weightsSha256: hex64,
});

const dim = z.number().int().positive().max(METADATA_LIMITS.maxDim);
/** A per-sample NCHW shape [C, H, W], or [features] after pooling. */
const sampleShape = z.array(dim).min(1).max(3);
const nonNegative = z.number().nonnegative();

/** A mixture of experts that dispatches inside its plain segment's graph (no capacity limit, `export/moe.ts`). */
const mixtureInfo = z.object({
  /** The mixture's name (its decisions' key; with k > 1, slot s is `<name>.k<s>`). */
  name: z.string().min(1),
  experts: z.number().int().min(1).max(METADATA_LIMITS.maxLevels),
  topK: z.number().int().min(1).max(METADATA_LIMITS.maxLevels),
  residual: z.boolean(),
  /** MACs of the router, and of each expert (a sample spends gateMacs plus its experts'). */
  gateMacs: nonNegative,
  expertMacs: z.array(nonNegative).min(1).max(METADATA_LIMITS.maxLevels),
});

const plainSegment = z.object({
  kind: z.literal('plain'),
  /** The layers it runs, first..last. */
  name: z.string().min(1),
  /** `x` -> `y`; with mixtures inside, also `routes`: their experts per sample, the mixtures' k columns in order. */
  graph: graphRef,
  /** The mixtures of experts dispatched inside the graph, in order (absent: none). */
  mixtures: z.array(mixtureInfo).min(1).max(METADATA_LIMITS.maxLevels).optional(),
  input: sampleShape,
  output: sampleShape,
});

const gatedSegment = z.object({
  kind: z.literal('gated'),
  /** The gated block's name (its decisions' key). */
  name: z.string().min(1),
  /** Inner groups G: the body runs k in 0..G of them. */
  groups: z.number().int().min(1).max(METADATA_LIMITS.maxLevels),
  /** MACs of the gate, and of one inner group (a sample running k groups spends gateMacs + k * groupMacs). */
  gateMacs: nonNegative,
  groupMacs: nonNegative,
  gate: graphRef,
  body: graphRef,
  input: sampleShape,
  output: sampleShape,
});

const switchSegment = z.object({
  kind: z.literal('switch'),
  /** The switch's name (its decisions' key). */
  name: z.string().min(1),
  /** MACs of the gate, and of each route (a sample taking route k spends gateMacs + routeMacs[k]). */
  gateMacs: nonNegative,
  routeMacs: z.array(nonNegative).min(2).max(METADATA_LIMITS.maxLevels),
  /** The gate: `x` -> `logits` [batch, routes - 1]. */
  gate: graphRef,
  /** One graph per route, ordered by cost: `x` -> `y`, everything from the switch point on. */
  routes: z.array(graphRef).min(2).max(METADATA_LIMITS.maxLevels),
  input: sampleShape,
  output: sampleShape,
});

const moeSegment = z.object({
  kind: z.literal('moe'),
  /** The mixture's name (its decisions' key; with k > 1, slot s is `<name>.k<s>`). */
  name: z.string().min(1),
  /** Experts E and the experts each sample runs, k in 1..E. */
  experts: z.number().int().min(1).max(METADATA_LIMITS.maxLevels),
  topK: z.number().int().min(1).max(METADATA_LIMITS.maxLevels),
  /** The capacity factor at evaluation: an expert takes at most ceil(cf k n / E) rows of a batch of n; absent: no limit. */
  capacityFactor: z.number().positive().max(1e6).optional(),
  overflow: z.enum(['residual', 'next']),
  /** Which rows an expert serves first when full (`RoutingPriority`); absent: batch order. */
  priority: z.enum(['batch', 'score']).optional(),
  /** Whether the block adds its input to the experts' combined output. */
  residual: z.boolean(),
  /** MACs of the router, and of each expert (a sample spends gateMacs plus its experts'). */
  gateMacs: nonNegative,
  expertMacs: z.array(nonNegative).min(1).max(METADATA_LIMITS.maxLevels),
  /** The router: `x` -> `logits` [batch, routerOutputs]: the experts' scores (then, from older exports, their noise scales, which inference ignores). */
  gate: graphRef,
  /** The router graph's outputs: E (the scores alone), or absent for 2E (folders written before dynn-segments/2). */
  routerOutputs: z.number().int().min(1).max(2 * METADATA_LIMITS.maxLevels).optional(),
  /** One graph per expert: `x` -> `y` (with `stacked`, for batches whose padding would not pay: `stackPays`). */
  expertGraphs: z.array(graphRef).max(METADATA_LIMITS.maxLevels),
  /** Alike experts as one graph: `x` [E, rows, ...input] -> `y` [E, rows, ...output], block e through expert e (batched MatMul on stacked weights). */
  stacked: graphRef.optional(),
  input: sampleShape,
  output: sampleShape,
});

const spatialSegment = z.object({
  kind: z.literal('spatial'),
  /** The spatially gated block's name (its decisions' key). */
  name: z.string().min(1),
  /** Output positions per sample (H * W): a decision each. */
  positions: z.number().int().positive(),
  /**
   * MACs of the gate, and of conv1 and conv2 at one position: a sample spends gateMacs + its conv1
   * positions * conv1Macs + its conv2 positions * conv2Macs (the graph's `computed` output).
   */
  gateMacs: nonNegative,
  conv1Macs: nonNegative,
  conv2Macs: nonNegative,
  /** `x`, `cut` (the threshold's logit) -> `y`, `computed` ([batch, 2]: the positions conv1 and conv2 ran). */
  graph: graphRef,
  input: sampleShape,
  output: sampleShape,
});

const manifestSchema = z
  .object({
    format: z.enum(SEGMENTS_FORMATS),
    dynnVersion: z.string(),
    model: z.object({ model: z.string().min(1), args: z.record(z.string(), z.unknown()) }),
    input: z.object({ layout: z.literal('NCHW'), shape: z.array(dim).length(3) }),
    numClasses: z.number().int().min(2).max(METADATA_LIMITS.maxClasses),
    classNames: z.array(z.string()),
    /** The gates' inference threshold (the run's trained one unless the export chose another). */
    threshold: z.number().min(0).max(1),
    /**
     * MACs per sample that do not depend on its route (`fixed`: stem, shortcuts, head), and of the backbone
     * with nothing skipped and no gate (`backbone`): a sample's executed FLOPs ratio is
     * (fixed + its gated blocks' spending) / backbone, as TF.js's `routedMacs` counts it.
     */
    macs: z.object({ fixed: nonNegative, backbone: z.number().positive() }),
    segments: z.array(z.discriminatedUnion('kind', [plainSegment, gatedSegment, switchSegment, moeSegment, spatialSegment])).min(1).max(METADATA_LIMITS.maxLevels),
  })
  .superRefine((m, ctx) => {
    const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
    if (m.classNames.length !== m.numClasses) issue(['classNames'], `${m.classNames.length} class names for numClasses ${m.numClasses}`);
    const files = new Set<string>();
    m.segments.forEach((s, i) => {
      const want = i === 0 ? m.input.shape : m.segments[i - 1].output;
      if (s.input.join() !== want.join()) issue(['segments', i, 'input'], `[${s.input}] does not follow [${want}]`);
      if (s.kind === 'gated' && (s.input.length !== 3 || s.output.length !== 3)) issue(['segments', i], 'a gated block maps [C, H, W] to [C, H, W]');
      if (s.kind === 'spatial' && (s.input.length !== 3 || s.input.join() !== s.output.join() || s.positions !== s.input[1] * s.input[2])) issue(['segments', i], 'a spatially gated block keeps its [C, H, W] shape and has H * W positions');
      if (s.kind === 'switch' && s.routes.length !== s.routeMacs.length) issue(['segments', i, 'routes'], `${s.routes.length} route graphs for ${s.routeMacs.length} route costs`);
      (s.kind === 'plain' ? (s.mixtures ?? []) : []).forEach((mx, j) => {
        if (mx.expertMacs.length !== mx.experts) issue(['segments', i, 'mixtures', j, 'expertMacs'], `${mx.expertMacs.length} expert costs for ${mx.experts} experts`);
        if (mx.topK > mx.experts) issue(['segments', i, 'mixtures', j, 'topK'], `top-k ${mx.topK} exceeds the ${mx.experts} experts`);
      });
      if (s.kind === 'moe') {
        if (s.stacked && s.expertGraphs.length === 0) issue(['segments', i, 'expertGraphs'], 'a stacked mixture exported without its per-expert graphs (by an earlier dynn); export the run again');
        else if (s.expertGraphs.length !== s.experts) issue(['segments', i, 'expertGraphs'], `${s.expertGraphs.length} expert graphs and ${s.expertMacs.length} expert costs for ${s.experts} experts`);
        if (s.expertMacs.length !== s.experts) issue(['segments', i, 'expertMacs'], `${s.expertGraphs.length} expert graphs and ${s.expertMacs.length} expert costs for ${s.experts} experts`);
        if (s.topK > s.experts) issue(['segments', i, 'topK'], `top-k ${s.topK} exceeds the ${s.experts} experts`);
        if (s.routerOutputs !== undefined && s.routerOutputs !== s.experts) issue(['segments', i, 'routerOutputs'], `a router gives the scores of the ${s.experts} experts, not ${s.routerOutputs}`);
        if (s.residual && s.input.join() !== s.output.join()) issue(['segments', i, 'residual'], `a residual mixture keeps its shape, [${s.input}] is not [${s.output}]`);
      }
      for (const g of segmentGraphs(s)) {
        if (files.has(g.file)) issue(['segments', i], `file ${g.file} is named twice`);
        files.add(g.file);
      }
    });
    const last = m.segments[m.segments.length - 1].output;
    if (last.join() !== String(m.numClasses)) issue(['segments', m.segments.length - 1, 'output'], `the last segment gives [${last}], not the [${m.numClasses}] class scores`);
  });

/** The graph files a segment names. */
export function segmentGraphs(s: z.infer<typeof plainSegment> | z.infer<typeof gatedSegment> | z.infer<typeof switchSegment> | z.infer<typeof moeSegment> | z.infer<typeof spatialSegment>): z.infer<typeof graphRef>[] {
  return s.kind === 'plain' || s.kind === 'spatial' ? [s.graph] : s.kind === 'gated' ? [s.gate, s.body] : s.kind === 'moe' ? [s.gate, ...s.expertGraphs, ...(s.stacked ? [s.stacked] : [])] : [s.gate, ...s.routes];
}

/** What `manifest.json` of a segmented export says. */
export type SegmentsManifest = z.infer<typeof manifestSchema>;
/** One segment of the manifest. */
export type SegmentEntry = SegmentsManifest['segments'][number];

/** Parses and validates a manifest's text (untrusted), with a DynnError naming `source` and the first bad field. */
export function parseManifest(text: string, source: string): SegmentsManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DynnError(`${source}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DynnError(`${source}: invalid segments manifest at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

/**
 * The executed FLOPs ratio of each sample from its decisions per deciding segment (`counts[j]` for the j-th
 * gated, switch or spatial one: inner groups, the route taken, or positions computed; a mixture, a segment
 * of its own or inside a plain one, gives k of them, each sample's expert per slot or -1 where it
 * overflowed) and, per spatial segment, what its graph
 * reports it computed (`computed[k]` for the k-th: [batch, 2], conv1's and conv2's positions).
 */
export function routedRatios(m: SegmentsManifest, counts: Int32Array[], batch: number, computed: Float32Array[] = []): Float64Array {
  const out = new Float64Array(batch).fill(m.macs.fixed);
  let j = 0;
  let k = 0;
  const mixture = (mx: { topK: number; gateMacs: number; expertMacs: number[] }) => {
    for (let i = 0; i < batch; i++) out[i] += mx.gateMacs;
    for (let slot = 0; slot < mx.topK; slot++) counts[j++].forEach((e, i) => e >= 0 && (out[i] += mx.expertMacs[e]));
  };
  for (const s of m.segments) {
    if (s.kind === 'plain') {
      s.mixtures?.forEach(mixture);
      continue;
    }
    if (s.kind === 'moe') {
      mixture(s);
      continue;
    }
    const c = counts[j++];
    const spatial = s.kind === 'spatial' ? computed[k++] : null;
    for (let i = 0; i < batch; i++) {
      out[i] += s.gateMacs + (s.kind === 'gated' ? c[i] * s.groupMacs : s.kind === 'switch' ? s.routeMacs[c[i]] : spatial![2 * i] * s.conv1Macs + spatial![2 * i + 1] * s.conv2Macs);
    }
  }
  return out.map((v) => v / m.macs.backbone);
}
