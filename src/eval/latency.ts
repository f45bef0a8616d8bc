import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';

export interface LatencyOptions {
  /** Timed runs (default 20); the median is reported. */
  reps?: number;
  /** Untimed runs first (default 3). */
  warmup?: number;
}

/** The median of a list of numbers. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Measured inference latency (ms, median) of one batch at utilization u, on the frozen subnet of that
 * operating point (how dynn serves it), reading the result back so the whole computation is timed.
 */
export function measureLatency(model: Network, u: number, batch: number, options: LatencyOptions = {}): number {
  return measureLatencies(model, [u], batch, options)[0];
}

/**
 * Measured latencies (ms, medians) of one batch at each utilization in `us`, the operating points taking
 * turns run by run: on a machine whose speed drifts (shared, or throttling) the ratios between operating
 * points stay meaningful, where measuring one point after another would fold the drift into them.
 */
export function measureLatencies(model: Network, us: number[], batch: number, options: LatencyOptions = {}): number[] {
  const subs = us.map((u) => model.subnet(u));
  const x = tf.randomUniform([batch, ...model.inputShape], 0, 1, 'float32', 7);
  try {
    return timeInTurns(subs.map((sub) => () => sub.predict(x)), options);
  } finally {
    x.dispose();
    subs.forEach((sub) => sub.dispose());
  }
}

/**
 * Median ms of each computation (each returns a tensor, read back so the whole computation is timed, then
 * freed), the computations taking turns run by run so the machine's drift does not enter their ratios.
 */
export function timeInTurns(runs: (() => tf.Tensor)[], options: LatencyOptions = {}): number[] {
  const reps = options.reps ?? 20;
  const warmup = options.warmup ?? 3;
  const times = runs.map((): number[] => []);
  for (let i = 0; i < warmup + reps; i++) {
    runs.forEach((run, k) => {
      const t0 = performance.now();
      const y = run();
      y.dataSync();
      y.dispose();
      if (i >= warmup) times[k].push(performance.now() - t0);
    });
  }
  return times.map(median);
}
