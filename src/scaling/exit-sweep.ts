import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { median } from '../eval/latency.js';
import { exitCount } from '../models/exits.js';
import type { Network, PlanOptions } from '../models/network.js';
import type { Subnet } from '../models/subnet.js';
import { exitRules } from './rules.js';
import { EarlyExitRunner } from './runner.js';
import { exitTable } from './budget.js';

/** One threshold setting of an early-exit sweep, measured with real early termination. */
export interface ExitSweepPoint {
  /** The threshold as given: one number for every exit, or one per intermediate exit. */
  threshold: number | number[];
  accuracy: number;
  /** Mean FLOPs per sample (each sample's cost up to its exit, exit classifiers included). */
  flops: number;
  /** Mean FLOPs relative to running every sample to the last exit without exit classifiers. */
  flopsRatio: number;
  /** Share of samples leaving at each exit. */
  exitShares: number[];
  /** Measured median time (ms) of one batch of 256 test samples (fewer if the set is smaller). */
  latencyMs: { batch256: number };
}

/** An early-exit sweep: the last exit alone as the reference, then each threshold. */
export interface ExitSweep {
  /** The exit rule's name. */
  rule: string;
  /** The backbone's utilization. */
  u: number;
  /** Accuracy of every exit on its own (every sample run to it). */
  exitAccuracy: number[];
  /** The last exit alone: the plain frozen network. */
  baseline: { accuracy: number; flops: number; latencyMs: { batch256: number } };
  points: ExitSweepPoint[];
}

/** Options of `sweepExits`. */
export interface ExitSweepOptions {
  /** Exit rule name (default 'entropy'). */
  rule?: string;
  /** Utilization of the backbone (default 1). */
  u?: number;
  /** Gating of the backbone's plan (default 'nested'). */
  gating?: PlanOptions['gating'];
  /** Timed passes over the timing batches (default 5); the median batch time is reported. */
  reps?: number;
  /** Batches of 256 test samples timed (default 4). */
  timingBatches?: number;
  /** Skip latency measurement (NaN in the result). */
  noLatency?: boolean;
  /** Called after each threshold is measured. */
  onPoint?: (p: ExitSweepPoint) => void;
}

/** The median time (ms) of `fn` over the batches, `reps` passes after one untimed pass. */
function timeBatches(batches: tf.Tensor[], reps: number, fn: (x: tf.Tensor) => void): number {
  const times: number[] = [];
  for (let r = 0; r <= reps; r++) {
    for (const x of batches) {
      const t0 = performance.now();
      fn(x);
      if (r > 0) times.push(performance.now() - t0);
    }
  }
  return median(times);
}

/**
 * Accuracy, mean FLOPs, exit shares and measured batch time of an early-exit network at each threshold
 * (real early termination), against the last exit alone.
 */
export function sweepExits(model: Network, test: ImageSet, thresholds: (number | number[])[], options: ExitSweepOptions = {}): ExitSweep {
  if (exitCount(model) < 2) throw new DynnError(`model ${model.config.model} has no early exits; thresholds need an exit model (vgg-exits, resnet-exits)`);
  if (test.count === 0) throw new DynnError('the test set is empty');
  const rule = options.rule ?? 'entropy';
  exitRules.get(rule);
  const u = options.u ?? 1;
  const plan = model.plan(u, { gating: options.gating });
  const runner = EarlyExitRunner.freeze(model, plan);
  let subnet: Subnet | null = null;
  const batch = Math.min(256, test.count);
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const timing: tf.Tensor[] = [];
  try {
    const table = exitTable(runner, test, rule);
    const exitAccuracy = table.correct.map((c) => c.reduce((a, b) => a + b, 0) / test.count);
    const reps = options.reps ?? 5;
    const nb = Math.max(1, Math.min(options.timingBatches ?? 4, Math.floor(test.count / batch)));
    if (!options.noLatency) for (let b = 0; b < nb; b++) timing.push(tf.tensor(toFloat(test, b * batch, batch), [batch, ...model.inputShape]));
    subnet = model.subnet(plan);
    const sub = subnet;
    const baseline = {
      accuracy: exitAccuracy[exitAccuracy.length - 1],
      flops: runner.baselineFlops,
      latencyMs: {
        batch256: options.noLatency ? NaN : timeBatches(timing, reps, (x) => {
          const y = sub.predict(x);
          y.dataSync();
          y.dispose();
        }),
      },
    };
    const buf = new Float32Array(batch * per);
    const points = thresholds.map((threshold) => {
      const exits = new Int32Array(test.count);
      let right = 0;
      for (let start = 0; start < test.count; start += batch) {
        const n = Math.min(batch, test.count - start);
        const x = tf.tensor(toFloat(test, start, n, buf), [n, ...model.inputShape]);
        const r = runner.run(x, rule, threshold);
        x.dispose();
        exits.set(r.exits, start);
        for (let i = 0; i < n; i++) if (r.predictions[i] === test.labels[start + i]) right++;
      }
      const counts = new Array<number>(runner.exitCount).fill(0);
      for (const k of exits) counts[k]++;
      const shares = counts.map((c) => c / test.count);
      const flops = runner.meanFlops(exits);
      const point: ExitSweepPoint = {
        threshold,
        accuracy: right / test.count,
        flops,
        flopsRatio: flops / runner.baselineFlops,
        exitShares: shares,
        latencyMs: { batch256: options.noLatency ? NaN : timeBatches(timing, reps, (x) => runner.run(x, rule, threshold)) },
      };
      options.onPoint?.(point);
      return point;
    });
    return { rule, u, exitAccuracy, baseline, points };
  } finally {
    tf.dispose(timing);
    subnet?.dispose();
    runner.dispose();
  }
}
