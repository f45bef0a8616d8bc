import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { exitRules, exitScores, leaves, perExitThresholds, type ExitRule } from './rules.js';
import { argmaxRows, type EarlyExitRunner } from './runner.js';

/** Every exit's verdict on every sample of a data set: what threshold fitting and simulation read. */
export interface ExitTable {
  /** Per exit, the rule's score of each sample. */
  scores: Float64Array[];
  /** Per exit, 1 where that exit's prediction is right. */
  correct: Uint8Array[];
  /** FLOPs of leaving at each exit (segments and exit classifiers passed, see `exitCosts`). */
  costs: number[];
  /** FLOPs of the last exit alone. */
  baselineFlops: number;
}

/** Runs every exit on every sample of `data` (no termination) and scores them under `rule`. */
export function exitTable(runner: EarlyExitRunner, data: ImageSet, rule: string | ExitRule, batchSize = 256): ExitTable {
  const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
  const K = runner.exitCount;
  const C = runner.classes;
  const scores = Array.from({ length: K }, () => new Float64Array(data.count));
  const correct = Array.from({ length: K }, () => new Uint8Array(data.count));
  const per = runner.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batchSize * per);
  for (let start = 0; start < data.count; start += batchSize) {
    const n = Math.min(batchSize, data.count - start);
    const x = tf.tensor(toFloat(data, start, n, buf), [n, ...runner.inputShape]);
    const logits = runner.allExits(x);
    x.dispose();
    logits.forEach((l, k) => {
      scores[k].set(exitScores(r, l, C), start);
      const pred = argmaxRows(l, C);
      for (let i = 0; i < n; i++) correct[k][start + i] = pred[i] === data.labels[start + i] ? 1 : 0;
    });
  }
  return { scores, correct, costs: runner.costs.map((c) => c.cumulativeFlops), baselineFlops: runner.baselineFlops };
}

/** Accuracy and cost of an exit policy on a table. */
export interface ExitOutcome {
  /** Per intermediate exit. */
  thresholds: number[];
  accuracy: number;
  /** Mean FLOPs per sample. */
  meanFlops: number;
  /** Mean FLOPs relative to the last exit alone. */
  flopsRatio: number;
  /** Share of samples leaving at each exit. */
  exitShares: number[];
}

/** Exactly what `EarlyExitRunner.run` decides, replayed on a table: a sample leaves at the first exit whose score passes. */
export function simulateExits(table: ExitTable, rule: string | ExitRule, thresholds: number | number[]): ExitOutcome {
  const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
  const K = table.scores.length;
  const t = perExitThresholds(thresholds, K - 1);
  const n = table.scores[0].length;
  const counts = new Float64Array(K);
  let right = 0;
  let flops = 0;
  for (let i = 0; i < n; i++) {
    let k = 0;
    while (k < K - 1 && !leaves(r, table.scores[k][i], t[k])) k++;
    counts[k]++;
    right += table.correct[k][i];
    flops += table.costs[k];
  }
  const meanFlops = n ? flops / n : 0;
  return {
    thresholds: t,
    accuracy: n ? right / n : NaN,
    meanFlops,
    flopsRatio: meanFlops / table.baselineFlops,
    exitShares: Array.from(counts, (c) => (n ? c / n : 0)),
  };
}

/** A threshold between sorted scores (best first) so that the first `m` of them leave. */
function splitThreshold(rule: ExitRule, sorted: number[], m: number): number {
  const len = sorted.length;
  const below = rule.exitsWhen === 'below';
  if (len === 0) return 0;
  if (m <= 0) return below ? sorted[0] : sorted[0] + 1;
  if (m >= len) return below ? sorted[len - 1] + 1 : sorted[len - 1];
  // Midway between the last to leave and the first to stay; equal neighbours leave or stay together.
  return (sorted[m - 1] + sorted[m]) / 2;
}

/**
 * MSDNet's budgeted policy: with exit probability q, a share proportional to q(1-q)^k of the samples leaves at
 * exit k (normalized over all exits); each threshold is the score quantile of the samples still running that
 * makes that share leave.
 */
function geometricPolicy(table: ExitTable, rule: ExitRule, q: number): number[] {
  const K = table.scores.length;
  const n = table.scores[0].length;
  const w = Array.from({ length: K }, (_, k) => q * (1 - q) ** k);
  const z = w.reduce((a, b) => a + b, 0);
  let alive = Array.from({ length: n }, (_, i) => i);
  const thresholds: number[] = [];
  for (let k = 0; k < K - 1; k++) {
    const order = alive.map((i) => table.scores[k][i]).sort((a, b) => (rule.exitsWhen === 'below' ? a - b : b - a));
    const m = Math.round((n * w[k]) / z);
    const t = alive.length ? splitThreshold(rule, order, Math.min(m, alive.length)) : (thresholds[k - 1] ?? 0);
    thresholds.push(t);
    alive = alive.filter((i) => !leaves(rule, table.scores[k][i], t));
  }
  return thresholds;
}

/** Thresholds fitted to a budget, with what they give on the data they were fitted on. */
export interface FittedPolicy extends ExitOutcome {
  /** The budget: mean FLOPs relative to the last exit alone. */
  budget: number;
  /** Which family of policies won: one threshold shared by all exits, or MSDNet's geometric shares. */
  family: 'shared' | 'geometric';
}

/**
 * Fits per-exit thresholds on held-out data so that the mean cost meets `budget` (mean FLOPs relative to the
 * last exit alone), as MSDNet's budgeted batch classification does: the most accurate on `table` of the
 * shared thresholds within budget and the geometric policy that spends the budget.
 */
export function fitThresholds(table: ExitTable, rule: string | ExitRule, budget: number): FittedPolicy {
  const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
  if (!(budget > 0) || !Number.isFinite(budget)) throw new DynnError(`budget must be a positive FLOPs ratio, got ${budget}`);
  const K = table.scores.length;
  if (K < 2) throw new DynnError('the model has no early exits to fit thresholds for');
  if (table.scores[0].length === 0) throw new DynnError('cannot fit thresholds on an empty data set');
  const cheapest = table.costs[0] / table.baselineFlops;
  if (budget < cheapest) {
    throw new DynnError(`budget ${budget} is below the cost of leaving every sample at the first exit (${cheapest.toFixed(4)})`);
  }
  const candidates: FittedPolicy[] = [];

  // Shared threshold: the cost falls monotonically as the threshold lets more samples leave, the accuracy
  // need not rise monotonically: take the strictest threshold within budget, and the most accurate of up
  // to 512 quantiles of the scores that are within budget.
  const values = [...new Set(table.scores.slice(0, K - 1).flatMap((s) => Array.from(s)))].sort((a, b) => a - b);
  const laxToStrict = r.exitsWhen === 'below' ? [values[values.length - 1] + 1, ...[...values].reverse()] : [values[0], ...values, values[values.length - 1] + 1];
  let lo = 0;
  let hi = laxToStrict.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (simulateExits(table, r, laxToStrict[mid]).flopsRatio <= budget) lo = mid;
    else hi = mid - 1;
  }
  const grid = Math.min(512, lo + 1);
  for (let i = 0; i < grid; i++) {
    const shared = simulateExits(table, r, laxToStrict[grid === 1 ? lo : Math.round((i * lo) / (grid - 1))]);
    if (shared.flopsRatio <= budget) candidates.push({ ...shared, budget, family: 'shared' });
  }

  // Geometric shares: a larger q sends more samples out early, so the cost falls as q rises.
  let qlo = 1e-6;
  let qhi = 1;
  for (let i = 0; i < 40; i++) {
    const q = (qlo + qhi) / 2;
    if (simulateExits(table, r, geometricPolicy(table, r, q)).flopsRatio <= budget) qhi = q;
    else qlo = q;
  }
  const geometric = simulateExits(table, r, geometricPolicy(table, r, qhi));
  if (geometric.flopsRatio <= budget) candidates.push({ ...geometric, budget, family: 'geometric' });

  if (candidates.length === 0) throw new DynnError(`no thresholds meet the budget ${budget}`);
  candidates.sort((a, b) => b.accuracy - a.accuracy || a.flopsRatio - b.flopsRatio);
  return candidates[0];
}

/** An early-exit policy as an operating point of `dynn select` (the shape of control's `Candidate`). */
export interface ExitCandidate {
  name: string;
  kind: 'early-exit';
  params: { rule: string; thresholds: number[] };
  accuracy: number;
  /** Mean FLOPs relative to the last exit alone (the full network at u = 1 when the table was made at u = 1). */
  flopsRatio: number;
}

/**
 * Early-exit operating points for choosing among (e.g. by `dynn select`): each threshold setting replayed on
 * a table of the validation split; by default, one shared threshold at each of `grid` quantiles of the
 * first exit's scores.
 */
export function exitCandidates(table: ExitTable, rule: string | ExitRule, thresholds?: (number | number[])[], grid = 32): ExitCandidate[] {
  const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
  const name = typeof rule === 'string' ? rule : 'custom';
  const sorted = [...table.scores[0]].sort((a, b) => a - b);
  const settings = thresholds ?? Array.from({ length: grid }, (_, i) => sorted[Math.min(sorted.length - 1, Math.floor(((i + 0.5) * sorted.length) / grid))]);
  return settings.map((t) => {
    const o = simulateExits(table, r, t);
    const text = o.thresholds.map((v) => v.toPrecision(3)).join(':');
    return { name: `exits ${name} t=${text}`, kind: 'early-exit', params: { rule: name, thresholds: o.thresholds }, accuracy: o.accuracy, flopsRatio: o.flopsRatio };
  });
}
