import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { BatchNorm, Conv2D, DenseUnit, ReLU, layerClasses } from '../layers/index.js';
import type { ChannelSel, DenseUnitArgs, Layer, LayerCost, Plan, RunContext, Shape } from '../layers/index.js';
import { scaleChannels, type ChannelFactor } from '../layers/channel.js';
import { buildGate, checkGroups, routeUnit, routedCost, type GatedArgs, type GatedUnit } from './unit.js';

export interface GatedDenseUnitArgs extends Omit<DenseUnitArgs, 'groups'>, GatedArgs {}

/**
 * A DenseNet-BC unit whose 3x3 convolution is told per sample which of its input channels to compute (ACS
 * on DenseNet): a gate reads the unit's input and decides how many of the G groups of bottleneck channels
 * (the 1x1's outputs, the 3x3's inputs) each sample runs. BN-ReLU on the input is the same for every route
 * and runs once on the whole batch; `routeUnit` then splits the batch by the count and each part runs the
 * 1x1 and the 3x3 sliced to its groups, BatchNorm at the row of its count (statistics per route).
 *
 * The k new channels always exist, so the concatenation keeps one shape for every sample: with no group
 * active they are zeros (the unit contributes nothing and computes nothing but its gate). Without routing
 * (or in `full` mode) it is a DenseUnit whose bottleneck, not its new channels, is throttled by the plan
 * (no group: zeros, as a route of 0).
 */
export class GatedDenseUnit extends DenseUnit<GatedDenseUnitArgs> implements GatedUnit {
  override readonly className = 'GatedDenseUnit';
  private gateLayer!: Layer;
  /** BN-ReLU on the unit's input, shared by every route. */
  private pre: Layer[] = [];
  /** The 1x1, its BN-ReLU and the 3x3: what a route's groups scale. */
  private routed: Layer[] = [];

  protected override doBuild(inShape: Shape): Shape {
    const { growth, bottleneck = 4 * growth, groups, levels } = this.args;
    if (this.args.gated) throw new DynnError(`${this.name}: a unit gated per sample is not also depth-gated by the plan`);
    checkGroups(this.name, bottleneck, groups);
    if (levels !== groups + 1) throw new DynnError(`${this.name}: a gated unit keeps ${groups + 1} BatchNorm rows (0..${groups} active groups), got ${levels}`);
    const out = super.doBuild(inShape);
    this.pre = this.branch.slice(0, 2);
    this.routed = this.branch.slice(2);
    this.gateLayer = buildGate(this, this.args, inShape, this.seed);
    this.layers.push(this.gateLayer);
    return out;
  }

  protected override makeBranch(): Layer[] {
    const { growth: k, bottleneck = 4 * k, groups, levels } = this.args;
    const n = this.name;
    return [
      new BatchNorm(`${n}.bn1`, { levels }),
      new ReLU(`${n}.relu1`, {}),
      new Conv2D(`${n}.conv1`, { filters: bottleneck, kernelSize: 1, groups }),
      new BatchNorm(`${n}.bn2`, { levels }),
      new ReLU(`${n}.relu2`, {}),
      new Conv2D(`${n}.conv2`, { filters: k, kernelSize: 3 }),
    ];
  }

  get innerKey(): string {
    return `${this.name}.conv1`;
  }

  get gate(): Layer {
    return this.gateLayer;
  }

  get groups(): number {
    return this.args.groups;
  }

  get groupWidth(): number {
    return (this.args.bottleneck ?? 4 * this.args.growth) / this.args.groups;
  }

  get decisions(): string {
    return this.args.decisions ?? 'nested';
  }

  /** A bottleneck channel: one 1x1 output over the input's channels, one 3x3 input to the k new channels. */
  channelMacs(sel: ChannelSel): number {
    const [h, w] = this.outShape;
    return h * w * (sel.count + 9 * this.args.growth);
  }

  /** The k new channels of rows `h` (the input after BN-ReLU); zeros with no group active. */
  runAt(h: tf.Tensor, sel: ChannelSel, _ctx: RunContext, inner: RunContext, factor?: ChannelFactor): tf.Tensor {
    if (inner.plan.groups.get(this.innerKey)?.length === 0) {
      const [rows, height, width] = h.shape;
      return tf.zeros([rows, height, width, this.args.growth]);
    }
    const [conv1, bn2, relu2, conv2] = this.routed;
    const front = this.runChain([conv1, bn2, relu2], h, sel, inner);
    return conv2.call(scaleChannels(front.y, factor), front.sel, inner).y;
  }

  override call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const h = this.runChain(this.pre, x, sel, ctx).y;
    const routing = ctx.routing;
    const y = routing && routing.mode !== 'full' ? routeUnit(this, x, sel, ctx, h) : this.runAt(h, sel, ctx, ctx);
    return { y: tf.concat([x, y], 3), sel: this.outSel(sel, ctx.plan) };
  }

  override cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return routedCost(this, sel, super.cost(sel, plan), new Set(this.pre.map((l) => l.name)));
  }
}

layerClasses.register('GatedDenseUnit', GatedDenseUnit);
