import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { ResidualBlock, layerClasses } from '../layers/index.js';
import type { ChannelSel, Layer, LayerCost, Plan, ResidualBlockArgs, RunContext, Shape } from '../layers/index.js';
import type { ChannelFactor } from '../layers/channel.js';
import { buildGate, checkGroups, routeUnit, routedCost, type GatedArgs, type GatedUnit } from './unit.js';

export interface GatedResidualBlockArgs extends Omit<ResidualBlockArgs, 'groups'>, GatedArgs {}

/**
 * A residual block whose inner width is chosen per sample by a gate inside the network (adaptive channel
 * skipping, ACS). The gate reads the block's input and decides how many of the G inner groups (conv1's
 * outputs, conv2's inputs) each sample runs (nested, see `nestedDecision`); 0 skips the main path, leaving
 * the shortcut. `routeUnit` splits the batch by that count and each part runs conv1 and conv2 sliced to its
 * groups: skipped channels are not computed.
 *
 * Without routing (or in `full` mode) it is the throttleable `ResidualBlock` it extends, so one network
 * serves a fixed `u` and per-sample gates alike. Its BatchNorms keep a row per active group count (statistics
 * per route), which is what the plan's level means for a block throttled in G groups.
 */
export class GatedResidualBlock extends ResidualBlock<GatedResidualBlockArgs> implements GatedUnit {
  override readonly className = 'GatedResidualBlock';
  private gateLayer!: Layer;

  protected override doBuild(inShape: Shape): Shape {
    const { filters, groups, levels } = this.args;
    if (this.args.gated) throw new DynnError(`${this.name}: a block gated per sample is not also depth-gated by the plan`);
    checkGroups(this.name, filters, groups);
    if (levels !== groups + 1) throw new DynnError(`${this.name}: a gated block keeps ${groups + 1} BatchNorm rows (0..${groups} active groups), got ${levels}`);
    const out = super.doBuild(inShape);
    this.gateLayer = buildGate(this, this.args, inShape, this.seed);
    this.layers.push(this.gateLayer);
    return out;
  }

  get gate(): Layer {
    return this.gateLayer;
  }

  get groups(): number {
    return this.args.groups;
  }

  get groupWidth(): number {
    return this.args.filters / this.args.groups;
  }

  get decisions(): string {
    return this.args.decisions ?? 'nested';
  }

  /** conv1's output and conv2's input, both 3x3 on the output grid. */
  channelMacs(sel: ChannelSel): number {
    const [oh, ow] = this.outShape;
    return oh * ow * 9 * (sel.count + this.args.filters);
  }

  runAt(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, inner: RunContext, factor?: ChannelFactor): tf.Tensor {
    return this.forwardAt(x, sel, ctx, inner, factor);
  }

  override call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    if (!ctx.routing || ctx.routing.mode === 'full') return super.call(x, sel, ctx);
    return { y: routeUnit(this, x, sel, ctx), sel: this.outSel(sel, ctx.plan) };
  }

  override cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return routedCost(this, sel, super.cost(sel, plan), new Set(this.shortcut.map((l) => l.name)));
  }
}

layerClasses.register('GatedResidualBlock', GatedResidualBlock);
