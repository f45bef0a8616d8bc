import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import { checkUtilization, type GatingMode } from '../gating/gating.js';
import { evaluate } from './evaluate.js';
import { measureLatencies } from './latency.js';

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
  // Latencies first, the operating points taking turns, so that their ratios do not carry the machine's drift.
  const batch1 = options.noLatency ? us.map(() => NaN) : measureLatencies(model, us, 1, { reps: options.reps ?? 20 });
  const batch128 = options.noLatency ? us.map(() => NaN) : measureLatencies(model, us, 128, { reps: options.reps ?? 10 });
  return us.map((u, k) => {
    const r = evaluate(model, test, u, { gating: options.gating, seed: options.seed });
    const c = model.cost(u);
    const latencyMs = { batch1: batch1[k], batch128: batch128[k] };
    const point = { u, accuracy: r.accuracy, perClassAccuracy: r.perClassAccuracy, flops: c.flops, flopsRatio: c.flops / full, params: c.params, latencyMs };
    options.onPoint?.(point);
    return point;
  });
}
