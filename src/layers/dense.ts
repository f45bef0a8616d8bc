import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite } from './blocks.js';
import { Conv2D, Dense } from './conv.js';
import { Layer, layerClasses } from './layer.js';
import { BatchNorm } from './norm.js';
import { GlobalAvgPool, ReLU } from './basic.js';
import type { BlockInfo, ChannelSel, LayerCost, Plan, RunContext, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

/**
 * The selection of `concat([x, y], channels)` where x holds `a` of its `a.full` channels and y holds `b` of
 * its `added` channels: y's channels sit after all of x's full-width ones. Stays a prefix only when x is
 * complete and y a prefix; otherwise an index list, so later layers gather exactly the channels present.
 */
export function concatSel(a: ChannelSel, b: ChannelSel, added: number): ChannelSel {
  const full = a.full + added;
  if (a.index === null && a.count === a.full && b.index === null) return { full, count: a.count + b.count, index: null };
  const index = new Int32Array(a.count + b.count);
  for (let i = 0; i < a.count; i++) index[i] = a.index ? a.index[i] : i;
  for (let i = 0; i < b.count; i++) index[a.count + i] = a.full + (b.index ? b.index[i] : i);
  return { full, count: index.length, index };
}

export interface DenseUnitArgs {
  /** Growth rate k: channels the unit appends to its input. */
  growth: number;
  /** Channels of the 1x1 bottleneck (default 4k). */
  bottleneck?: number;
  /** Throttle the bottleneck and the k new channels in this many groups (one widthwise block); 0 or absent: not throttled. */
  groups?: number;
  /** Depth gating: the unit can be skipped (it then appends no channels). */
  gated?: boolean;
  /** Stage (dense block) index for depthwise-nested gating. */
  stage?: number;
  /** BatchNorm statistic rows (operating levels). */
  levels: number;
}

/**
 * A DenseNet-BC unit: BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k), its output concatenated to its
 * input. Full width, the output has `C + k` channels; at an operating point it holds the input's channels
 * and the active groups of the new ones, so no channel is padded or masked. Width-throttled, the widthwise
 * block is keyed by `<unit>.conv2` (the 3x3 reports it, the 1x1 follows it).
 */
export class DenseUnit<A extends DenseUnitArgs = DenseUnitArgs> extends Composite<A> {
  readonly className: string = 'DenseUnit';
  /** BN-ReLU-1x1-BN-ReLU-3x3: what computes the new channels. */
  protected branch: Layer[] = [];

  protected doBuild(inShape: Shape): Shape {
    if (inShape.length !== 3) throw new DynnError(`${this.name}: DenseUnit needs an [H, W, C] input, got [${inShape}]`);
    this.branch = this.makeBranch();
    this.layers = [...this.branch];
    const [h, w, c] = this.buildChain(this.branch, inShape);
    return [h, w, inShape[2] + c];
  }

  /** The branch's layers, `<unit>.bn1` ... `<unit>.conv2`; throttled, both convolutions follow `<unit>.conv2`'s groups. */
  protected makeBranch(): Layer[] {
    const { growth: k, bottleneck = 4 * k, groups = 0, levels } = this.args;
    const n = this.name;
    const g = groups ? { groups } : {};
    return [
      new BatchNorm(`${n}.bn1`, { levels }),
      new ReLU(`${n}.relu1`, {}),
      new Conv2D(`${n}.conv1`, { filters: bottleneck, kernelSize: 1, ...g, ...(groups ? { block: `${n}.conv2` } : {}) }),
      new BatchNorm(`${n}.bn2`, { levels }),
      new ReLU(`${n}.relu2`, {}),
      new Conv2D(`${n}.conv2`, { filters: k, kernelSize: 3, ...g }),
    ];
  }

  override block(): BlockInfo | null {
    return this.args.gated ? { kind: 'depth', name: this.name, stage: this.args.stage ?? 0 } : null;
  }

  private skipped(plan: Plan): boolean {
    return this.args.gated === true && plan.depth.get(this.name) === false;
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    const k = this.args.growth;
    if (this.skipped(plan)) return concatSel(sel, { full: k, count: 0, index: null }, k);
    return concatSel(sel, this.chainSel(this.branch, sel, plan), k);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    if (this.skipped(ctx.plan)) return { y: x, sel: this.outSel(sel, ctx.plan) };
    const { y } = this.runChain(this.branch, x, sel, ctx);
    return { y: tf.concat([x, y], 3), sel: this.outSel(sel, ctx.plan) };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    if (this.skipped(plan)) return [];
    return [{ op: 'concat', branch: this.chainFreeze(this.branch, sel, plan) }];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return this.skipped(plan) ? [] : this.chainCost(this.branch, sel, plan);
  }
}

export interface AvgPoolArgs {
  /** Window and stride (default 2). */
  poolSize?: number;
}

/** Average pooling with a square window equal to its stride, 'valid' padding (DenseNet transitions). */
export class AvgPool extends Layer<AvgPoolArgs> {
  readonly className = 'AvgPool';

  protected doBuild(inShape: Shape): Shape {
    const p = this.args.poolSize ?? 2;
    if (inShape.length !== 3) throw new DynnError(`${this.name}: AvgPool needs an [H, W, C] input`);
    return [Math.floor(inShape[0] / p), Math.floor(inShape[1] / p), inShape[2]];
  }

  outSel(sel: ChannelSel): ChannelSel {
    return sel;
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    const p = this.args.poolSize ?? 2;
    return { y: tf.avgPool(x as tf.Tensor4D, p, p, 'valid'), sel };
  }

  freeze(): FrozenOp[] {
    return [{ op: 'avgpool', size: this.args.poolSize ?? 2 }];
  }

  cost(): LayerCost[] {
    return [];
  }
}

/** A fixed chain of layers that passes through whatever channels its input holds. */
abstract class Chain<A extends object> extends Composite<A> {
  protected abstract make(inShape: Shape): Layer[];

  protected doBuild(inShape: Shape): Shape {
    this.layers = this.make(inShape);
    return this.buildChain(this.layers, inShape);
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.chainSel(this.layers, sel, plan);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    return this.runChain(this.layers, x, sel, ctx);
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    return this.chainFreeze(this.layers, sel, plan);
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return this.chainCost(this.layers, sel, plan);
  }
}

export interface DenseTransitionArgs {
  /** Output channels of the 1x1 convolution (the compressed width). */
  filters: number;
  /** BatchNorm statistic rows (operating levels). */
  levels: number;
}

/**
 * A DenseNet transition, BN-ReLU-1x1 conv-2x2 average pooling, named `<name>.bn`, `.relu`, `.conv`, `.pool`.
 * It reads the dense block's channels present (any selection) and returns all of its own.
 */
export class DenseTransition extends Chain<DenseTransitionArgs> {
  readonly className = 'DenseTransition';

  protected make(): Layer[] {
    const n = this.name;
    return [
      new BatchNorm(`${n}.bn`, { levels: this.args.levels }),
      new ReLU(`${n}.relu`, {}),
      new Conv2D(`${n}.conv`, { filters: this.args.filters, kernelSize: 1 }),
      new AvgPool(`${n}.pool`, {}),
    ];
  }
}

export interface DenseHeadArgs {
  /** Number of classes. */
  units: number;
  /** BatchNorm statistic rows (operating levels). */
  levels: number;
}

/** A DenseNet's end: BN-ReLU (`<name>.bn`, `<name>.relu`), global average pooling (`gap`) and the classifier (`classifier`). */
export class DenseHead extends Chain<DenseHeadArgs> {
  readonly className = 'DenseHead';

  protected make(): Layer[] {
    const n = this.name;
    return [
      new BatchNorm(`${n}.bn`, { levels: this.args.levels }),
      new ReLU(`${n}.relu`, {}),
      new GlobalAvgPool('gap', {}),
      new Dense('classifier', { units: this.args.units }),
    ];
  }
}

layerClasses.register('DenseUnit', DenseUnit);
layerClasses.register('DenseTransition', DenseTransition);
layerClasses.register('DenseHead', DenseHead);
layerClasses.register('AvgPool', AvgPool);
