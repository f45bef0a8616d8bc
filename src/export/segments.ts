import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { NamedArray, Network } from '../models/network.js';
import type { Layer } from '../layers/layer.js';
import { fullSel } from '../layers/select.js';
import type { ChannelSel, Plan, Shape } from '../layers/types.js';
import { GatedDenseUnit } from '../route/dense.js';
import { GatedResidualBlock } from '../route/residual.js';
import { WidthSwitch } from '../route/width.js';
import { WholeSwitch } from '../route/whole.js';
import { MoeBlock } from '../route/moe.js';
import { SpatialResidualBlock } from '../route/spatial.js';
import { lowerSpatial } from './spatial.js';
import { dispatchesInGraph, lowerRouterScores } from './moe.js';
import { gateMacsOf, innerPlan } from '../route/unit.js';
import { checkGateThreshold } from '../route/modes.js';
import { DynnError } from '../util/errors.js';
import { VERSION } from '../version.js';
import { addWeights, selectBranch, weightsSha256 } from './export.js';
import { attr, floatValueInfo, GraphBuilder, NameScope, rowCount } from './graph.js';
import { lowerResize } from './lower.js';
import { lowerAnyChain, lowerChain, lowerResidual, scaledLogits, type BranchContext, type LoweredMixture } from './lower.js';
import { encodeModel, IR_VERSION, OPSET_VERSION, type GraphMsg } from './onnx-proto.js';
import { MANIFEST_FILE, SEGMENT_IO, SEGMENTS_FORMAT, SEGMENTS_FORMATS, type SegmentEntry, type SegmentsManifest } from './manifest.js';

/** Options of `exportSegments`. */
export interface SegmentsOptions {
  /** Class names stored in the manifest (default "0", "1", ...). */
  classNames?: string[];
  /** The gates' inference threshold (default 0.5; `dynn export` passes the run's trained one). */
  threshold?: number;
}

/** A segmented export: the manifest and the bytes of each graph file it names. */
export interface SegmentsExport {
  manifest: SegmentsManifest;
  files: Map<string, Uint8Array>;
}

/** NCHW dims of a per-sample TF.js shape ([H, W, C] or [F]). */
const nchw = (s: Shape): number[] => (s.length === 3 ? [s[2], s[0], s[1]] : [...s]);
const batchDims = (s: Shape): (number | string)[] => ['batch', ...nchw(s)];

/** One ONNX model of the folder, whose initializers are the named weights in ONNX layout. */
export class SegmentGraph {
  readonly names = new NameScope();
  readonly g: GraphBuilder;
  readonly dims = new Map<string, number[]>();

  /** `weights`: the network's (`getWeights()`, read once per export); only those of `layers` are stored. */
  constructor(name: string, weights: NamedArray[], layers: Layer[]) {
    this.g = new GraphBuilder(name, this.names);
    const own = new Set(layers.flatMap((l) => l.weights().map((w) => w.name)));
    addWeights(this.g, weights.filter((w) => own.has(w.name)), this.dims);
  }

  ctx(plan: Plan, prefix: string, g: GraphBuilder = this.g): BranchContext {
    return { g, plan, prefix, dims: this.dims };
  }

  /** The model's bytes and the weights digest of its initializers. */
  finish(doc: string): { bytes: Uint8Array; weightsSha256: string } {
    const graph = this.g.build();
    const bytes = encodeModel({ ir_version: IR_VERSION, opset_import: [{ domain: '', version: OPSET_VERSION }], producer_name: 'dynn', producer_version: VERSION, doc_string: doc, graph, metadata_props: [{ key: 'dynn.segmentOf', value: SEGMENTS_FORMAT }] });
    return { bytes, weightsSha256: weightsSha256(graph) };
  }
}

export type { SwitchRoute } from '../route/switch.js';
import type { SwitchRoute } from '../route/switch.js';

/** The gated units that export by segments. */
export type GatedBlock = GatedResidualBlock | GatedDenseUnit;
const isGatedBlock = (l: Layer): l is GatedBlock => l instanceof GatedResidualBlock || l instanceof GatedDenseUnit;
/** Layers that are a segment of their own: gated units, switches, spatially gated blocks and mixtures the runtime dispatches (with a capacity limit; the others dispatch inside a plain graph, `export/moe.ts`). */
const isDeciding = (l: Layer): boolean => isGatedBlock(l) || isSwitch(l) || (l instanceof MoeBlock && !dispatchesInGraph(l)) || l instanceof SpatialResidualBlock;
const isSwitch = (l: Layer): l is WidthSwitch | WholeSwitch<never> => l instanceof WidthSwitch || l instanceof WholeSwitch;

/** A switch as export by segments lowers it: a gate graph (after an optional resize of `x`) and one graph per route. */
interface SwitchParts {
  gate: Layer;
  gateResize?: [number, number];
  routeMacs: number[];
  route(k: number): SwitchRoute;
}

function switchParts(sw: WidthSwitch | WholeSwitch<never>, sel: ChannelSel, full: Plan): SwitchParts {
  if (sw instanceof WholeSwitch) return { gate: sw.gate, gateResize: sw.gateResize(), routeMacs: Array.from({ length: sw.routes }, (_, k) => sw.routeMacs(k)), route: (k) => sw.exportRoute(k) };
  return { gate: sw.gate, routeMacs: sw.routeMacs(sel, full), route: (k) => ({ layers: sw.tail, plan: sw.routePlan(full, k), label: `the rest of the network at ${sw.routeGroups(k)} groups` }) };
}

/**
 * A mixture's alike experts as one graph (`StackedExperts`): per dense layer one batched MatMul on the experts'
 * kernels stacked [E, in, out] (initializer `<layer of expert 0 without .e0>.stacked.kernel`) plus the biases
 * [E, 1, out]; ReLUs between. ONNX Runtime packs the stacked weights once at load.
 */
function stackedGraph(weights: NamedArray[], mb: MoeBlock): SegmentGraph {
  const E = mb.experts;
  const sg = new SegmentGraph(`${mb.name}_experts`, [], []);
  const byName = new Map(weights.map((w) => [w.name, w]));
  const chains = mb.expertChains;
  sg.g.input(floatValueInfo(SEGMENT_IO.x, [E, 'rows', ...nchw(mb.inShape)]));
  let y: string = SEGMENT_IO.x;
  chains[0].forEach((layer, i) => {
    const base = layer.name.replace(`${mb.name}.e0.`, `${mb.name}.stacked.`);
    const step = mb.stack!.steps[i];
    if (step.kind === 'relu') {
      y = sg.g.node('Relu', [y], base);
      return;
    }
    const stackOf = (suffix: string, dims: number[]) => {
      const parts = chains.map((c) => byName.get(`${c[i].name}.${suffix}`)!.data);
      const data = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      parts.reduce((o, p) => (data.set(p, o), o + p.length), 0);
      return sg.g.floatInit(`${base}.${suffix}`, dims, data);
    };
    const [inC, outC] = step.kernels[0].shape;
    y = sg.g.node('MatMul', [y, stackOf('kernel', [E, inC, outC])], `${base}/matmul`);
    if (step.biases) y = sg.g.node('Add', [y, stackOf('bias', [E, 1, outC])], `${base}/bias`);
  });
  sg.g.nodeTo('Identity', [y], SEGMENT_IO.y);
  sg.g.output(floatValueInfo(SEGMENT_IO.y, [E, 'rows', ...nchw(mb.outShape)]));
  return sg;
}

/** Splits the network's top-level layers into runs of plain layers and single gated blocks. */
function splitLayers(model: Network): Layer[][] {
  const parts: Layer[][] = [];
  for (const l of model.layers) {
    const prev = parts[parts.length - 1];
    if (isDeciding(l) || !prev || isDeciding(prev[0])) parts.push([l]);
    else prev.push(l);
  }
  return parts;
}

/** A dense unit's children without its gate: BN-ReLU on the input (every route), then the 1x1, BN-ReLU, 3x3 (a route's groups). */
function denseParts(unit: GatedDenseUnit): { pre: Layer[]; routed: Layer[] } {
  const kids = unit.children().filter((l) => l !== unit.gate);
  return { pre: kids.slice(0, 2), routed: kids.slice(2) };
}

/**
 * What every branch of a block's body shares, lowered once before the `If` chain: a dense unit's BN-ReLU on
 * its input at the full plan (TF.js runs it once on the whole batch); nothing for a residual block.
 */
function lowerShared(block: GatedBlock, x: string, sel: ChannelSel, ctx: BranchContext): string {
  return block instanceof GatedDenseUnit ? lowerAnyChain(denseParts(block).pre, x, sel, ctx).y : x;
}

/**
 * The body of a gated block at k inner groups, as TF.js's routed pass runs it. A residual block: the
 * shortcut at the full plan, the main path at the block's plan of k groups (BatchNorm row k); k = 0 is
 * relu(shortcut) alone. A dense unit: concat(x, new channels), the new channels the 1x1, BN-ReLU and 3x3 at k
 * groups over `shared` (its BN-ReLU'd input); k = 0 gives zeros for them, computing nothing.
 */
function lowerBody(block: GatedBlock, x: string, shared: string, sel: ChannelSel, k: number, full: Plan, ctx: (plan: Plan) => BranchContext): string {
  if (block instanceof GatedResidualBlock) return lowerResidual(block, x, sel, ctx(full), k === 0 ? null : ctx(innerPlan(full, block, k))).y;
  const c = ctx(innerPlan(full, block, k));
  const base = `${c.prefix}/${block.name}`;
  const [h, w] = block.outShape;
  let added: string;
  if (k === 0) {
    const batch = rowCount(c.g, x, `${base}/batch`);
    const dims = c.g.node('Concat', [batch, c.g.int64Const(`${base}/dims`, [block.args.growth, h, w])], `${base}/zeros_shape`, { axis: attr.int(0) });
    added = c.g.node('ConstantOfShape', [dims], `${base}/zeros`);
  } else added = lowerAnyChain(denseParts(block).routed, shared, sel, c).y;
  return c.g.node('Concat', [x, added], base, { axis: attr.int(1) });
}

/**
 * The graph of a gate reading `sel` of its input at full width: `x` -> `logits` [batch, outputs], its logit
 * scale applied; with `resize`, `x` (of `inShape`) is resized first (adaptive resolution's glimpse).
 */
function gateSegment(weights: NamedArray[], owner: string, gateLayer: Layer, outputs: number, sel: ChannelSel, full: Plan, resize?: { inShape: Shape; size: [number, number] }): SegmentGraph {
  const gate = new SegmentGraph(`${owner}_gate`, weights, [gateLayer]);
  gate.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(resize ? resize.inShape : gateLayer.inShape)));
  const x = resize ? lowerResize(gate.g, SEGMENT_IO.x, resize.size[0], resize.size[1], 'gate/glimpse') : SEGMENT_IO.x;
  const z = lowerChain(gateLayer.children(), x, sel, gate.ctx(full, 'gate')).y;
  gate.g.nodeTo('Identity', [scaledLogits(gate.g, gateLayer, z, 'gate')], SEGMENT_IO.logits);
  gate.g.output(floatValueInfo(SEGMENT_IO.logits, ['batch', outputs]));
  return gate;
}

/**
 * The body graph of a gated block: inputs `x` and `k`, an `If` chain over k = 0..G that takes the largest
 * branch j with k >= j - 0.5 (a float k needs no exact comparison). With `only`, the graph of that one k instead
 * (input `x` alone, no `If`): the one-graph-per-k layout `bench/segments.ts` compares it with.
 */
export function bodyGraph(weights: NamedArray[], block: GatedBlock, sel: ChannelSel, full: Plan, only?: number): SegmentGraph {
  const G = block.groups;
  const gateLayer = block.gate;
  const body = new SegmentGraph(`${block.name}_body`, weights, block.children().filter((l) => l !== gateLayer));
  body.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(block.inShape)));
  const outInfo = (name: string) => floatValueInfo(name, batchDims(block.outShape));
  const shared = lowerShared(block, SEGMENT_IO.x, sel, body.ctx(full, 'shared'));
  if (only !== undefined) {
    body.g.nodeTo('Identity', [lowerBody(block, SEGMENT_IO.x, shared, sel, only, full, (plan) => body.ctx(plan, `k${only}`))], SEGMENT_IO.y);
    body.g.output(outInfo(SEGMENT_IO.y));
    return body;
  }
  body.g.input(floatValueInfo(SEGMENT_IO.k, [], `inner groups to run, 0..${G}`));
  const conds = Array.from({ length: G + 1 }, (_, k) => (k === 0 ? '' : body.g.node('GreaterOrEqual', [SEGMENT_IO.k, body.g.floatConst(`k_${k}`, [], [k - 0.5])], `at_least_${k}`)));
  const branch = (k: number): GraphMsg => {
    const g = new GraphBuilder(`groups_${k}`, body.names);
    g.output(outInfo(lowerBody(block, SEGMENT_IO.x, shared, sel, k, full, (plan) => body.ctx(plan, `k${k}`, g))));
    return g.build(`${k} of ${G} inner groups`);
  };
  selectBranch(body.g, conds, branch, [SEGMENT_IO.y], true, outInfo, 'groups');
  body.g.output(outInfo(SEGMENT_IO.y));
  return body;
}

/**
 * Exports a network with per-sample gated blocks (`--dynamic acs-gn|acs-dg`: resnet38's residual blocks,
 * densenet41/53's dense units) by segments: the runs of plain
 * layers between gated blocks (the stem, the head) as one graph each, and per gated block a gate graph
 * (`x` -> `logits`) and a body graph (`x`, `k` -> `y`). The body keeps the block's weights once, at full
 * size, and an `If` chain over k = 0..G whose branch k slices them with constant bounds (BatchNorm row k):
 * ONNX Runtime folds the slices at load, so each branch's convolutions run pre-packed at exactly k groups,
 * and k = 0 is the shortcut alone (a dense unit: its input and zero new channels). The runtime runs the gate, counts groups with the shared rule
 * (`route/count.ts`), partitions the batch by count and runs each part's body once. A width switch
 * (`--dynamic width`) is a gate graph (`x` -> K - 1 logits) and one graph per route, the rest of the network at
 * that route's width (`x` -> `y`); the runtime dispatches each route's rows to its graph the same way.
 */
export function exportSegments(model: Network, options: SegmentsOptions = {}): SegmentsExport {
  if (!model.gated) throw new DynnError(`${model.config.model} has no per-sample gates; export it as one ONNX file`);
  if (model.inputShape.length !== 3) throw new DynnError(`export needs an image model ([H, W, C] input), got [${model.inputShape}]`);
  // Segments know gated residual blocks and dense units with nested decisions; anything else gated would be lowered as a plain layer.
  const gatedLayers = new Set(model.cost(1).layers.filter((c) => c.gate && c.routed).map((c) => c.routed!));
  for (const l of model.layers) {
    if (!gatedLayers.has(l.name)) continue;
    if (isSwitch(l) || l instanceof MoeBlock || l instanceof SpatialResidualBlock) continue;
    if (!isGatedBlock(l)) throw new DynnError(`${model.config.model}: ${l.name} (${l.className}) has no export by segments yet; only gated residual blocks (resnet38), gated dense units (densenet41/53), spatially gated blocks, mixtures of experts and width switches export`);
    if (l.decisions !== 'nested') throw new DynnError(`${l.name} decides per channel (--decisions ${l.decisions}), a masked fidelity mode that does not export; train with nested decisions to deploy`);
  }
  const threshold = options.threshold ?? 0.5;
  checkGateThreshold(threshold);
  const classNames = options.classNames ?? Array.from({ length: model.numClasses }, (_, i) => String(i));
  if (classNames.length !== model.numClasses) throw new DynnError(`${classNames.length} class names given for a model with ${model.numClasses} classes`);
  const full = model.plan(1);
  const weights = model.getWeights();
  const files = new Map<string, Uint8Array>();
  const segments: SegmentEntry[] = [];
  let sel = fullSel(model.inputShape[2]);
  splitLayers(model).forEach((layers, i) => {
    const tag = String(i).padStart(2, '0');
    const first = layers[0];
    const last = layers[layers.length - 1];
    const input = nchw(first.inShape);
    const output = nchw(last.outShape);
    const add = (suffix: string, sg: SegmentGraph, doc: string) => {
      const file = `${tag}-${first.name}${suffix}.onnx`;
      const { bytes, weightsSha256 } = sg.finish(doc);
      files.set(file, bytes);
      return { file, weightsSha256 };
    };
    if (isSwitch(first)) {
      const sw = first;
      const K = sw.routes;
      const parts = switchParts(sw, sel, full);
      const gate = gateSegment(weights, sw.name, parts.gate, K - 1, fullSel(parts.gate.inShape[2]), full, parts.gateResize && { inShape: sw.inShape, size: parts.gateResize });
      const routes = Array.from({ length: K }, (_, k) => {
        const r = parts.route(k);
        try {
          const sg = new SegmentGraph(`${sw.name}_route_${k}`, weights, r.layers);
          sg.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(sw.inShape)));
          const x = r.resize ? lowerResize(sg.g, SEGMENT_IO.x, r.resize[0], r.resize[1], `r${k}/resize`) : SEGMENT_IO.x;
          sg.g.nodeTo('Identity', [lowerChain(r.layers, x, sel, sg.ctx(r.plan, `r${k}`)).y], SEGMENT_IO.y);
          sg.g.output(floatValueInfo(SEGMENT_IO.y, batchDims(sw.outShape)));
          return add(`.route${k}`, sg, `dynn route ${k} of ${sw.name}: ${r.label}`);
        } finally {
          r.release?.();
        }
      });
      segments.push({
        kind: 'switch',
        name: sw.name,
        gateMacs: gateMacsOf(parts.gate, fullSel(parts.gate.inShape[2])),
        routeMacs: parts.routeMacs,
        gate: add('.gate', gate, `dynn gate of ${sw.name}: x -> ${K - 1} logits`),
        routes,
        input,
        output,
      });
    } else if (first instanceof MoeBlock && !dispatchesInGraph(first)) {
      const mb = first;
      const E = mb.experts;
      // The router's E scores alone (what its cost counts; older folders' routers also gave the noise scales).
      const gate = new SegmentGraph(`${mb.name}_gate`, weights, [mb.gate]);
      gate.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(mb.inShape)));
      gate.g.nodeTo('Identity', [lowerRouterScores(mb, SEGMENT_IO.x, sel, gate.ctx(full, 'gate'))], SEGMENT_IO.logits);
      gate.g.output(floatValueInfo(SEGMENT_IO.logits, ['batch', E]));
      const stacked = mb.stack?.fits(sel, full) ? add('.experts', stackedGraph(weights, mb), `dynn experts of ${mb.name}, stacked: x [${E}, rows, in] -> y [${E}, rows, out], block e through expert e`) : undefined;
      // The per-expert graphs too: batches whose padding would not pay run them (`stackPays`).
      const expertGraphs = mb.expertChains.map((chain, e) => {
        const sg = new SegmentGraph(`${mb.name}_expert_${e}`, weights, chain);
        sg.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(mb.inShape)));
        sg.g.nodeTo('Identity', [lowerChain(chain, SEGMENT_IO.x, sel, sg.ctx(full, `e${e}`)).y], SEGMENT_IO.y);
        sg.g.output(floatValueInfo(SEGMENT_IO.y, batchDims(mb.outShape)));
        return add(`.expert${e}`, sg, `dynn expert ${e} of ${E} of ${mb.name}: x -> y`);
      });
      segments.push({
        kind: 'moe',
        name: mb.name,
        experts: E,
        topK: mb.topK,
        capacityFactor: mb.args.evalCapacityFactor,
        overflow: mb.args.overflow ?? 'next',
        ...((mb.args.priority ?? 'score') === 'score' ? { priority: 'score' as const } : {}),
        residual: mb.args.residual === true,
        gateMacs: gateMacsOf(mb.gate, sel),
        expertMacs: mb.expertMacs(sel, full),
        gate: add('.gate', gate, `dynn router of ${mb.name}: x -> ${E} scores`),
        routerOutputs: E,
        expertGraphs,
        ...(stacked ? { stacked } : {}),
        input,
        output,
      });
    } else if (first instanceof SpatialResidualBlock) {
      const sg = new SegmentGraph(`${first.name}_spatial`, [], []);
      lowerSpatial(sg.g, first);
      const per = first.positionMacs(sel);
      const [h, w] = first.outShape;
      segments.push({
        kind: 'spatial',
        name: first.name,
        positions: h * w,
        gateMacs: gateMacsOf(first.gate, sel),
        conv1Macs: per.conv1,
        conv2Macs: per.conv2,
        graph: add('.spatial', sg, `dynn spatially gated block ${first.name}: x and the threshold's logit cut -> y and the positions computed`),
        input,
        output,
      });
    } else if (!isGatedBlock(first)) {
      const sg = new SegmentGraph(`segment_${tag}`, weights, layers);
      sg.g.input(floatValueInfo(SEGMENT_IO.x, batchDims(first.inShape)));
      const lowered: LoweredMixture[] = [];
      const y = lowerChain(layers, SEGMENT_IO.x, sel, { ...sg.ctx(full, 'p'), mixtures: lowered }).y;
      sg.g.nodeTo('Identity', [y], SEGMENT_IO.y);
      sg.g.output(floatValueInfo(SEGMENT_IO.y, batchDims(last.outShape)));
      // Mixtures dispatched inside the graph: their experts per sample, as one more output, in the order the
      // manifest lists them. Only a segment's own layers: the runtime's counts and FLOPs know no nesting.
      const nested = lowered.find((m) => !layers.some((l) => l.name === m.info.name));
      if (nested) throw new DynnError(`${model.config.model}: the mixture ${nested.info.name} sits inside another layer; only a network's own mixtures export`);
      const mixtures = lowered.map((m) => m.info);
      if (lowered.length > 0) {
        sg.g.nodeTo('Concat', lowered.map((m) => m.routes), SEGMENT_IO.routes, { axis: attr.int(1) });
        sg.g.output(floatValueInfo(SEGMENT_IO.routes, ['batch', mixtures.reduce((a, mx) => a + mx.topK, 0)]));
      }
      const name = layers.length > 1 ? `${first.name}..${last.name}` : first.name;
      segments.push({ kind: 'plain', name, graph: add('', sg, `dynn segment ${name}`), ...(mixtures.length ? { mixtures } : {}), input, output });
    } else {
      const block = first;
      const G = block.groups;
      const gateLayer = block.gate;
      const gate = gateSegment(weights, block.name, gateLayer, G, sel, full);

      const body = bodyGraph(weights, block, sel, full);
      const gateMacs = gateMacsOf(gateLayer, sel);
      const groupMacs = block.groupWidth * block.channelMacs(sel);
      segments.push({
        kind: 'gated',
        name: block.name,
        groups: G,
        gateMacs,
        groupMacs,
        gate: add('.gate', gate, `dynn gate of ${block.name}: x -> ${G} logits`),
        body: add('.body', body, `dynn body of ${block.name}: x and k in 0..${G} -> y`),
        input,
        output,
      });
    }
    for (const l of layers) sel = l.outSel(sel, full);
  });
  const { fixed, backbone } = model.routedMacs(full);
  const [h, w, c] = model.inputShape;
  const manifest: SegmentsManifest = {
    format: SEGMENTS_FORMAT,
    dynnVersion: VERSION,
    model: model.config,
    input: { layout: 'NCHW', shape: [c, h, w] },
    numClasses: model.numClasses,
    classNames,
    threshold,
    macs: { fixed, backbone },
    segments,
  };
  return { manifest, files };
}

/** `--force` replaces an earlier export by segments or an empty folder, nothing else (a run, a project folder, a file). */
async function checkReplaceable(dir: string, isFolder: boolean): Promise<void> {
  if (!isFolder) throw new DynnError(`${dir} is a file; an export by segments is a folder: give a new folder name`);
  const entries = await fsp.readdir(dir);
  if (entries.length === 0) return;
  const text = await fsp.readFile(path.join(dir, MANIFEST_FILE), 'utf8').catch(() => null);
  let format: unknown = null;
  try {
    format = text === null ? null : (JSON.parse(text) as { format?: unknown }).format;
  } catch {
    // not JSON: not an export
  }
  if (!(SEGMENTS_FORMATS as readonly unknown[]).includes(format)) {
    throw new DynnError(`${dir} is not an export by segments (no ${MANIFEST_FILE} of ${SEGMENTS_FORMATS.join(' or ')}); --force replaces only an earlier export or an empty folder`);
  }
}

/**
 * Writes a segmented export to the folder `dir`, atomically: everything goes to a temporary folder beside
 * it, which is then renamed into place. An existing `dir` is refused unless `force`, and then only an
 * earlier export or an empty folder is replaced, once the new folder is complete. Returns the manifest.
 */
export async function saveSegments(model: Network, dir: string, options: SegmentsOptions & { force?: boolean } = {}): Promise<SegmentsManifest> {
  const existing = await fsp.stat(dir).catch(() => null);
  if (existing && !options.force) throw new DynnError(`${dir} exists; pass --force to overwrite it`);
  if (existing) await checkReplaceable(dir, existing.isDirectory());
  const { manifest, files } = exportSegments(model, options);
  const parent = path.dirname(path.resolve(dir));
  await fsp.mkdir(parent, { recursive: true });
  const tmp = `${path.resolve(dir)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fsp.mkdir(tmp);
    for (const [file, bytes] of files) await fsp.writeFile(path.join(tmp, file), bytes);
    await fsp.writeFile(path.join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
    if (existing) {
      // Set the old one aside first (a rename cannot replace a non-empty folder), and put it back if the new one cannot take its place.
      const old = `${tmp}.old`;
      await fsp.rename(dir, old);
      try {
        await fsp.rename(tmp, dir);
      } catch (err) {
        await fsp.rename(old, dir);
        throw err;
      }
      await fsp.rm(old, { recursive: true, force: true });
    } else await fsp.rename(tmp, dir);
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return manifest;
}
