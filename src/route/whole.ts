import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite, fullSel } from '../layers/index.js';
import type { BlockInfo, ChannelSel, Layer, LayerCost, Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import type { Network } from '../models/network.js';
import type { SwitchRoute } from './switch.js';
import { mechanisms } from './mechanisms.js';
import { gateCost, makeGate } from './unit.js';
import { routeSwitch, type Switch } from './switch.js';

/** What a switch over whole networks takes besides its routes. */
export interface WholeSwitchArgs {
  /** The registered mechanism whose gate decides (`branch`, `resolution`). */
  mechanism: string;
  /** Channels of the gate's hidden layers (default: the mechanism's). */
  gateWidth?: number;
  /** Factor on the gate's logits (default 1). */
  gateScale?: number;
  /** Classes of the output. */
  numClasses: number;
}

/**
 * A switch (`routeSwitch`) at the input that picks, per sample, one of K whole networks (routes) ordered by
 * cost: the branches of a gated multi-branch network, or one network at K input resolutions. The gate's K - 1
 * logits decide as nested counts, so the threshold sweep gives operating points as for every other mechanism,
 * and the batch is split by route with the one dispatch: each route runs only on its rows. The masked
 * baseline runs the costliest route on every row.
 *
 * As a throttleable block of K groups it also runs at a fixed `u` (every sample the route of `u`'s active
 * groups, less one; u = 1 is the most costly route): that is how the routes train before the gate (`--pretrain-epochs`,
 * with the sandwich rule: every route in a step, the costliest teaching), how `evaluate` at a `u` and the
 * cascade controller see them, and what `full` routing runs. Routes plan themselves (`plannedChildren` is
 * empty): each runs its network at its own full plan.
 *
 * Its mechanism freezes the routes while the gate trains (`Mechanism.frozenRoutes`: the trainer's gate epochs
 * step the gate alone, the routes at inference) and supervises the gate with DS-Net's loss (`gateLoss`).
 */
export abstract class WholeSwitch<A extends WholeSwitchArgs> extends Composite<A> implements Switch {
  protected gateLayer!: Layer;
  /** Per route: the costs of what a sample taking it runs, its gate excluded. */
  protected routeCosts: LayerCost[][] = [];

  /** Routes K (at least 2), ascending in cost. */
  abstract get routes(): number;
  /** Builds the routes on the switch's input shape and returns the output shape (checked against numClasses). */
  protected abstract buildRoutes(inShape: Shape): Shape;
  /** The gate's input shape from the switch's (the input, or a low-resolution glimpse of it). */
  protected gateShape(inShape: Shape): Shape {
    return inShape;
  }
  /** The gate's input from the switch's. */
  protected gateInput(x: tf.Tensor): tf.Tensor {
    return x;
  }
  /** Route k on the rows of `x` (class scores). */
  protected abstract runRoute(k: number, x: tf.Tensor, ctx: RunContext): tf.Tensor;
  /** Route k as export by segments lowers it (layers at a plan, after an optional resize of the input). */
  abstract exportRoute(k: number): SwitchRoute;
  /** The size the gate's input is resized to first, if it reads a glimpse (adaptive resolution). */
  gateResize(): [number, number] | undefined {
    return undefined;
  }
  /** Route k's inference ops. */
  protected abstract freezeRoute(k: number): FrozenOp[];
  /** Each route's networks (for `plannedChildren`, weights and BatchNorm walks). */
  protected abstract routeNets(): Network[];

  protected doBuild(inShape: Shape): Shape {
    const out = this.buildRoutes(inShape);
    if (out.length !== 1 || out[0] !== this.args.numClasses) throw new DynnError(`${this.name}: its routes give [${out}], not ${this.args.numClasses} class scores`);
    const gShape = this.gateShape(inShape);
    this.gateLayer = makeGate(this.name, this.routes - 1, this.args, gShape, this.seed);
    this.layers = [this.gateLayer, ...this.routeNets().flatMap((n) => n.layers)];
    return out;
  }

  get gate(): Layer {
    return this.gateLayer;
  }

  override block(): BlockInfo {
    return { kind: 'width', name: this.name, groups: this.routes };
  }

  /** The routes run whole networks at their own plans: the outer plan reaches only this switch. */
  override plannedChildren(): Layer[] {
    return [];
  }

  /** The route a plan runs for every sample: its active groups of this switch, less one (the costliest when absent). */
  routeOf(plan: Plan): number {
    const g = plan.groups.get(this.name);
    return g ? Math.min(this.routes - 1, Math.max(0, g.length - 1)) : this.routes - 1;
  }

  /** Route k in a few words, for `dynn info` (a branch's model, a resolution). */
  abstract routeLabel(k: number): string;

  /** MACs a sample taking route k runs, its gate excluded. */
  routeMacs(k: number): number {
    return this.routeCosts[k].reduce((a, c) => a + c.macs, 0);
  }

  outSel(): ChannelSel {
    return fullSel(this.args.numClasses);
  }

  call(x: tf.Tensor, _sel: ChannelSel, ctx: RunContext) {
    const routing = ctx.routing;
    const out = this.outSel();
    if (!routing || routing.mode === 'full') return { y: this.runRoute(this.routeOf(ctx.plan), x, ctx), sel: out };
    const gSel = fullSel(this.gateLayer.inShape[2]);
    const macs = Array.from({ length: this.routes }, (_, k) => this.routeMacs(k));
    const supervise = mechanisms.get(this.args.mechanism).gateLoss;
    const y = routeSwitch(this, this.gateInput(x), gSel, ctx, macs, (k, part, child) => this.runRoute(k, part, child), { input: x, supervise });
    return { y, sel: out };
  }

  freeze(_sel: ChannelSel, plan: Plan): FrozenOp[] {
    return this.freezeRoute(this.routeOf(plan));
  }

  /** The plan's route, marked as decided per sample, and the gate's cost (see `routedCost`). */
  cost(_sel: ChannelSel, plan: Plan): LayerCost[] {
    const gate = gateCost(this.gateLayer, fullSel(this.gateLayer.inShape[2]));
    return [...this.routeCosts[this.routeOf(plan)], ...gate].map((c) => ({ ...c, routed: this.name }));
  }
}
