import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { actionSet, uKey } from './actions.js';
import { againstCurve, paretoFront, type CurveGap, type CurvePoint } from './curve.js';
import { oracleCurve, oracleFromTable, type OracleSummary } from './oracle.js';
import type { MixedRunner } from './runner.js';
import { fixedCurve, levelTable, type LevelTable } from './table.js';
import type { Controller, DecideContext } from './types.js';

/** Per-sample outcome of running a controller over a set. */
export interface ControlledRun {
  predictions: Int32Array;
  u: Float64Array;
  /** MACs per sample: the pass at its u plus the controller's overhead. */
  macs: Float64Array;
  /** Input resolution (height) per sample, when the controller chooses it. */
  resolution?: Float64Array;
}

/**
 * Runs a controller over a set the way it is deployed: per batch, `decide` picks u per sample, then the
 * batch runs grouped by operating point (`MixedRunner.predict`), unless deciding already produced scores.
 */
export function runController(controller: Controller, runner: MixedRunner, set: ImageSet, options: { batchSize?: number; context?: DecideContext } = {}): ControlledRun {
  const batch = options.batchSize ?? runner.model.batchFor(256);
  const per = set.height * set.width * set.channels;
  const buf = new Float32Array(Math.min(batch, set.count) * per);
  const predictions = new Int32Array(set.count);
  const u = new Float64Array(set.count);
  const macs = new Float64Array(set.count);
  for (let start = 0; start < set.count; start += batch) {
    const n = Math.min(batch, set.count - start);
    const x = tf.tensor(toFloat(set, start, n, buf), [n, set.height, set.width, set.channels]);
    try {
      const d = controller.decide(x, { ...options.context, labels: set.labels.subarray(start, start + n) });
      const scores = d.scores ?? runner.predict(x, d.u);
      const idx = tf.argMax(scores, 1);
      predictions.set(idx.dataSync() as Int32Array, start);
      tf.dispose([idx, scores]);
      u.set(d.u, start);
      for (let i = 0; i < n; i++) macs[start + i] = runner.macs(d.u[i]) + d.overheadMacs[i];
    } finally {
      x.dispose();
    }
  }
  return { predictions, u, macs };
}

/** What `dynn eval --controller ... --json` prints. FLOPs ratios are relative to the full network at u = 1. */
export interface ControllerReport {
  accuracy: number;
  meanU: number;
  /** Includes the controller's own cost. */
  meanFlopsRatio: number;
  uHistogram: Record<string, number>;
  /** Samples per input resolution, when the controller chooses it. */
  resolutionHistogram?: Record<string, number>;
  /** The fixed-u curve over the action set (every fixed (u, r) when the actions have resolutions). */
  fixed: { u: number; resolution?: number; accuracy: number; flopsRatio: number }[];
  /** The controller against the fixed-u curve at its own mean FLOPs ratio: `below` when a fixed u does better. */
  againstCurve: CurveGap;
  /** The oracle's ceiling, and its accuracy under a FLOPs budget (`oracleCurve`). */
  oracle: OracleSummary & { curve: CurvePoint[] };
}

/** Summarizes a controlled run against the fixed-u curve and the oracle of `table` (same samples). */
export function reportRun(run: ControlledRun, labels: ArrayLike<number>, fullMacs: number, table: LevelTable): ControllerReport {
  const n = run.predictions.length;
  let right = 0;
  let sumU = 0;
  let sumMacs = 0;
  const hist: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    if (run.predictions[i] === labels[i]) right++;
    sumU += run.u[i];
    sumMacs += run.macs[i];
    const k = uKey(run.u[i]);
    hist[k] = (hist[k] ?? 0) + 1;
  }
  const { accuracy, meanU, meanFlopsRatio } = oracleFromTable(table);
  const uHistogram = Object.fromEntries(Object.entries(hist).sort((a, b) => Number(a[0]) - Number(b[0])));
  const fixed = fixedCurve(table);
  const point = { accuracy: right / n, flopsRatio: sumMacs / n / fullMacs };
  const byRes: Record<string, number> = {};
  if (run.resolution) for (const r of run.resolution) byRes[r] = (byRes[r] ?? 0) + 1;
  // Fixed (u, r) points are not ordered by cost: compare with the best of them (their Pareto front).
  const curve = table.resolutions ? paretoFront(fixed) : fixed;
  return {
    accuracy: point.accuracy,
    meanU: sumU / n,
    meanFlopsRatio: point.flopsRatio,
    uHistogram,
    ...(run.resolution && { resolutionHistogram: byRes }),
    fixed,
    againstCurve: againstCurve(curve, point),
    oracle: { accuracy, meanU, meanFlopsRatio, curve: oracleCurve(table) },
  };
}

/**
 * Evaluates a controller on a set: its accuracy, mean u, mean FLOPs ratio (its own cost included) and u
 * histogram, next to the fixed-u curve and the oracle over `curve` (default u_k = k/10 and the controller's
 * actions). Pass `table` to reuse a level table of the same samples.
 */
export function evaluateController(
  controller: Controller,
  runner: MixedRunner,
  set: ImageSet,
  options: { batchSize?: number; context?: DecideContext; table?: LevelTable; curve?: number[] } = {},
): ControllerReport {
  const curve = [...new Set([...(options.curve ?? actionSet()), ...controller.actions, 1])];
  const table = options.table ?? levelTable(runner, set, curve);
  const run = runController(controller, runner, set, options);
  return reportRun(run, set.labels, runner.fullMacs, table);
}
