import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite, Conv2D, Dense, Flatten, MaxPool, ReLU, fullSel, layerClasses } from '../layers/index.js';
import type { ChannelSel, Layer, LayerCost, Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from './subnet.js';
import type { Network } from './network.js';
import type { ModelArgs, ModelDef } from './types.js';

export interface ExitHeadArgs {
  /** Number of classes. */
  units: number;
  /** Max-pool window (and stride) applied first; 1 skips pooling (default 2). */
  pool?: number;
  /** Filters of a 3x3 convolution (with bias and ReLU) after pooling; 0 for none (default 0). */
  conv?: number;
  /** Hidden units of a dense layer (with ReLU) before the classifier; 0 for a linear classifier (default 0). */
  hidden?: number;
}

/**
 * An intermediate classifier (an exit) hanging off the backbone. On the main path it is the identity and
 * costs nothing, so `Network.forward`, `cost` and `subnet` describe the last exit alone; the early-exit
 * code (`forwardExits`, `exitSegments`, scaling's runner) runs its classifier through `logits`, `headOps`
 * and `headCost`. The head's layers slice to whatever channels the backbone holds, so width throttling
 * still applies.
 */
export class ExitHead extends Composite<ExitHeadArgs> {
  readonly className = 'ExitHead';

  protected doBuild(inShape: Shape): Shape {
    const { units, pool = 2, conv = 0, hidden = 0 } = this.args;
    const n = this.name;
    if (!Number.isInteger(units) || units < 2) throw new DynnError(`${n}: an exit needs at least 2 classes`);
    const layers: Layer[] = [];
    if (inShape.length === 3) {
      if (!Number.isInteger(pool) || pool < 1 || pool > Math.min(inShape[0], inShape[1])) {
        throw new DynnError(`${n}: pool must be an integer in [1, ${Math.min(inShape[0], inShape[1])}], got ${pool}`);
      }
      if (pool > 1) layers.push(new MaxPool(`${n}.pool`, { poolSize: pool }));
      if (conv > 0) layers.push(new Conv2D(`${n}.conv`, { filters: conv, kernelSize: 3, useBias: true }), new ReLU(`${n}.conv.relu`, {}));
      layers.push(new Flatten(`${n}.flatten`, {}));
    }
    if (hidden > 0) layers.push(new Dense(`${n}.fc`, { units: hidden }), new ReLU(`${n}.fc.relu`, {}));
    layers.push(new Dense(`${n}.classifier`, { units }));
    this.layers = layers;
    this.buildChain(layers, inShape);
    return inShape;
  }

  outSel(sel: ChannelSel): ChannelSel {
    return sel;
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    return { y: x, sel };
  }

  freeze(): FrozenOp[] {
    return [];
  }

  cost(): LayerCost[] {
    return [];
  }

  /** The exit's class scores for backbone features `x` holding channels `sel`. Call inside `tf.tidy`. */
  logits(x: tf.Tensor, sel: ChannelSel, ctx: RunContext): tf.Tensor2D {
    return this.runChain(this.layers, x, sel, ctx).y as tf.Tensor2D;
  }

  /** The exit classifier's inference ops, sliced to `sel`. Call inside `tf.tidy`. */
  headOps(sel: ChannelSel, plan: Plan): FrozenOp[] {
    return this.chainFreeze(this.layers, sel, plan);
  }

  /** MACs and parameters of the exit classifier on channels `sel`. */
  headCost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return this.chainCost(this.layers, sel, plan);
  }
}

layerClasses.register('ExitHead', ExitHead);

/** A network cut at its exits: `segments[k]` runs before exit k; the last segment ends in the final classifier. */
export interface ExitSegments {
  segments: Layer[][];
  heads: ExitHead[];
}

/** The backbone segments and exit heads of a network, in order (no heads: one segment, the whole network). */
export function exitSegments(model: Network): ExitSegments {
  const segments: Layer[][] = [[]];
  const heads: ExitHead[] = [];
  for (const l of model.layers) {
    if (l instanceof ExitHead) {
      heads.push(l);
      segments.push([]);
    } else {
      segments[segments.length - 1].push(l);
    }
  }
  return { segments, heads };
}

/** Number of exits of a network, the final classifier included (1 for a network without early exits). */
export function exitCount(model: Network): number {
  return exitSegments(model).heads.length + 1;
}

/**
 * Class scores at every exit (the last one is the network's own output), in one pass without early
 * termination: joint training (weighted sum of the exits' losses) and threshold fitting use it. Call inside
 * `tf.tidy`.
 */
export function forwardExits(model: Network, x: tf.Tensor, plan: Plan, options: { training?: boolean } = {}): tf.Tensor2D[] {
  model.checkInput(x);
  const ctx: RunContext = { plan, training: options.training ?? false };
  const out: tf.Tensor2D[] = [];
  let sel = fullSel(model.inputShape[model.inputShape.length - 1]);
  let y = x;
  for (const l of model.layers) {
    if (l instanceof ExitHead) out.push(l.logits(y, sel, ctx));
    else ({ y, sel } = l.call(y, sel, ctx));
  }
  out.push(y as tf.Tensor2D);
  return out;
}

/** Cost of each exit at a plan. */
export interface ExitCost {
  /** FLOPs of the backbone segment before this exit. */
  segmentFlops: number;
  /** FLOPs of this exit's classifier (0 for the last exit: its classifier is part of the backbone). */
  headFlops: number;
  /** FLOPs a sample that leaves at this exit costs: every segment and every exit classifier up to here. */
  cumulativeFlops: number;
}

/** What leaving at each exit costs at a plan (classifiers of the exits a sample passed included). */
export function exitCosts(model: Network, plan: Plan): ExitCost[] {
  const { segments, heads } = exitSegments(model);
  const flops = (costs: LayerCost[]) => 2 * costs.reduce((a, c) => a + c.macs, 0);
  let sel = fullSel(model.inputShape[model.inputShape.length - 1]);
  let total = 0;
  return segments.map((seg, k) => {
    let segmentFlops = 0;
    for (const l of seg) {
      segmentFlops += flops(l.cost(sel, plan));
      sel = l.outSel(sel, plan);
    }
    const headFlops = k < heads.length ? flops(heads[k].headCost(sel, plan)) : 0;
    total += segmentFlops + headFlops;
    return { segmentFlops, headFlops, cumulativeFlops: total };
  });
}

/**
 * A model definition that inserts exit heads after the named layers of a base definition: the exits are
 * `args.exits` (layer names), each with max-pool window `args.exitPool[k]` and the shared `exitConv` and
 * `exitHidden` widths.
 */
export function withExits(base: ModelDef, description: string, defaults: ModelArgs): ModelDef {
  return {
    description,
    defaults: { ...base.defaults, ...defaults },
    channelMultiple: base.channelMultiple,
    layers(a) {
      const layers = base.layers(a);
      const after = a.exits as string[];
      const pools = (a.exitPool as number[] | undefined) ?? [];
      if (!Array.isArray(after) || after.length === 0) throw new DynnError('exits must name at least one layer to put an exit after');
      if (pools.length !== after.length) throw new DynnError(`exitPool needs one window per exit (${after.length}), got ${pools.length}`);
      const names = layers.map((l) => l.name);
      let last = -1;
      const heads = after.map((name, k) => {
        const at = names.indexOf(name);
        if (at < 0) throw new DynnError(`cannot put an exit after "${name}"; top-level layers are ${names.join(', ')}`);
        if (at <= last) throw new DynnError('exits must follow the network order, one per position');
        if (at === layers.length - 1) throw new DynnError(`"${name}" is the final classifier; it is the last exit already`);
        last = at;
        return { at, head: new ExitHead(`exit${k + 1}`, { units: a.numClasses, pool: pools[k], conv: a.exitConv as number, hidden: a.exitHidden as number }) };
      });
      for (const { at, head } of heads.reverse()) layers.splice(at + 1, 0, head);
      return layers;
    },
  };
}
