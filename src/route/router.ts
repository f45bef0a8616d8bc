import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite, Dense, GlobalAvgPool, fullSel, layerClasses, take } from '../layers/index.js';
import type { ChannelSel, LayerCost, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';

export interface RouterArgs {
  /** Logits: for E experts, 2E (the clean scores, then the noise scales' pre-softplus, Shazeer's Wg and Wnoise). */
  outputs: number;
}

/**
 * A mixture of experts' router: global average pooling of an image input (a flat input is used as it is) and
 * one dense layer giving every expert's score and noise scale (Shazeer et al. 2017, Eq. 4: x Wg and x Wnoise).
 * Its kernel starts small and random, so the first batches spread over the experts instead of all tying.
 */
export class MoeRouter extends Composite<RouterArgs> {
  readonly className = 'MoeRouter';

  protected doBuild(inShape: Shape): Shape {
    const { outputs } = this.args;
    if (!Number.isInteger(outputs) || outputs < 2 || outputs % 2 !== 0) throw new DynnError(`${this.name}: a router gives 2 logits per expert, got ${outputs}`);
    this.layers = [...(inShape.length === 3 ? [new GlobalAvgPool(`${this.name}.gap`, {})] : []), new Dense(`${this.name}.fc`, { units: outputs })];
    return this.buildChain(this.layers, inShape);
  }

  outSel(): ChannelSel {
    return fullSel(this.args.outputs);
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    return this.runChain(this.layers, x, sel, ctx);
  }

  /**
   * The experts' scores alone, [n, E]: the dense layer's first E columns (x Wg), without the noise scales,
   * which only training draws. What inference computes, here and in the exported graph (`export/moe.ts`).
   */
  scores(x: tf.Tensor, sel: ChannelSel, ctx: RunContext): tf.Tensor2D {
    const E = this.args.outputs / 2;
    const fc = this.layers[this.layers.length - 1];
    const { y: h, sel: hSel } = this.runChain(this.layers.slice(0, -1), x, sel, ctx);
    const w = (suffix: string) => fc.weights().find((v) => v.name === `${fc.name}.${suffix}`)?.variable;
    const kernel = w('kernel')!;
    const bias = w('bias');
    // The kernel's rows of the channels that reach it (all of them but behind a throttled layer), as the export slices them.
    const z = tf.matMul(h as tf.Tensor2D, tf.slice(take(kernel, 0, hSel), [0, 0], [hSel.count, E]) as tf.Tensor2D);
    return (bias ? tf.add(z, tf.slice(bias, 0, E)) : z) as tf.Tensor2D;
  }

  freeze(): FrozenOp[] {
    throw new DynnError(`${this.name}: a router has no frozen form; it runs inside its mixture of experts`);
  }

  /** At inference (what cost counts): the dense layer's score half only (`scores`). */
  cost(sel: ChannelSel, plan: RunContext['plan']): LayerCost[] {
    const costs = this.chainCost(this.layers, sel, plan);
    const last = costs.length - 1;
    costs[last] = { ...costs[last], macs: costs[last].macs / 2, params: costs[last].params / 2 };
    return costs;
  }
}

layerClasses.register('MoeRouter', MoeRouter);
