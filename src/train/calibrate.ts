import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm } from '../layers/norm.js';
import type { Layer } from '../layers/layer.js';
import type { ChannelSel, MomentSink, Plan } from '../layers/types.js';
import type { Network } from '../models/network.js';
import type { GatingMode } from '../gating/gating.js';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { Rng } from '../util/rng.js';
import { RoutingState } from '../route/context.js';

/** Every BatchNorm layer of a network, by name. */
export function batchNorms(model: Network): Map<string, BatchNorm> {
  const found = new Map<string, BatchNorm>();
  const walk = (layers: Layer[]) => {
    for (const l of layers) {
      if (l instanceof BatchNorm) found.set(l.name, l);
      walk(l.children());
    }
  };
  walk(model.layers);
  return found;
}

/** Accumulates exact population moments per (layer, level, channel) from batch moments. */
class MomentAccumulator implements MomentSink {
  private readonly sums = new Map<string, { n: Float64Array; s1: Float64Array; s2: Float64Array }>();

  add(layer: string, level: number, sel: ChannelSel, count: number, mean: Float32Array, variance: Float32Array): void {
    const key = `${layer}\u0000${level}`;
    let acc = this.sums.get(key);
    if (!acc) {
      acc = { n: new Float64Array(sel.full), s1: new Float64Array(sel.full), s2: new Float64Array(sel.full) };
      this.sums.set(key, acc);
    }
    for (let i = 0; i < sel.count; i++) {
      const c = sel.index ? sel.index[i] : i;
      acc.n[c] += count;
      acc.s1[c] += count * mean[i];
      acc.s2[c] += count * (variance[i] + mean[i] * mean[i]);
    }
  }

  /** Writes the accumulated statistics into the layers; returns how many (layer, level) rows changed. */
  commit(layers: Map<string, BatchNorm>): number {
    let rows = 0;
    for (const [key, acc] of this.sums) {
      const [name, level] = key.split('\u0000');
      const c = acc.n.length;
      const mean = new Float32Array(c);
      const variance = new Float32Array(c);
      const observed = new Uint8Array(c);
      for (let i = 0; i < c; i++) {
        if (acc.n[i] === 0) continue;
        observed[i] = 1;
        mean[i] = acc.s1[i] / acc.n[i];
        variance[i] = Math.max(0, acc.s2[i] / acc.n[i] - mean[i] * mean[i]);
      }
      layers.get(name)!.writeStats(Number(level), mean, variance, observed);
      rows++;
    }
    return rows;
  }
}

/** Options of BatchNorm calibration. */
export interface CalibrateOptions {
  /** Utilizations whose levels are recomputed (default: every level of the network). */
  us?: number[];
  /** Plans recomputed instead of `us`, each into the row of its `level` (e.g. learned gate patterns). */
  plans?: Plan[];
  /** Training samples used per level (default 2048). */
  samples?: number;
  batchSize?: number;
  gating?: GatingMode;
  seed?: number;
  /**
   * A dynamic network's gates decide at this inference threshold while the statistics are gathered: each
   * gated block's rows are then those of the samples that really take each route (statistics per route).
   */
  threshold?: number;
}

/**
 * Recomputes BatchNorm statistics per operating level from training data (US-Nets calibration): for each
 * requested level, the network runs on `samples` training images at that level and every BatchNorm's
 * population mean and variance are set from the exact moments over those images. Rows of other levels
 * are left untouched.
 */
export function calibrateBatchNorm(model: Network, data: ImageSet, options: CalibrateOptions = {}): number {
  const layers = batchNorms(model);
  if (layers.size === 0) return 0;
  const us = options.us ?? model.levelUtilizations();
  const samples = Math.min(options.samples ?? 2048, data.count);
  const batch = options.batchSize ?? model.batchFor(256);
  const rng = new Rng(options.seed ?? 0);
  const acc = new MomentAccumulator();
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  for (const at of options.plans ?? us) {
    for (let start = 0; start < samples; start += batch) {
      const n = Math.min(batch, samples - start);
      const plan = typeof at === 'number' ? model.plan(at, { gating: options.gating, rng }) : at;
      const x = toFloat(data, start, n, buf);
      const routing = options.threshold === undefined ? undefined : RoutingState.start('hard', n, { threshold: options.threshold });
      tf.tidy(() => {
        model.forward(tf.tensor(x, [n, ...model.inputShape]), plan, { moments: acc, routing });
      });
    }
  }
  return acc.commit(layers);
}
