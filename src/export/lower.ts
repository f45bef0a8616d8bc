import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';
import type { Layer } from '../layers/layer.js';
import type { BatchNorm } from '../layers/norm.js';
import type { DGConv2D } from '../layers/dgconv.js';
import type { CondConv2D } from '../layers/condconv.js';
import { fullSel } from '../layers/select.js';
import type { ChannelSel, Plan, Shape } from '../layers/types.js';
import { attr, type GraphBuilder } from './graph.js';

/** Bilinear resizing of NCHW `x` to [h, w], half-pixel centres (TF.js's `resizeBilinear(x, size, false, true)`). */
export function lowerResize(g: GraphBuilder, x: string, h: number, w: number, base: string): string {
  const shape = g.node('Shape', [x], `${base}/shape`);
  const nc = g.node('Slice', [shape, g.int64Const(`${base}/starts`, [0]), g.int64Const(`${base}/ends`, [2]), g.int64Const(`${base}/axes`, [0])], `${base}/nc`);
  const sizes = g.node('Concat', [nc, g.int64Const(`${base}/hw`, [h, w])], `${base}/sizes`, { axis: attr.int(0) });
  return g.node('Resize', [x, '', '', sizes], base, { mode: attr.string('linear'), coordinate_transformation_mode: attr.string('half_pixel') });
}

/** What lowering a layer into one level's branch needs besides the layer. */
export interface BranchContext {
  /** The branch graph nodes go into. */
  g: GraphBuilder;
  /** The level's plan (nested gating: every selection a prefix). */
  plan: Plan;
  /** Prefix of the branch's value names, e.g. `L3`. */
  prefix: string;
  /** Full dims of each top-level weight initializer (ONNX layout), by dynn weight name. */
  dims: Map<string, number[]>;
  /**
   * Where each mixture of experts lowered into the graph (`export/moe.ts`) records itself, in lowering order:
   * what the manifest says of it and its [batch, k] float tensor of each sample's experts. Absent where the
   * graph has no such output (one-file exports).
   */
  mixtures?: LoweredMixture[];
}

/** A mixture of experts lowered into a graph: the manifest's entry for it, and its routes tensor. */
export interface LoweredMixture {
  info: { name: string; experts: number; topK: number; residual: boolean; gateMacs: number; expertMacs: number[] };
  routes: string;
}

/** What a layer becomes in a branch: the output value's name and which channels it holds. */
export interface Lowered {
  y: string;
  sel: ChannelSel;
}

/** Emits a layer's ONNX nodes for one level, reading weights from the full top-level initializers. */
export type LayerLowering = (layer: Layer, x: string, sel: ChannelSel, ctx: BranchContext) => Lowered;

/** Lowerings by layer class name: a layer class without one cannot be exported. */
export const lowerings = new Registry<LayerLowering>('exportable layer class');

/** Lowers a chain of layers, threading the channel selection. */
export function lowerChain(layers: Layer[], x: string, sel: ChannelSel, ctx: BranchContext): Lowered {
  let cur: Lowered = { y: x, sel };
  for (const l of layers) {
    let lower: LayerLowering;
    try {
      lower = lowerings.get(l.className);
    } catch (err) {
      throw new DynnError(`cannot export layer ${l.name}: ${(err as Error).message}`);
    }
    cur = lower(l, cur.y, cur.sel, ctx);
  }
  return cur;
}

/** A gate's logits `z` times its `logitScale` (none when 1), as TF.js's gate computes them. */
export function scaledLogits(g: GraphBuilder, gate: Layer, z: string, base: string): string {
  const scale = (gate as Layer<{ logitScale?: number }>).args.logitScale ?? 1;
  return scale === 1 ? z : g.node('Mul', [z, g.floatConst(`${base}/logit_scale`, [], [scale])], `${base}/scaled`);
}

function requirePrefix(layer: Layer, ...sels: ChannelSel[]): void {
  if (sels.some((s) => s.index !== null)) {
    throw new DynnError(`cannot export layer ${layer.name}: only nested gating exports (a level's active channels must be a prefix)`);
  }
}

/** The top-level weight `name` cut to its first `ends[i]` entries on its leading axes, with constant bounds. */
export function sliced(ctx: BranchContext, name: string, ends: number[]): string {
  const full = ctx.dims.get(name);
  if (!full) throw new DynnError(`internal: no initializer for weight ${name}`);
  if (ends.every((e, i) => e === full[i])) return name;
  const axes = ends.map((_, i) => i);
  const base = `${ctx.prefix}/${name}`;
  return ctx.g.node(
    'Slice',
    [name, ctx.g.int64Const(`${base}/starts`, axes.map(() => 0)), ctx.g.int64Const(`${base}/ends`, ends), ctx.g.int64Const(`${base}/axes`, axes)],
    `${base}/slice`,
  );
}

/** Row `row` of a [levels, C] statistics initializer, first `count` channels, as a [count] vector. */
function statRow(ctx: BranchContext, name: string, row: number, count: number): string {
  const base = `${ctx.prefix}/${name}`;
  const cut = ctx.g.node(
    'Slice',
    [name, ctx.g.int64Const(`${base}/starts`, [row, 0]), ctx.g.int64Const(`${base}/ends`, [row + 1, count]), ctx.g.int64Const(`${base}/axes`, [0, 1])],
    `${base}/row`,
  );
  return ctx.g.node('Reshape', [cut, ctx.g.int64Const(`${base}/shape`, [count])], `${base}/vec`);
}

/** TF's padding as explicit ONNX pads [top, left, bottom, right]: 'same' puts the odd pixel at the end. */
export function tfPads(inShape: Shape, k: number, stride: number, padding: 'same' | 'valid'): number[] {
  if (padding === 'valid') return [0, 0, 0, 0];
  const pad = (n: number) => {
    const total = Math.max((Math.ceil(n / stride) - 1) * stride + k - n, 0);
    return [Math.floor(total / 2), total - Math.floor(total / 2)];
  };
  const [top, bottom] = pad(inShape[0]);
  const [left, right] = pad(inShape[1]);
  return [top, left, bottom, right];
}

function hasWeight(layer: Layer, suffix: string): boolean {
  return layer.weights().some((w) => w.name === `${layer.name}.${suffix}`);
}

lowerings.register('Conv2D', (layer, x, sel, ctx) => {
  const a = (layer as Layer<{ kernelSize: number; strides?: number; padding?: 'same' | 'valid' }>).args;
  const out = layer.outSel(sel, ctx.plan);
  requirePrefix(layer, sel, out);
  const k = a.kernelSize;
  const s = a.strides ?? 1;
  const inputs = [x, sliced(ctx, `${layer.name}.kernel`, [out.count, sel.count])];
  if (hasWeight(layer, 'bias')) inputs.push(sliced(ctx, `${layer.name}.bias`, [out.count]));
  const y = ctx.g.node('Conv', inputs, `${ctx.prefix}/${layer.name}`, {
    kernel_shape: attr.ints([k, k]),
    strides: attr.ints([s, s]),
    pads: attr.ints(tfPads(layer.inShape, k, s, a.padding ?? 'same')),
  });
  return { y, sel: out };
});

lowerings.register('GroupedConv2D', (layer, x, sel, ctx) => {
  const a = (layer as Layer<{ filters: number; kernelSize: number; groups: number }>).args;
  const out = layer.outSel(sel, ctx.plan);
  requirePrefix(layer, sel, out);
  const d = out.count / (a.filters / a.groups);
  const y = ctx.g.node('Conv', [x, sliced(ctx, `${layer.name}.kernel`, [out.count])], `${ctx.prefix}/${layer.name}`, {
    kernel_shape: attr.ints([a.kernelSize, a.kernelSize]),
    group: attr.int(d),
    pads: attr.ints(tfPads(layer.inShape, a.kernelSize, 1, 'same')),
  });
  return { y, sel: out };
});

// DGConv: the kernel times its learned relation matrix U, which is fixed after training: U (C_out x C_in,
// the input's channels) goes in as a constant and ORT folds the product into one masked kernel at load.
lowerings.register('DGConv2D', (layer, x, sel, ctx) => {
  const a = (layer as DGConv2D).args;
  const out = layer.outSel(sel, ctx.plan);
  requirePrefix(layer, sel);
  const k = a.kernelSize ?? 3;
  const s = a.strides ?? 1;
  const u = tf.tidy(() => tf.slice((layer as DGConv2D).relation(), [0, 0], [out.count, sel.count]).dataSync());
  const base = `${ctx.prefix}/${layer.name}`;
  const kernel = ctx.g.node('Mul', [sliced(ctx, `${layer.name}.kernel`, [out.count, sel.count]), ctx.g.floatConst(`${base}/relation`, [out.count, sel.count, 1, 1], Array.from(u))], `${base}/masked`);
  const y = ctx.g.node('Conv', [x, kernel], base, {
    kernel_shape: attr.ints([k, k]),
    strides: attr.ints([s, s]),
    pads: attr.ints(tfPads(layer.inShape, k, s, a.padding ?? 'same')),
  });
  return { y, sel: out };
});

// Squeeze-and-excitation: GAP -> FC -> ReLU -> FC -> sigmoid, the input scaled per channel; the FCs cut to the
// input's channels (rows of the reduce, columns of the expand), the hidden layer in full, as in TF.js.
lowerings.register('SqueezeExcite', (layer, x, sel, ctx) => {
  requirePrefix(layer, sel);
  const n = layer.name;
  const base = `${ctx.prefix}/${n}`;
  const hidden = fullSel(ctx.dims.get(`${n}.reduce.bias`)![0]);
  const pooled = ctx.g.node('Flatten', [ctx.g.node('GlobalAveragePool', [x], `${base}/pool`)], `${base}/squeeze`, { axis: attr.int(1) });
  const h = ctx.g.node('Relu', [ctx.g.node('Gemm', [pooled, picked(ctx, `${n}.reduce.kernel`, [sel, hidden]), `${n}.reduce.bias`], `${base}/reduce`)], `${base}/relu`);
  const e = ctx.g.node('Gemm', [h, picked(ctx, `${n}.expand.kernel`, [hidden, sel]), picked(ctx, `${n}.expand.bias`, [sel])], `${base}/expand`);
  const scale = ctx.g.node('Reshape', [ctx.g.node('Sigmoid', [e], `${base}/sigmoid`), ctx.g.int64Const(`${base}/shape`, [0, sel.count, 1, 1])], `${base}/excite`);
  return { y: ctx.g.node('Mul', [x, scale], base), sel };
});

// CondConv as in TF.js, batch-dynamic in one graph: the router on the pooled input, each sample's kernel mixed
// by one MatMul ([n, E] by [E, Cin*k*k*Cout]), im2col as a grouped Conv with one-hot filters (ONNX Conv's group
// is static, so the per-sample kernels cannot go into a grouped Conv), and one batched MatMul.
lowerings.register('CondConv2D', (layer, x, sel, ctx) => {
  const a = (layer as CondConv2D).args;
  requirePrefix(layer, sel);
  const n = layer.name;
  const base = `${ctx.prefix}/${n}`;
  const g = ctx.g;
  const k = a.kernelSize;
  const s = a.strides ?? 1;
  const [e, rows, cout] = ctx.dims.get(`${n}.kernel`)!;
  const c = rows / (k * k);
  const [oh, ow] = layer.outShape;
  const pooled = g.node('Flatten', [g.node('GlobalAveragePool', [x], `${base}/pool`)], `${base}/squeeze`, { axis: attr.int(1) });
  let logits = g.node('Gemm', [pooled, `${n}.route.kernel`, `${n}.route.bias`], `${base}/route`);
  if ((a.routing ?? 'sigmoid') === 'softmax') logits = g.node('Div', [logits, `${n}.temperature`], `${base}/tempered`);
  const weights = g.node((a.routing ?? 'sigmoid') === 'softmax' ? 'Softmax' : 'Sigmoid', [logits], `${base}/weights`);
  const flat = g.node('Reshape', [`${n}.kernel`, g.int64Const(`${base}/experts_shape`, [e, rows * cout])], `${base}/experts`);
  const mixed = g.node('Reshape', [g.node('MatMul', [weights, flat], `${base}/mix`), g.int64Const(`${base}/mixed_shape`, [-1, rows, cout])], `${base}/mixed`);
  const mixedT = g.node('Transpose', [mixed], `${base}/mixed_t`, { perm: attr.ints([0, 2, 1]) });
  const taps = new Float32Array(rows * k * k);
  for (let ch = 0; ch < c; ch++) for (let t = 0; t < k * k; t++) taps[(ch * k * k + t) * k * k + t] = 1;
  const patches = g.node('Conv', [x, g.floatConst(`${base}/taps`, [rows, 1, k, k], Array.from(taps))], `${base}/im2col`, {
    kernel_shape: attr.ints([k, k]),
    strides: attr.ints([s, s]),
    pads: attr.ints(tfPads(layer.inShape, k, s, a.padding ?? 'same')),
    group: attr.int(c),
  });
  const cols = g.node('Reshape', [patches, g.int64Const(`${base}/cols_shape`, [0, rows, oh * ow])], `${base}/cols`);
  let y = g.node('Reshape', [g.node('MatMul', [mixedT, cols], `${base}/conv`), g.int64Const(`${base}/out_shape`, [0, cout, oh, ow])], `${base}/out`);
  if (hasWeight(layer, 'bias')) {
    const bias = g.node('Reshape', [g.node('MatMul', [weights, `${n}.bias`], `${base}/mix_bias`), g.int64Const(`${base}/bias_shape`, [0, cout, 1, 1])], `${base}/bias`);
    y = g.node('Add', [y, bias], `${base}/biased`);
  }
  return { y, sel: layer.outSel(sel, ctx.plan) };
});

lowerings.register('Dense', (layer, x, sel, ctx) => {
  const out = layer.outSel(sel, ctx.plan);
  requirePrefix(layer, sel, out);
  const inputs = [x, sliced(ctx, `${layer.name}.kernel`, [sel.count, out.count])];
  if (hasWeight(layer, 'bias')) inputs.push(sliced(ctx, `${layer.name}.bias`, [out.count]));
  return { y: ctx.g.node('Gemm', inputs, `${ctx.prefix}/${layer.name}`), sel: out };
});

// ONNX BatchNormalization with the level's statistics row: ORT folds the constant slices at load and then
// fuses the normalization into the convolution before it, so inference pays nothing for it.
lowerings.register('BatchNorm', (layer, x, sel, ctx) => {
  requirePrefix(layer, sel);
  const bn = layer as BatchNorm;
  const row = bn.row(ctx.plan.level);
  const n = layer.name;
  const y = ctx.g.node(
    'BatchNormalization',
    [
      x,
      sliced(ctx, `${n}.gamma`, [sel.count]),
      sliced(ctx, `${n}.beta`, [sel.count]),
      statRow(ctx, `${n}.running_mean`, row, sel.count),
      statRow(ctx, `${n}.running_var`, row, sel.count),
    ],
    `${ctx.prefix}/${n}`,
    { epsilon: attr.float(bn.args.epsilon ?? 1e-5) },
  );
  return { y, sel };
});

lowerings.register('ReLU', (layer, x, sel, ctx) => ({ y: ctx.g.node('Relu', [x], `${ctx.prefix}/${layer.name}`), sel }));

lowerings.register('MaxPool', (layer, x, sel, ctx) => {
  const p = (layer as Layer<{ poolSize?: number }>).args.poolSize ?? 2;
  const y = ctx.g.node('MaxPool', [x], `${ctx.prefix}/${layer.name}`, { kernel_shape: attr.ints([p, p]), strides: attr.ints([p, p]) });
  return { y, sel };
});

lowerings.register('GlobalAvgPool', (layer, x, sel, ctx) => {
  const pooled = ctx.g.node('GlobalAveragePool', [x], `${ctx.prefix}/${layer.name}/pool`);
  return { y: ctx.g.node('Flatten', [pooled], `${ctx.prefix}/${layer.name}`, { axis: attr.int(1) }), sel };
});

// NCHW flattening is channel-major, exactly dynn's Flatten order: the dense rows need no reordering.
lowerings.register('Flatten', (layer, x, sel, ctx) => {
  const out = layer.outSel(sel, ctx.plan);
  if (layer.inShape.length !== 3) return { y: x, sel: out };
  return { y: ctx.g.node('Flatten', [x], `${ctx.prefix}/${layer.name}`, { axis: attr.int(1) }), sel: out };
});

function residual(layer: Layer, main: Lowered, shortcut: string, ctx: BranchContext): Lowered {
  const sum = ctx.g.node('Add', [main.y, shortcut], `${ctx.prefix}/${layer.name}/add`);
  return { y: ctx.g.node('Relu', [sum], `${ctx.prefix}/${layer.name}`), sel: main.sel };
}

/**
 * A residual block (a per-sample gated one too: its gate is not on either path): the shortcut lowered in
 * `ctx`, the main path in `inner` (default `ctx`), relu(main + shortcut); with `inner` null, the main path
 * runs no channel and only relu(shortcut) is left.
 */
export function lowerResidual(layer: Layer, x: string, sel: ChannelSel, ctx: BranchContext, inner: BranchContext | null = ctx): Lowered {
  const n = layer.name;
  const isShortcut = (l: Layer) => l.name === `${n}.proj` || l.name === `${n}.projbn`;
  const kids = layer.children().filter((l) => l.name !== `${n}.gate`);
  const shortLayers = kids.filter(isShortcut);
  const shortcut = shortLayers.length ? lowerChain(shortLayers, x, sel, ctx).y : x;
  if (!inner) return { y: ctx.g.node('Relu', [shortcut], `${ctx.prefix}/${n}`), sel: layer.outSel(sel, ctx.plan) };
  return residual(layer, lowerChain(kids.filter((l) => !isShortcut(l)), x, sel, inner), shortcut, ctx);
}

// A skipped block is the identity: it vanishes from the branch.
lowerings.register('ResidualBlock', (layer, x, sel, ctx) => {
  const a = (layer as Layer<{ gated?: boolean }>).args;
  if (a.gated && ctx.plan.depth.get(layer.name) === false) return { y: x, sel };
  return lowerResidual(layer, x, sel, ctx);
});

// On the main path an exit head is the identity, as in TF.js (its classifier is lowered per stage).
lowerings.register('ExitHead', (_layer, x, sel) => ({ y: x, sel }));

lowerings.register('ResNeXtBlock', (layer, x, sel, ctx) => residual(layer, lowerChain(layer.children(), x, sel, ctx), x, ctx));

// DenseNets: a concatenation's channels present are in general not a prefix (a block's input and each unit's
// active groups, offset), so the layers of dense units, transitions and heads read their weights with constant
// Gathers (ORT folds them at load like the Slices) where a selection is an index list, and Slices otherwise.

/** The top-level weight `name` cut on its leading axes to the selections `sels` (a prefix count or an index list). */
function picked(ctx: BranchContext, name: string, sels: ChannelSel[], row?: number): string {
  const full = ctx.dims.get(name);
  if (!full) throw new DynnError(`internal: no initializer for weight ${name}`);
  const base = `${ctx.prefix}/${name}`;
  let y = name;
  if (row !== undefined) {
    const cut = ctx.g.node('Slice', [name, ctx.g.int64Const(`${base}/starts`, [row]), ctx.g.int64Const(`${base}/ends`, [row + 1]), ctx.g.int64Const(`${base}/axes`, [0])], `${base}/row`);
    y = ctx.g.node('Reshape', [cut, ctx.g.int64Const(`${base}/shape`, full.slice(1))], `${base}/vec`);
  }
  sels.forEach((s, axis) => {
    if (s.index !== null) {
      y = ctx.g.node('Gather', [y, ctx.g.int64Const(`${base}/index${axis}`, Array.from(s.index))], `${base}/gather${axis}`, { axis: attr.int(axis) });
    } else if (s.count !== s.full) {
      y = ctx.g.node(
        'Slice',
        [y, ctx.g.int64Const(`${base}/starts${axis}`, [0]), ctx.g.int64Const(`${base}/ends${axis}`, [s.count]), ctx.g.int64Const(`${base}/axes${axis}`, [axis])],
        `${base}/slice${axis}`,
      );
    }
  });
  return y;
}

/** Lowers a layer inside a DenseNet part, whatever channels its input holds. */
function lowerAnySel(l: Layer, x: string, sel: ChannelSel, ctx: BranchContext): Lowered {
  const n = l.name;
  switch (l.className) {
    case 'BatchNorm': {
      const bn = l as BatchNorm;
      const row = bn.row(ctx.plan.level);
      const inputs = [x, picked(ctx, `${n}.gamma`, [sel]), picked(ctx, `${n}.beta`, [sel]), picked(ctx, `${n}.running_mean`, [sel], row), picked(ctx, `${n}.running_var`, [sel], row)];
      return { y: ctx.g.node('BatchNormalization', inputs, `${ctx.prefix}/${n}`, { epsilon: attr.float(bn.args.epsilon ?? 1e-5) }), sel };
    }
    case 'Conv2D': {
      const a = (l as Layer<{ kernelSize: number; strides?: number; padding?: 'same' | 'valid' }>).args;
      const out = l.outSel(sel, ctx.plan);
      const k = a.kernelSize;
      const s = a.strides ?? 1;
      const inputs = [x, picked(ctx, `${n}.kernel`, [out, sel])];
      if (hasWeight(l, 'bias')) inputs.push(picked(ctx, `${n}.bias`, [out]));
      const y = ctx.g.node('Conv', inputs, `${ctx.prefix}/${n}`, {
        kernel_shape: attr.ints([k, k]),
        strides: attr.ints([s, s]),
        pads: attr.ints(tfPads(l.inShape, k, s, a.padding ?? 'same')),
      });
      return { y, sel: out };
    }
    case 'Dense': {
      const out = l.outSel(sel, ctx.plan);
      const inputs = [x, picked(ctx, `${n}.kernel`, [sel, out])];
      if (hasWeight(l, 'bias')) inputs.push(picked(ctx, `${n}.bias`, [out]));
      return { y: ctx.g.node('Gemm', inputs, `${ctx.prefix}/${n}`), sel: out };
    }
    default:
      return lowerings.get(l.className)(l, x, sel, ctx);
  }
}

/** Lowers a chain of layers inside a DenseNet part, whatever channels its input holds. */
export function lowerAnyChain(layers: Layer[], x: string, sel: ChannelSel, ctx: BranchContext): Lowered {
  let cur: Lowered = { y: x, sel };
  for (const l of layers) cur = lowerAnySel(l, cur.y, cur.sel, ctx);
  return cur;
}

lowerings.register('AvgPool', (layer, x, sel, ctx) => {
  const p = (layer as Layer<{ poolSize?: number }>).args.poolSize ?? 2;
  const y = ctx.g.node('AveragePool', [x], `${ctx.prefix}/${layer.name}`, { kernel_shape: attr.ints([p, p]), strides: attr.ints([p, p]) });
  return { y, sel };
});

// A skipped unit vanishes from the branch; a running one appends its new channels (ONNX Concat on axis 1, NCHW).
lowerings.register('DenseUnit', (layer, x, sel, ctx) => {
  const out = layer.outSel(sel, ctx.plan);
  if ((layer as Layer<{ gated?: boolean }>).args.gated && ctx.plan.depth.get(layer.name) === false) return { y: x, sel: out };
  const added = lowerAnyChain(layer.children(), x, sel, ctx);
  return { y: ctx.g.node('Concat', [x, added.y], `${ctx.prefix}/${layer.name}`, { axis: attr.int(1) }), sel: out };
});

lowerings.register('DenseTransition', (layer, x, sel, ctx) => lowerAnyChain(layer.children(), x, sel, ctx));

lowerings.register('DenseHead', (layer, x, sel, ctx) => lowerAnyChain(layer.children(), x, sel, ctx));
