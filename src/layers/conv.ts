import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses, type KernelInit } from './layer.js';
import { fullSel, groupSel, take } from './select.js';
import { addChannelBias } from './channel.js';
import type { BlockInfo, ChannelSel, LayerCost, Plan, RunContext, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

/** Looks up the active groups of a widthwise block, with a clear error when the plan lacks it. */
export function planGroups(plan: Plan, block: string): Int32Array {
  const g = plan.groups.get(block);
  if (!g) throw new DynnError(`the plan has no active groups for block "${block}"`);
  return g;
}

export interface Conv2DArgs {
  /** Output channels at full width. */
  filters: number;
  /** Square kernel size. */
  kernelSize: number;
  /** Stride (default 1). */
  strides?: number;
  /** Padding (default 'same'). */
  padding?: 'same' | 'valid';
  /** Add a bias (default false: a BatchNorm usually follows). */
  useBias?: boolean;
  /** Throttle the output channels in this many groups (a widthwise block); 0 or absent: not throttled. */
  groups?: number;
  /** The plan key of the block this layer belongs to (default: the layer's own name). */
  block?: string;
  /** With groups: round the active output channels to a multiple of this (`roundChannels`; default 1). */
  multiple?: number;
  /** Initial kernel values (default 'fan-in-uniform'). */
  init?: KernelInit;
}

/** A 2-D convolution (NHWC) whose kernel is sliced to the active input and output channels. */
export class Conv2D extends Layer<Conv2DArgs> {
  readonly className = 'Conv2D';
  private kernel!: tf.Variable;
  private bias: tf.Variable | null = null;

  protected doBuild(inShape: Shape): Shape {
    const { filters, kernelSize: k, strides = 1, padding = 'same', groups = 0 } = this.args;
    if (inShape.length !== 3) throw new DynnError(`${this.name}: Conv2D needs an [H, W, C] input, got [${inShape}]`);
    if (groups > 0 && filters % groups !== 0) {
      throw new DynnError(`${this.name}: ${filters} filters do not split into ${groups} groups`);
    }
    const [h, w, c] = inShape;
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [k, k, c, filters], k * k * c, this.args.init));
    if (this.args.useBias) this.bias = this.addWeight('bias', tf.zeros([filters]));
    const out = (n: number) => (padding === 'same' ? Math.ceil(n / strides) : Math.floor((n - k) / strides) + 1);
    return [out(h), out(w), filters];
  }

  override block(): BlockInfo | null {
    const { groups, block } = this.args;
    return groups && !block ? { kind: 'width', name: this.name, groups } : null;
  }

  outSel(_sel: ChannelSel, plan: Plan): ChannelSel {
    const { filters, groups = 0, block = this.name, multiple = 1 } = this.args;
    return groups ? groupSel(planGroups(plan, block), groups, filters, multiple) : fullSel(filters);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const out = this.outSel(sel, ctx.plan);
    const kernel = take(take(this.kernel, 2, sel), 3, out) as tf.Tensor4D;
    let y: tf.Tensor = tf.conv2d(x as tf.Tensor4D, kernel, this.args.strides ?? 1, this.args.padding ?? 'same');
    if (this.bias) y = addChannelBias(y, take(this.bias, 0, out) as tf.Tensor1D);
    return { y, sel: out };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    const out = this.outSel(sel, plan);
    return [
      {
        op: 'conv',
        name: this.name,
        kernel: tf.clone(take(take(this.kernel, 2, sel), 3, out)) as tf.Tensor4D,
        bias: this.bias ? (tf.clone(take(this.bias, 0, out)) as tf.Tensor1D) : null,
        strides: this.args.strides ?? 1,
        padding: this.args.padding ?? 'same',
        relu: false,
      },
    ];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    const out = this.outSel(sel, plan);
    const k = this.args.kernelSize;
    const [oh, ow] = this.outShape;
    const params = k * k * sel.count * out.count + (this.bias ? out.count : 0);
    return [{ name: this.name, kind: this.className, macs: oh * ow * k * k * sel.count * out.count, params }];
  }
}

export interface DenseArgs {
  /** Output units at full width. */
  units: number;
  /** Add a bias (default true). */
  useBias?: boolean;
  /** Throttle the output units in this many groups; 0 or absent: not throttled. */
  groups?: number;
  /** With groups: round the active output units to a multiple of this (`roundChannels`; default 1). */
  multiple?: number;
  /** Initial kernel values (default 'fan-in-uniform'). */
  init?: KernelInit;
  /** Initial value of every bias (default 0; a gate starts open with a large one). */
  biasInit?: number;
}

/** A dense layer whose kernel is sliced to the active input features and output units. */
export class Dense extends Layer<DenseArgs> {
  readonly className = 'Dense';
  private kernel!: tf.Variable;
  private bias: tf.Variable | null = null;

  protected doBuild(inShape: Shape): Shape {
    const { units, useBias = true, groups = 0 } = this.args;
    if (inShape.length !== 1) throw new DynnError(`${this.name}: Dense needs a flat input, got [${inShape}]`);
    if (groups > 0 && units % groups !== 0) throw new DynnError(`${this.name}: ${units} units do not split into ${groups} groups`);
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [inShape[0], units], inShape[0], this.args.init));
    if (useBias) this.bias = this.addWeight('bias', tf.fill([units], this.args.biasInit ?? 0));
    return [units];
  }

  override block(): BlockInfo | null {
    return this.args.groups ? { kind: 'width', name: this.name, groups: this.args.groups } : null;
  }

  outSel(_sel: ChannelSel, plan: Plan): ChannelSel {
    const { units, groups = 0, multiple = 1 } = this.args;
    return groups ? groupSel(planGroups(plan, this.name), groups, units, multiple) : fullSel(units);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const out = this.outSel(sel, ctx.plan);
    let y: tf.Tensor = tf.matMul(x as tf.Tensor2D, take(take(this.kernel, 0, sel), 1, out) as tf.Tensor2D);
    if (this.bias) y = tf.add(y, take(this.bias, 0, out));
    return { y, sel: out };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    const out = this.outSel(sel, plan);
    return [
      {
        op: 'dense',
        name: this.name,
        kernel: tf.clone(take(take(this.kernel, 0, sel), 1, out)) as tf.Tensor2D,
        bias: this.bias ? (tf.clone(take(this.bias, 0, out)) as tf.Tensor1D) : null,
        relu: false,
      },
    ];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    const out = this.outSel(sel, plan);
    const params = sel.count * out.count + (this.bias ? out.count : 0);
    return [{ name: this.name, kind: this.className, macs: sel.count * out.count, params }];
  }
}

layerClasses.register('Conv2D', Conv2D);
layerClasses.register('Dense', Dense);
