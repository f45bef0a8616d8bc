import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { BatchNorm, Composite, Conv2D, ReLU, layerClasses, planGroups } from '../layers/index.js';
import type { BlockInfo, ChannelSel, Layer, LayerCost, Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import { dispatchTensor } from './tensor.js';
import { nestedDecision, straightThrough } from './gates.js';
import { mechanisms } from './mechanisms.js';

export interface GatedResidualBlockArgs {
  /** Output channels (and the inner width at full width). */
  filters: number;
  /** Stride of the first convolution (default 1); a stride or channel change adds a 1x1 projection. */
  strides?: number;
  /** Groups G of the inner channels (conv1's outputs, conv2's inputs); G must divide `filters`. */
  groups: number;
  /** The registered mechanism whose gate decides (see `mechanisms`). */
  mechanism: string;
  /** Channels of the gate's hidden layers (default: the mechanism's, from the block's input channels). */
  gateWidth?: number;
  /** BatchNorm rows of the block's own BatchNorms: G + 1, one per number of active inner groups. */
  levels: number;
}

/**
 * A residual block whose inner width is chosen per sample by a gate inside the network (adaptive channel
 * skipping, ACS). The gate reads the block's input and decides how many of the G inner groups each sample
 * runs (nested, see `nestedDecision`); 0 skips the main path, leaving the shortcut. The batch is split by
 * that count and each part runs conv1 and conv2 sliced to its groups: skipped channels are not computed.
 *
 * It is also a widthwise block of the throttleable kind: without routing (or in `full` mode) it runs the
 * plan's groups, so one network serves a fixed `u` and per-sample gates alike. Its own BatchNorms keep a row
 * per active group count (statistics per route), which is also what the plan's level means for it.
 */
export class GatedResidualBlock extends Composite<GatedResidualBlockArgs> {
  readonly className = 'GatedResidualBlock';
  private front: Layer[] = [];
  private back: Layer[] = [];
  private shortcut: Layer[] = [];
  private gate!: Layer;

  protected doBuild(inShape: Shape): Shape {
    const { filters, strides = 1, groups, levels } = this.args;
    const mechanism = mechanisms.get(this.args.mechanism);
    const n = this.name;
    if (!Number.isInteger(groups) || groups < 1 || filters % groups !== 0) {
      throw new DynnError(`${n}: ${filters} inner channels do not split into ${groups} groups`);
    }
    if (levels !== groups + 1) throw new DynnError(`${n}: a gated block keeps ${groups + 1} BatchNorm rows (0..${groups} active groups), got ${levels}`);
    this.front = [
      new Conv2D(`${n}.conv1`, { filters, kernelSize: 3, strides, groups, block: n }),
      new BatchNorm(`${n}.bn1`, { levels }),
      new ReLU(`${n}.relu1`, {}),
    ];
    this.back = [new Conv2D(`${n}.conv2`, { filters, kernelSize: 3 }), new BatchNorm(`${n}.bn2`, { levels })];
    const projected = strides !== 1 || inShape[2] !== filters;
    this.shortcut = projected ? [new Conv2D(`${n}.proj`, { filters, kernelSize: 1, strides }), new BatchNorm(`${n}.projbn`, { levels })] : [];
    this.gate = mechanism.gate(`${n}.gate`, { outputs: groups, width: this.args.gateWidth ?? mechanism.defaultWidth(inShape[2]) });
    this.layers = [...this.front, ...this.back, ...this.shortcut, this.gate];
    const out = this.buildChain([...this.front, ...this.back], inShape);
    this.buildChain(this.shortcut, inShape);
    this.gate.build(inShape, this.seed);
    return out;
  }

  override block(): BlockInfo | null {
    return { kind: 'width', name: this.name, groups: this.args.groups };
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.chainSel([...this.front, ...this.back], sel, plan);
  }

  /** The plan of `k` active inner groups (the first k: decisions nest), at BatchNorm row k. */
  private planOf(plan: Plan, k: number): Plan {
    return { ...plan, groups: new Map(plan.groups).set(this.name, Int32Array.from({ length: k }, (_, i) => i)), level: k };
  }

  /** Runs the block for every row at `plan` (its groups for this block), `st` scaling the inner channels. */
  private run(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, plan: Plan, st?: tf.Tensor): tf.Tensor {
    const short = this.shortcut.length ? this.runChain(this.shortcut, x, sel, ctx).y : x;
    const k = planGroups(plan, this.name).length;
    if (k === 0) return tf.relu(short);
    const inner = { ...ctx, plan };
    const front = this.runChain(this.front, x, sel, inner);
    const h = st ? tf.mul(front.y, st) : front.y;
    return tf.relu(tf.add(this.runChain(this.back, h, front.sel, inner).y, short));
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const out = this.outSel(sel, ctx.plan);
    const routing = ctx.routing;
    if (!routing || routing.mode === 'full') {
      const k = planGroups(ctx.plan, this.name).length;
      return { y: this.run(x, sel, ctx, this.planOf(ctx.plan, k)), sel: out };
    }
    const G = this.args.groups;
    const width = this.args.filters / G;
    const { q, counts } = nestedDecision(this.name, this.gate.call(x, sel, ctx).y as tf.Tensor2D, routing);
    const { gateMacs, groupMacs } = this.unitMacs(sel);
    routing.decide(this.name, counts);
    routing.spend(Array.from(counts, (k) => gateMacs + k * groupMacs));
    routing.expect(tf.add(gateMacs, tf.mul(tf.sum(q, 1), groupMacs)) as tf.Tensor1D);
    if (routing.mode === 'masked') {
      // The field's form, for measurement only: every inner channel computed, then multiplied by the mask.
      const mask = tf.tensor4d(Float32Array.from({ length: counts.length * G * width }, (_, i) => (Math.floor((i % (G * width)) / width) < counts[Math.floor(i / (G * width))] ? 1 : 0)), [counts.length, 1, 1, G * width]);
      return { y: this.run(x, sel, ctx, this.planOf(ctx.plan, G), mask), sel: out };
    }
    const soft = routing.mode === 'soft';
    const y = dispatchTensor(x, counts, (k, part, rows) => {
      const child = { ...ctx, routing: routing.child(rows) };
      const st = soft && k > 0 ? straightThrough(tf.gather(q, rows) as tf.Tensor2D, k, width) : undefined;
      return this.run(part, sel, child, this.planOf(ctx.plan, k), st);
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

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    const k = planGroups(plan, this.name).length;
    // No inner group: the block is relu(shortcut(x)), and an identity shortcut's input is already >= 0.
    if (k === 0) return this.shortcut.length ? [...this.chainFreeze(this.shortcut, sel, plan), { op: 'relu' }] : [];
    const p = this.planOf(plan, k);
    const main = [...this.chainFreeze(this.front, sel, p), ...this.chainFreeze(this.back, this.chainSel(this.front, sel, p), p)];
    return [{ op: 'residual', main, shortcut: this.chainFreeze(this.shortcut, sel, plan) }];
  }

  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    const p = this.planOf(plan, planGroups(plan, this.name).length);
    const main = [...this.chainCost(this.front, sel, p), ...this.chainCost(this.back, this.chainSel(this.front, sel, p), p)];
    const routed = [...main, ...this.gateCost(sel)].map((c) => ({ ...c, routed: this.name }));
    return [...routed, ...this.chainCost(this.shortcut, sel, plan)];
  }
}

layerClasses.register('GatedResidualBlock', GatedResidualBlock);
