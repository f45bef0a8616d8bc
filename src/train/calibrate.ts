import * as tf from '@tensorflow/tfjs-core';
import { BatchNorm } from '../layers/norm.js';
import type { Layer } from '../layers/layer.js';
import type { ChannelSel, MomentSink, Plan } from '../layers/types.js';
import { allLayers, type Network } from '../models/network.js';
import type { GatingMode } from '../gating/gating.js';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { Rng } from '../util/rng.js';
import { RoutingState } from '../route/context.js';
import { gateName } from '../route/mechanisms.js';
import { LogitGate, SpatialGate } from '../route/gates.js';
import { DynnError } from '../util/errors.js';

/** Every BatchNorm layer of a network, by name. */
export function batchNorms(model: Network): Map<string, BatchNorm> {
  return new Map(allLayers(model.layers).filter((l): l is BatchNorm => l instanceof BatchNorm).map((l) => [l.name, l]));
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

/** Options of `fitGateRates`. */
export interface FitRateOptions {
  /** The share of samples each gate should run its first group for (a rate target, in (0, 1]). */
  target: number;
  /** Training samples the rates are measured on (default 2048). */
  samples?: number;
  batchSize?: number;
  /** The gates' inference threshold (default 0.5). */
  threshold?: number;
  /**
   * Most fits (default 8): a gate's inputs move when the gates before it are refitted, so the fit repeats
   * until every gate is within `tolerance` of the target (default 0.01) on the samples.
   */
  rounds?: number;
  tolerance?: number;
  /**
   * Called after each refit, before the rates are measured again: the per-route BatchNorm statistics follow
   * the routes (`calibrateBatchNorm` with the threshold), and they move the gates' inputs in turn.
   */
  recalibrate?: () => void;
  /**
   * Fit the rate of sampled decisions instead (the mean probability sigmoid(z) over the samples; one pass):
   * where step 2 starts, so that training's gates execute the target share from the first step.
   */
  sampled?: boolean;
}

/**
 * Fits every gate of a dynamic network to a rate target with deterministic decisions: on `samples`
 * training images at `threshold`, each gate's output bias is shifted so that the share `target` of the
 * samples (those with the highest logits) runs its first group, until all are within tolerance; for a gate of one group (a block skipped
 * whole) that is its execution rate. Training's decisions are sampled, and a gate whose probabilities sit
 * near the threshold executes a different share deterministically (0.72 against 0.63 in the public
 * ConvNet-AIG code): the fit makes the target hold at inference. Returns each gate's rate after the fit.
 */
export function fitGateRates(model: Network, data: ImageSet, options: FitRateOptions): Record<string, number> {
  const threshold = options.threshold ?? 0.5;
  const samples = Math.min(options.samples ?? 2048, data.count);
  const batch = options.batchSize ?? model.batchFor(256);
  const cut = Math.log(threshold) - Math.log1p(-threshold);
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  const plan = model.plan(1);
  const gates = layersByName(model);
  const pass = () => {
    const logits = new Map<string, Float32Array>();
    for (let start = 0; start < samples; start += batch) {
      const n = Math.min(batch, samples - start);
      const x = toFloat(data, start, n, buf);
      const routing = RoutingState.start('hard', n, { threshold });
      tf.tidy(() => {
        model.forward(tf.tensor(x, [n, ...model.inputShape]), plan, { routing });
      });
      // A gate observed whole (a spatial mask) gives z.length / n decisions per sample, each fitted alike.
      for (const [gate, z] of routing.gateLogits) {
        if (!logits.has(gate)) logits.set(gate, new Float32Array((samples * z.length) / n));
        logits.get(gate)!.set(z, (start * z.length) / n);
      }
    }
    return logits;
  };
  const rateOf = (z: Float32Array) => {
    const reached = z.filter((v) => !Number.isNaN(v));
    return reached.reduce((a, v) => a + (v > cut ? 1 : 0), 0) / Math.max(1, reached.length);
  };
  const tolerance = Math.max(options.tolerance ?? 0.01, 0.5 / samples);
  let logits = pass();
  const shift = (unit: string, delta: number) => {
    const gate = gates.get(gateName(unit));
    if (!(gate instanceof LogitGate || gate instanceof SpatialGate)) throw new DynnError(`${unit}: no gate output bias to fit`);
    gate.shiftLogits(delta);
  };
  if (options.sampled) {
    const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
    const rates: Record<string, number> = {};
    for (const [unit, z] of logits) {
      const reached = z.filter((v) => !Number.isNaN(v));
      const mean = (d: number) => reached.reduce((a, v) => a + sigmoid(v + d), 0) / Math.max(1, reached.length);
      // The mean probability rises with the shift: bisection.
      let [lo, hi] = [-50, 50];
      for (let i = 0; i < 60; i++) {
        const mid = (lo + hi) / 2;
        if (mean(mid) < options.target) lo = mid;
        else hi = mid;
      }
      shift(unit, (lo + hi) / 2);
      rates[unit] = mean((lo + hi) / 2);
    }
    return rates;
  }
  for (let round = 0; round < (options.rounds ?? 8); round++) {
    if ([...logits.values()].every((z) => Math.abs(rateOf(z) - options.target) <= tolerance)) break;
    for (const [unit, z] of logits) {
      const sorted = Float64Array.from(z.filter((v) => !Number.isNaN(v))).sort().reverse();
      const m = Math.round(options.target * sorted.length);
      // Between the m-th and the (m+1)-th highest logit: exactly m samples pass.
      const at = m === 0 ? sorted[0] + 1 : m === sorted.length ? sorted[m - 1] - 1 : (sorted[m - 1] + sorted[m]) / 2;
      shift(unit, cut - at);
    }
    options.recalibrate?.();
    logits = pass();
  }
  return Object.fromEntries([...logits].map(([unit, z]) => [unit, rateOf(z)]));
}

/** Every layer of a network by name, nested ones included. */
function layersByName(model: Network): Map<string, Layer> {
  return new Map(allLayers(model.layers).map((l) => [l.name, l]));
}
