import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { ResidualBlock, layerClasses } from '../layers/index.js';
import type { ChannelSel, Layer, LayerCost, Plan, ResidualBlockArgs, RunContext, Shape } from '../layers/index.js';
import { dispatchTensor } from './tensor.js';
import { nestedDecision, straightThrough } from './gates.js';
import { mechanisms } from './mechanisms.js';

export interface GatedResidualBlockArgs extends ResidualBlockArgs {
  /** Groups G of the inner channels (conv1's outputs, conv2's inputs); G must divide `filters`. */
  groups: number;
  /** The registered mechanism whose gate decides (see `mechanisms`). */
  mechanism: string;
  /** Channels of the gate's hidden layers (default: the mechanism's, from the block's input channels). */
  gateWidth?: number;
}

/**
 * A residual block whose inner width is chosen per sample by a gate inside the network (adaptive channel
 * skipping, ACS). The gate reads the block's input and decides how many of the G inner groups each sample
 * runs (nested, see `nestedDecision`); 0 skips the main path, leaving the shortcut. The batch is split by
 * that count and each part runs conv1 and conv2 sliced to its groups: skipped channels are not computed.
 *
 * Without routing (or in `full` mode) it is the throttleable `ResidualBlock` it extends, so one network
 * serves a fixed `u` and per-sample gates alike. Its BatchNorms keep a row per active group count (statistics
 * per route), which is what the plan's level means for a block throttled in G groups.
 */
export class GatedResidualBlock extends ResidualBlock<GatedResidualBlockArgs> {
  override readonly className = 'GatedResidualBlock';
  private gate!: Layer;

  protected override doBuild(inShape: Shape): Shape {
    const { filters, groups, levels } = this.args;
    if (this.args.gated) throw new DynnError(`${this.name}: a block gated per sample is not also depth-gated by the plan`);
    if (!Number.isInteger(groups) || groups < 1 || filters % groups !== 0) {
      throw new DynnError(`${this.name}: ${filters} inner channels do not split into ${groups} groups`);
    }
    if (levels !== groups + 1) throw new DynnError(`${this.name}: a gated block keeps ${groups + 1} BatchNorm rows (0..${groups} active groups), got ${levels}`);
    const out = super.doBuild(inShape);
    const mechanism = mechanisms.get(this.args.mechanism);
    this.gate = mechanism.gate(`${this.name}.gate`, { outputs: groups, width: this.args.gateWidth ?? mechanism.defaultWidth(inShape[2]) });
    this.gate.build(inShape, this.seed);
    this.layers.push(this.gate);
    return out;
  }

  /** The plan of `k` active inner groups (the first k: decisions nest), at BatchNorm row k. */
  planOf(plan: Plan, k: number): Plan {
    return { ...plan, groups: new Map(plan.groups).set(this.innerKey, Int32Array.from({ length: k }, (_, i) => i)), level: k };
  }

  override call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const routing = ctx.routing;
    if (!routing || routing.mode === 'full') return super.call(x, sel, ctx);
    const out = this.outSel(sel, ctx.plan);
    const G = this.args.groups;
    const width = this.args.filters / G;
    const { q, counts, surrogate } = nestedDecision(this.name, this.gate.call(x, sel, ctx).y as tf.Tensor2D, routing);
    const { gateMacs, groupMacs } = this.unitMacs(sel);
    routing.decide(this.name, counts, G);
    routing.spend(Array.from(counts, (k) => gateMacs + k * groupMacs));
    routing.expect(tf.add(gateMacs, tf.mul(tf.sum(q, 1), groupMacs)) as tf.Tensor1D);
    if (routing.mode === 'masked') {
      // The field's form, for measurement only: every inner channel computed, then multiplied by the mask.
      const mask = tf.tensor4d(Float32Array.from({ length: counts.length * G * width }, (_, i) => (Math.floor((i % (G * width)) / width) < counts[Math.floor(i / (G * width))] ? 1 : 0)), [counts.length, 1, 1, G * width]);
      return { y: this.forwardAt(x, sel, ctx, { ...ctx, plan: this.planOf(ctx.plan, G) }, mask), sel: out };
    }
    const soft = routing.mode === 'soft';
    const y = dispatchTensor(x, counts, (k, part, rows) => {
      const child = { ...ctx, routing: routing.child(rows) };
      const st = soft && k > 0 ? straightThrough(tf.gather(surrogate, rows) as tf.Tensor2D, k, width) : undefined;
      return this.forwardAt(part, sel, child, { ...child, plan: this.planOf(ctx.plan, k) }, st);
    });
    return { y, sel: out };
  }

  /** MACs of the gate, and of one inner group (conv1's outputs and conv2's inputs scale with it). */
  unitMacs(sel: ChannelSel): { gateMacs: number; groupMacs: number } {
    const [oh, ow] = this.outShape;
    const width = this.args.filters / this.args.groups;
    const gateMacs = this.gateCost(sel).reduce((a, c) => a + c.macs, 0);
    return { gateMacs, groupMacs: oh * ow * 9 * (sel.count * width + width * this.args.filters) };
  }

  /** The gate's own cost: it runs at full width whatever the plan. */
  private gateCost(sel: ChannelSel): LayerCost[] {
    return this.gate.cost(sel, { u: 1, groups: new Map(), depth: new Map(), level: 0 }).map((c) => ({ ...c, gate: true }));
  }

  override cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    const shortcut = new Set(this.shortcut.map((l) => l.name));
    const own = super.cost(sel, plan).map((c) => (shortcut.has(c.name) ? c : { ...c, routed: this.name }));
    return [...own, ...this.gateCost(sel).map((c) => ({ ...c, routed: this.name }))];
  }
}

layerClasses.register('GatedResidualBlock', GatedResidualBlock);
