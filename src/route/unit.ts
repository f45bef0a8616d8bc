import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';
import type { ChannelSel, Layer, LayerCost, Plan, Routing, RunContext } from '../layers/index.js';
import { binaryDecisions, onesWithGradient } from './gates.js';
import type { ChannelFactor } from '../layers/channel.js';
import { decideRoutes, runRoutes } from './routes.js';
import { gateName, mechanisms } from './mechanisms.js';

/** What every unit gated per sample takes besides its own arguments. */
export interface GatedArgs {
  /** Groups G of the inner channels the gate decides on; G must divide them. */
  groups: number;
  /** The registered mechanism whose gate decides (see `mechanisms`). */
  mechanism: string;
  /** Channels of the gate's hidden layers (default: the mechanism's, from the unit's input channels). */
  gateWidth?: number;
  /** Factor on the gates' logits (default 1; see `GateNetArgs.logitScale`): how fast the gates learn against the backbone. */
  gateScale?: number;
  /** The registered decision form (see `decisionForms`; default `nested`). */
  decisions?: string;
}

/**
 * What a unit gated per sample (a residual block, a dense unit) tells the shared routing about itself. The
 * unit owns its layers; `routeUnit` owns the gate's decisions, the split of the batch, the cost records and
 * the losses, so a new gated unit is its layers, `runAt` and a cost per inner channel.
 */
export interface GatedUnit {
  readonly name: string;
  /** Plan key of the inner channels' groups (the widthwise block the gate throttles). */
  readonly innerKey: string;
  /** The unit's gate (see `mechanisms`), built on the unit's input. */
  readonly gate: Layer;
  /** Groups G of the inner channels, and channels per group. */
  readonly groups: number;
  readonly groupWidth: number;
  /** The registered decision form (see `decisionForms`). */
  readonly decisions: string;
  /** MACs one inner channel costs a sample (every convolution it feeds or comes from). */
  channelMacs(sel: ChannelSel): number;
  /**
   * The unit's routed work on the rows of `x`, its inner channels as `inner.plan` says, multiplied by
   * `factor` (`scaleChannels`: a mask, per-channel factors, a straight-through factor) when given.
   */
  runAt(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, inner: RunContext, factor?: ChannelFactor): tf.Tensor;
}

/** The gate's own cost: it runs at full width whatever the plan. */
export function gateCost(gate: Layer, sel: ChannelSel): LayerCost[] {
  return gate.cost(sel, { u: 1, groups: new Map(), depth: new Map(), level: 0 }).map((c) => ({ ...c, gate: true }));
}

/** What the gate costs a sample, in MACs (the routed cost records and the export's manifest). */
export function gateMacsOf(gate: Layer, sel: ChannelSel): number {
  return gateCost(gate, sel).reduce((a, c) => a + c.macs, 0);
}

/** `plan` with the unit's first `k` inner groups active, at BatchNorm row k (statistics per route). */
export function innerPlan(plan: Plan, unit: Pick<GatedUnit, 'innerKey'>, k: number): Plan {
  return { ...plan, groups: new Map(plan.groups).set(unit.innerKey, Int32Array.from({ length: k }, (_, i) => i)), level: k };
}

/** `ctx` at the unit's `innerPlan` of k groups. */
export function innerContext(ctx: RunContext, unit: Pick<GatedUnit, 'innerKey'>, k: number): RunContext {
  return { ...ctx, plan: innerPlan(ctx.plan, unit, k) };
}

/** What a decision form gets: the unit, its logits and what a sample pays for the gate and per channel. */
export interface Deciding {
  unit: GatedUnit;
  /** The rows the unit's routed work runs on (the unit's input, or what it computes from it for every route). */
  input: tf.Tensor;
  sel: ChannelSel;
  ctx: RunContext;
  routing: Routing;
  logits: tf.Tensor2D;
  gateMacs: number;
  channelMacs: number;
}

/** How a gate's logits become per-sample decisions, and how they run. */
export interface DecisionForm {
  /** One line for the docs and `dynn info`. */
  description: string;
  /** Whether the decisions run as a mask over every inner channel (so they save FLOPs on paper only). */
  masked: boolean;
  /** Logits the gate gives for G groups of `width` channels. */
  outputs(groups: number, width: number): number;
  /** Decides, records decisions and costs, runs the unit; returns the routed work's output in input order. */
  run(d: Deciding): tf.Tensor;
}

/** Gate decision forms by name (`--decisions NAME`). */
export const decisionForms = new Registry<DecisionForm>('decision form');

decisionForms.register('nested', {
  description: 'nested groups (the first k of G): skipped channels are not computed (sliced convolutions, the batch split by k)',
  masked: false,
  outputs: (groups) => groups,
  run({ unit, input, sel, ctx, routing, logits, gateMacs, channelMacs }) {
    const G = unit.groups;
    const width = unit.groupWidth;
    const groupMacs = width * channelMacs;
    const costs = Array.from({ length: G + 1 }, (_, k) => gateMacs + k * groupMacs);
    const decision = decideRoutes(unit.name, logits, routing, costs);
    if (routing.mode === 'masked') {
      // The field's form, for timing only: every inner channel computed, then multiplied by the mask. Every
      // sample normalizes at BatchNorm row G (full width), so its scores are not the sliced model's.
      const { counts } = decision;
      const mask = tf.tensor4d(Float32Array.from({ length: counts.length * G * width }, (_, i) => (Math.floor((i % (G * width)) / width) < counts[Math.floor(i / (G * width))] ? 1 : 0)), [counts.length, 1, 1, G * width]);
      return unit.runAt(input, sel, ctx, innerContext(ctx, unit, G), mask);
    }
    return runRoutes(input, decision, ctx, (k, part, child, surrogate) => {
      const st = surrogate && k > 0 ? { q: surrogate, k, width } : undefined;
      return unit.runAt(part, sel, child, innerContext(child, unit, k), st);
    });
  },
});

decisionForms.register('channel', {
  description:
    'one decision per inner channel (its own sigmoid against the threshold, as the ACS paper): executed as a mask, every channel computed then multiplied; FLOPs count the channels on, time is the masked one',
  masked: true,
  outputs: (groups, width) => groups * width,
  run({ unit, input, sel, ctx, routing, logits, gateMacs, channelMacs }) {
    const [n, C] = logits.shape;
    const { on, surrogate } = binaryDecisions(unit.name, logits, routing);
    const counts = new Int32Array(n);
    on.forEach((v, i) => (counts[Math.floor(i / C)] += v));
    routing.decide(unit.name, counts, C);
    routing.spend(Array.from(counts, (k) => gateMacs + k * channelMacs));
    routing.expect(tf.add(gateMacs, tf.mul(tf.sum(tf.sigmoid(logits), 1), channelMacs)) as tf.Tensor1D);
    let factor: tf.Tensor = tf.tensor2d(on, [n, C]);
    // Straight through: the mask in value, the surrogate's gradient for every channel (each is computed).
    if (routing.mode === 'soft') factor = tf.add(factor, tf.sub(onesWithGradient(surrogate), 1));
    return unit.runAt(input, sel, ctx, innerContext(ctx, unit, unit.groups), tf.reshape(factor, [n, 1, 1, C]));
  },
});

/**
 * A gated unit's routed work on the current batch: its gate reads `x` (the unit's input), the decision form
 * decides per sample, records what each sample ran (gate included) and runs the unit on `input` (`x` unless
 * the unit computes something for every route first). Call only with routing in a mode other than `full`.
 */
export function routeUnit(unit: GatedUnit, x: tf.Tensor, sel: ChannelSel, ctx: RunContext, input: tf.Tensor = x): tf.Tensor {
  const routing = ctx.routing;
  if (!routing || routing.mode === 'full') throw new DynnError(`${unit.name}: routeUnit needs gates that decide`);
  const logits = unit.gate.call(x, sel, ctx).y as tf.Tensor2D;
  const gateMacs = gateMacsOf(unit.gate, sel);
  return decisionForms.get(unit.decisions).run({ unit, input, sel, ctx, routing, logits, gateMacs, channelMacs: unit.channelMacs(sel) });
}

/**
 * The gate of whatever decides at `owner` (a gated unit, a switch), named `<owner>.gate`: its mechanism's, with
 * `outputs` logits, built on `inShape`, its width the mechanism's default for the input's channels unless set.
 */
export function makeGate(owner: string, outputs: number, args: Pick<GatedArgs, 'mechanism' | 'gateWidth' | 'gateScale'>, inShape: number[], seed: number): Layer {
  const m = mechanisms.get(args.mechanism);
  const gate = m.gate(gateName(owner), { outputs, width: args.gateWidth ?? m.defaultWidth(inShape[inShape.length - 1]), logitScale: args.gateScale });
  gate.build(inShape, seed);
  return gate;
}

/** Builds a unit's gate from its mechanism, on the unit's input shape, with the decision form's outputs. */
export function buildGate(unit: Pick<GatedUnit, 'name' | 'groups' | 'groupWidth' | 'decisions'>, args: Pick<GatedArgs, 'mechanism' | 'gateWidth' | 'gateScale'>, inShape: number[], seed: number): Layer {
  return makeGate(unit.name, decisionForms.get(unit.decisions).outputs(unit.groups, unit.groupWidth), args, inShape, seed);
}

/**
 * A gated unit's costs at a plan: its own (`own`, the layers the gate decides on marked `routed`, the others
 * as they are) and its gate's, at full width. Per sample, `routeUnit` records what really ran.
 */
export function routedCost(unit: Pick<GatedUnit, 'name' | 'gate'>, sel: ChannelSel, own: LayerCost[], fixed: Set<string>): LayerCost[] {
  return [...own.map((c) => (fixed.has(c.name) ? c : { ...c, routed: unit.name })), ...gateCost(unit.gate, sel).map((c) => ({ ...c, routed: unit.name }))];
}

/** Checks a gated unit's inner channels split into its groups. */
export function checkGroups(name: string, inner: number, groups: number): void {
  if (!Number.isInteger(groups) || groups < 1 || inner % groups !== 0) throw new DynnError(`${name}: ${inner} inner channels do not split into ${groups} groups`);
}
