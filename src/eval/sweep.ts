import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import { checkUtilization, type GatingMode } from '../gating/gating.js';
import { evaluate } from './evaluate.js';
import { measureLatency } from './latency.js';

/** One operating point of a sweep. */
export interface SweepPoint {
  u: number;
  accuracy: number;
  perClassAccuracy: number[];
  flops: number;
  /** FLOPs relative to u = 1. */
  flopsRatio: number;
  params: number;
  /** Measured median latency (ms) at batch 1 and batch 128. */
  latencyMs: { batch1: number; batch128: number };
}

export interface SweepOptions {
  gating?: GatingMode;
  seed?: number;
  /** Timed repetitions per latency (default 20 at batch 1, 10 at batch 128). */
  reps?: number;
  /** Skip latency measurement (NaN in the result). */
  noLatency?: boolean;
  onPoint?: (p: SweepPoint) => void;
}

/** Accuracy, cost and measured latency of a network at each utilization in `us`. */
export function sweep(model: Network, test: ImageSet, us: number[], options: SweepOptions = {}): SweepPoint[] {
  us.forEach(checkUtilization);
  const full = model.cost(1).flops;
  return us.map((u) => {
    const r = evaluate(model, test, u, { gating: options.gating, seed: options.seed });
    const c = model.cost(u);
    const latencyMs = options.noLatency
      ? { batch1: NaN, batch128: NaN }
      : {
          batch1: measureLatency(model, u, 1, { reps: options.reps ?? 20 }),
          batch128: measureLatency(model, u, 128, { reps: options.reps ?? 10 }),
        };
    const point = { u, accuracy: r.accuracy, perClassAccuracy: r.perClassAccuracy, flops: c.flops, flopsRatio: c.flops / full, params: c.params, latencyMs };
    options.onPoint?.(point);
    return point;
  });
}
