import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Conv2D, planGroups } from './conv.js';
import { Layer, layerClasses } from './layer.js';
import { BatchNorm } from './norm.js';
import { ReLU } from './basic.js';
import { CondConv2D, type CondConv2DArgs } from './condconv.js';
import { groupSel } from './select.js';
import { scaleChannels, type ChannelFactor } from './channel.js';
import type { BlockInfo, ChannelSel, LayerCost, Plan, RunContext, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

/** A layer made of a chain of sub-layers. */
export abstract class Composite<A extends object> extends Layer<A> {
  protected layers: Layer[] = [];

  override children(): Layer[] {
    return this.layers;
  }

  protected buildChain(layers: Layer[], inShape: Shape): Shape {
    return layers.reduce((shape, l) => l.build(shape, this.seed), inShape);
  }

  protected runChain(layers: Layer[], x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    let y = x;
    for (const l of layers) ({ y, sel } = l.call(y, sel, ctx));
    return { y, sel };
  }

  protected chainSel(layers: Layer[], sel: ChannelSel, plan: Plan): ChannelSel {
    return layers.reduce((s, l) => l.outSel(s, plan), sel);
  }

  protected chainFreeze(layers: Layer[], sel: ChannelSel, plan: Plan): FrozenOp[] {
    const ops: FrozenOp[] = [];
    for (const l of layers) {
      ops.push(...l.freeze(sel, plan));
      sel = l.outSel(sel, plan);
    }
    return ops;
  }

  protected chainCost(layers: Layer[], sel: ChannelSel, plan: Plan): LayerCost[] {
    const costs: LayerCost[] = [];
    for (const l of layers) {
      costs.push(...l.cost(sel, plan));
      sel = l.outSel(sel, plan);
    }
    return costs;
  }
}

export interface ResidualBlockArgs {
  /** Output channels. */
  filters: number;
  /** Stride of the first convolution (default 1); a stride or channel change adds a 1x1 projection. */
  strides?: number;
  /** Depth gating: the block can be skipped (y = x). Only identity-shaped blocks can be gated. */
  gated?: boolean;
  /** Stage index for depthwise-nested gating. */
  stage?: number;
  /** BatchNorm statistic rows (operating levels). */
  levels: number;
  /**
   * Throttle the block's inner channels (conv1's output, conv2's input) in this many groups: a widthwise
   * block keyed by `<block>.conv1`. 0 or absent: not throttled.
   */
  groups?: number;
  /** Conditional convolutions (CondConv) for conv1 and conv2, with these expert settings; absent: static ones. */
  cond?: Pick<CondConv2DArgs, 'experts' | 'routing' | 'temperature' | 'annealEpochs'>;
}

/** A basic residual block (conv-BN-ReLU-conv-BN + shortcut, ReLU); gated off, it is the identity and costs nothing. */
export class ResidualBlock<A extends ResidualBlockArgs = ResidualBlockArgs> extends Composite<A> {
  readonly className: string = 'ResidualBlock';
  /** conv1, bn1, relu1: what the inner width scales. */
  protected front: Layer[] = [];
  /** conv2, bn2. */
  protected back: Layer[] = [];
  protected shortcut: Layer[] = [];

  protected doBuild(inShape: Shape): Shape {
    const { filters, strides = 1, gated = false, levels, groups = 0 } = this.args;
    const n = this.name;
    const projected = strides !== 1 || inShape[2] !== filters;
    if (gated && projected) throw new DynnError(`${n}: a gated residual block must keep its shape (stride 1, same channels)`);
    const cond = this.args.cond;
    if (cond && groups) throw new DynnError(`${n}: conditional convolutions are not throttleable (groups ${groups})`);
    this.front = [
      cond ? new CondConv2D(`${n}.conv1`, { filters, kernelSize: 3, strides, ...cond }) : new Conv2D(`${n}.conv1`, { filters, kernelSize: 3, strides, ...(groups ? { groups } : {}) }),
      new BatchNorm(`${n}.bn1`, { levels }),
      new ReLU(`${n}.relu1`, {}),
    ];
    this.back = [cond ? new CondConv2D(`${n}.conv2`, { filters, kernelSize: 3, ...cond }) : new Conv2D(`${n}.conv2`, { filters, kernelSize: 3 }), new BatchNorm(`${n}.bn2`, { levels })];
    this.shortcut = projected
      ? [new Conv2D(`${n}.proj`, { filters, kernelSize: 1, strides }), new BatchNorm(`${n}.projbn`, { levels })]
      : [];
    this.layers = [...this.front, ...this.back, ...this.shortcut];
    const out = this.buildChain(this.main, inShape);
    this.buildChain(this.shortcut, inShape);
    return out;
  }

  protected get main(): Layer[] {
    return [...this.front, ...this.back];
  }

  /** The plan key of the inner width's groups (absent from plans when the block is not throttled). */
  get innerKey(): string {
    return `${this.name}.conv1`;
  }

  override block(): BlockInfo | null {
    return this.args.gated ? { kind: 'depth', name: this.name, stage: this.args.stage ?? 0 } : null;
  }

  private skipped(plan: Plan): boolean {
    return this.args.gated === true && plan.depth.get(this.name) === false;
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.skipped(plan) ? sel : this.chainSel(this.main, sel, plan);
  }

  /**
   * The block on every row of `x`, its main path at `inner` (the context's plan by default), the inner
   * channels multiplied by `factor` when given (`scaleChannels`). No inner group leaves relu(shortcut(x)).
   */
  protected forwardAt(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, inner: RunContext = ctx, factor?: ChannelFactor): tf.Tensor {
    const short = this.shortcut.length ? this.runChain(this.shortcut, x, sel, ctx).y : x;
    if (inner.plan.groups.get(this.innerKey)?.length === 0) return tf.relu(short);
    const front = this.runChain(this.front, x, sel, inner);
    return tf.relu(tf.add(this.runChain(this.back, scaleChannels(front.y, factor), front.sel, inner).y, short));
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    if (this.skipped(ctx.plan)) return { y: x, sel };
    return { y: this.forwardAt(x, sel, ctx), sel: this.outSel(sel, ctx.plan) };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    if (this.skipped(plan)) return [];
    const shortcut = this.chainFreeze(this.shortcut, sel, plan);
    // No inner group: relu(shortcut(x)), and an identity shortcut's input (a ReLU's output) is already >= 0.
    if (plan.groups.get(this.innerKey)?.length === 0) return shortcut.length ? [...shortcut, { op: 'relu' }] : [];
    return [{ op: 'residual', main: this.chainFreeze(this.main, sel, plan), shortcut }];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    if (this.skipped(plan)) return [];
    const main = plan.groups.get(this.innerKey)?.length === 0 ? [] : this.chainCost(this.main, sel, plan);
    return [...main, ...this.chainCost(this.shortcut, sel, plan)];
  }
}

export interface GroupedConv2DArgs {
  /** Channels in and out (groups x per-group width). */
  filters: number;
  /** Square kernel size. */
  kernelSize: number;
  /** Number of groups; group g maps channels [g*w, (g+1)*w) to the same range. */
  groups: number;
  /** Plan key of the widthwise block whose active groups this layer runs. */
  block: string;
}

/** A grouped convolution that runs only the active groups, one small convolution each. */
export class GroupedConv2D extends Layer<GroupedConv2DArgs> {
  readonly className = 'GroupedConv2D';
  private kernel!: tf.Variable;

  protected doBuild(inShape: Shape): Shape {
    const { filters, kernelSize: k, groups } = this.args;
    if (inShape[2] !== filters || filters % groups !== 0) {
      throw new DynnError(`${this.name}: GroupedConv2D needs ${filters} input channels in ${groups} equal groups`);
    }
    const w = filters / groups;
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [k, k, w, filters], k * k * w));
    return inShape;
  }

  outSel(_sel: ChannelSel, plan: Plan): ChannelSel {
    return groupSel(planGroups(plan, this.args.block), this.args.groups, this.args.filters);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const { filters, kernelSize: k, groups } = this.args;
    const w = filters / groups;
    const active = planGroups(ctx.plan, this.args.block);
    const [b, h, wd] = x.shape;
    const outs = Array.from(active, (g, i) => {
      const xi = tf.slice(x, [0, 0, 0, i * w], [b, h, wd, w]) as tf.Tensor4D;
      const ki = tf.slice(this.kernel, [0, 0, 0, g * w], [k, k, w, w]) as tf.Tensor4D;
      return tf.conv2d(xi, ki, 1, 'same');
    });
    return { y: outs.length === 1 ? outs[0] : tf.concat(outs, 3), sel: this.outSel(sel, ctx.plan) };
  }

  freeze(_sel: ChannelSel, plan: Plan): FrozenOp[] {
    const { filters, kernelSize: k, groups } = this.args;
    const w = filters / groups;
    const kernels = Array.from(planGroups(plan, this.args.block), (g) => tf.slice(this.kernel, [0, 0, 0, g * w], [k, k, w, w]) as tf.Tensor4D);
    return [{ op: 'groupconv', name: this.name, kernels, width: w }];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    const { filters, kernelSize: k, groups } = this.args;
    const w = filters / groups;
    const d = planGroups(plan, this.args.block).length;
    const [h, wd] = this.outShape;
    return [{ name: this.name, kind: this.className, macs: d * h * wd * k * k * w * w, params: d * k * k * w * w }];
  }
}

export interface ResNeXtBlockArgs {
  /** Number of parallel paths (the block's cardinality D), each a group. */
  groups: number;
  /** Channels of each path. */
  width: number;
  /** BatchNorm statistic rows (operating levels). */
  levels: number;
}

/**
 * A ResNeXt block, throttled widthwise: D paths (1x1 reduce, 3x3, 1x1 expand) aggregated by summation,
 * plus the identity. Summation over the active paths is the 1x1 expand over their concatenation, so the
 * reduce and expand convolutions are sliced like any widthwise layer and the 3x3 runs per active group.
 */
export class ResNeXtBlock extends Composite<ResNeXtBlockArgs> {
  readonly className = 'ResNeXtBlock';

  protected doBuild(inShape: Shape): Shape {
    const { groups: D, width, levels } = this.args;
    const n = this.name;
    const inner = D * width;
    this.layers = [
      new Conv2D(`${n}.reduce`, { filters: inner, kernelSize: 1, groups: D, block: n }),
      new BatchNorm(`${n}.bn1`, { levels }),
      new ReLU(`${n}.relu1`, {}),
      new GroupedConv2D(`${n}.gconv`, { filters: inner, kernelSize: 3, groups: D, block: n }),
      new BatchNorm(`${n}.bn2`, { levels }),
      new ReLU(`${n}.relu2`, {}),
      new Conv2D(`${n}.expand`, { filters: inShape[2], kernelSize: 1 }),
      new BatchNorm(`${n}.bn3`, { levels }),
    ];
    return this.buildChain(this.layers, inShape);
  }

  override block(): BlockInfo | null {
    return { kind: 'width', name: this.name, groups: this.args.groups };
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.chainSel(this.layers, sel, plan);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const { y, sel: out } = this.runChain(this.layers, x, sel, ctx);
    return { y: tf.relu(tf.add(y, x)), sel: out };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    return [{ op: 'residual', main: this.chainFreeze(this.layers, sel, plan), shortcut: [] }];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return this.chainCost(this.layers, sel, plan);
  }
}

layerClasses.register('ResidualBlock', ResidualBlock);
layerClasses.register('GroupedConv2D', GroupedConv2D);
layerClasses.register('ResNeXtBlock', ResNeXtBlock);
