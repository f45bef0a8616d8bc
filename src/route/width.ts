import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { activeGroupCount } from '../gating/gating.js';
import { Composite, fullSel } from '../layers/index.js';
import type { BlockInfo, ChannelSel, Layer, LayerCost, Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import { mechanisms } from './mechanisms.js';
import { routeSwitch, type Switch } from './switch.js';
import { gateCost, gateMacsOf, makeGate } from './unit.js';
import { nestedCounts } from './count.js';
import { LogitGate } from './gates.js';
import type { Network } from '../models/network.js';

/** A width switch's settings (the layers after it are its constructor's `tail`). */
export interface WidthSwitchArgs {
  /** The registered mechanism whose gate decides (see `mechanisms`). */
  mechanism: string;
  /** Routes K: the widths a sample can take, route k running ceil((k + 1) D / K) of the tail's D groups (default 4). */
  routes?: number;
  /** Channels of the gate's hidden layers (default: the mechanism's, from the switch point's channels). */
  gateWidth?: number;
  /** Factor on the gate's logits (default: the mechanism's). */
  gateScale?: number;
}

function widthBlocks(layers: Layer[]): (BlockInfo & { kind: 'width' })[] {
  return layers.flatMap((l) => {
    const b = l.block();
    return [...(b?.kind === 'width' ? [b] : []), ...widthBlocks(l.children())];
  });
}

/**
 * Dynamic width (DS-Net's gated embedded network): a gate at the switch point reads the features there and
 * picks, per sample, one of K widths for the rest of the network (`tail`), a throttleable network whose
 * plans and sliced weights are the ones a fixed u runs. Each width's samples run the sliced tail as one
 * smaller batch (`routeSwitch`): no masks. Without routing (or in `full` mode) the tail runs at the
 * context's plan, so one set of weights is also the fixed-u network (the supernet DS-Net trains first).
 */
export class WidthSwitch extends Composite<WidthSwitchArgs> implements Switch {
  readonly className = 'WidthSwitch';
  private gateLayer!: Layer;
  private blocks: (BlockInfo & { kind: 'width' })[] = [];
  private groups = 0;

  constructor(name: string, args: WidthSwitchArgs, /** The layers after the switch point. */ readonly tail: Layer[]) {
    super(name, args);
  }

  protected doBuild(inShape: Shape): Shape {
    const out = this.buildChain(this.tail, inShape);
    this.blocks = widthBlocks(this.tail);
    if (this.blocks.length === 0) throw new DynnError(`${this.name}: nothing after the switch point is throttleable, so there is no width to choose`);
    this.groups = Math.max(...this.blocks.map((b) => b.groups));
    const K = this.routes;
    if (!Number.isInteger(K) || K < 2 || K > this.groups) throw new DynnError(`${this.name}: routes must be an integer in 2..${this.groups} (the tail's groups), got ${K}`);
    this.gateLayer = makeGate(this.name, K - 1, this.args, inShape, this.seed);
    this.layers = [...this.tail, this.gateLayer];
    return out;
  }

  get gate(): Layer {
    return this.gateLayer;
  }

  get routes(): number {
    return this.args.routes ?? 4;
  }

  /** Active groups of route k (of the tail's D): ceil((k + 1) D / K). */
  routeGroups(k: number): number {
    return Math.ceil(((k + 1) * this.groups) / this.routes);
  }

  /** `plan` with the tail at route k's width: what `Network.plan(u)` gives the tail at that level. */
  routePlan(plan: Plan, k: number): Plan {
    const g = this.routeGroups(k);
    const u = g / this.groups;
    const groups = new Map(plan.groups);
    for (const b of this.blocks) groups.set(b.name, Int32Array.from({ length: activeGroupCount(u, b.groups) }, (_, i) => i));
    return { ...plan, u, groups, level: g };
  }

  private readonly macsBySel = new Map<number, number[]>();

  /**
   * MACs a sample costs in the tail at each route (the gate's not included). A route's plan sets every tail
   * block, so they depend on the channels coming in only: kept per count, as every routed pass asks.
   */
  routeMacs(sel: ChannelSel, plan: Plan): number[] {
    let macs = this.macsBySel.get(sel.count);
    if (!macs) {
      macs = Array.from({ length: this.routes }, (_, k) => this.chainCost(this.tail, sel, this.routePlan(plan, k)).reduce((a, c) => a + c.macs, 0));
      this.macsBySel.set(sel.count, macs);
    }
    return macs;
  }

  /** The tail on every row of `x` at `plan`. */
  runTail(x: tf.Tensor, sel: ChannelSel, ctx: RunContext): tf.Tensor {
    return this.runChain(this.tail, x, sel, ctx).y;
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const out = this.outSel(sel, ctx.plan);
    if (!ctx.routing || ctx.routing.mode === 'full') return { y: this.runTail(x, sel, ctx), sel: out };
    const y = routeSwitch(this, x, sel, ctx, this.routeMacs(sel, ctx.plan), (k, part, c) => this.runTail(part, sel, { ...c, plan: this.routePlan(c.plan, k) }), {
      supervise: mechanisms.get(this.args.mechanism).gateLoss,
    });
    return { y, sel: out };
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.chainSel(this.tail, sel, plan);
  }

  /** The tail at the plan's fixed width (the gate has no frozen form: the fixed-u sub-network). */
  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    return this.chainFreeze(this.tail, sel, plan);
  }

  /** The tail's costs at the plan and the gate's, all marked routed: per sample, the switch records what ran. */
  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return [...this.chainCost(this.tail, sel, plan), ...gateCost(this.gateLayer, sel)].map((c) => ({ ...c, routed: this.name }));
  }
}

/**
 * A throttleable network's layers with a width switch after layer `after`, the end of its first stage: the
 * layers up to it (no plan throttles them) run for every sample, the switch's gate reads their output, and
 * the rest is the switch's tail. Weight names are unchanged, so a throttleable run of the same model
 * initializes it.
 */
export function withWidthSwitch(layers: Layer[], after: string, args: WidthSwitchArgs): Layer[] {
  const at = layers.findIndex((l) => l.name === after) + 1;
  if (at <= 0 || at >= layers.length) throw new DynnError(`a width switch goes after layer ${after}, which is not one of the model's top-level layers before its last`);
  return [...layers.slice(0, at), new WidthSwitch('switch', args, layers.slice(at))];
}

/** The network's width switch, if it has one. */
export function widthSwitchOf(model: { layers: Layer[] }): WidthSwitch | undefined {
  return model.layers.find((l): l is WidthSwitch => l instanceof WidthSwitch);
}

/**
 * Shifts a width switch's logits by one common offset (its gate's output bias) so that, with deterministic
 * decisions at `threshold`, the mean executed FLOPs ratio over `images` comes to `target`: bisection on the
 * offset, the ratio rising with it. Training's sampled decisions meet the target on average; this makes the
 * deployed threshold meet it too. The gate runs once; each candidate only recounts routes (`nestedCounts`).
 * Returns the ratio reached. Call outside `tf.tidy`.
 */
export function fitSwitchTarget(model: Network, images: tf.Tensor4D, target: number, threshold: number, steps = 30): number {
  const sw = widthSwitchOf(model);
  if (!sw || !(sw.gate instanceof LogitGate)) throw new DynnError(`${model.config.model} has no width switch whose gate could be fitted`);
  const plan = model.plan(1);
  const at = model.layers.indexOf(sw);
  let sel = fullSel(model.inputShape[2]);
  const z = tf.tidy(() => {
    const ctx = { plan, training: false };
    let y: tf.Tensor = images;
    for (const l of model.layers.slice(0, at)) ({ y, sel } = l.call(y, sel, ctx));
    return sw.gate.call(y, sel, ctx).y.dataSync() as Float32Array;
  });
  const { fixed, backbone } = model.routedMacs(plan);
  const costs = sw.routeMacs(sel, plan).map((m) => (fixed + gateMacsOf(sw.gate, sel) + m) / backbone);
  const G = sw.routes - 1;
  const ratioAt = (offset: number) => {
    const counts = nestedCounts(z.map((v) => v + offset), G, threshold);
    return counts.reduce((a, k) => a + costs[k], 0) / Math.max(1, counts.length);
  };
  let [lo, hi] = [-30, 30];
  let best = { offset: 0, gap: Infinity, ratio: NaN };
  for (let i = 0; i < steps; i++) {
    const mid = (lo + hi) / 2;
    const ratio = ratioAt(mid);
    if (Math.abs(ratio - target) < best.gap) best = { offset: mid, gap: Math.abs(ratio - target), ratio };
    if (ratio > target) hi = mid;
    else lo = mid;
  }
  sw.gate.shiftLogits(best.offset);
  return best.ratio;
}
