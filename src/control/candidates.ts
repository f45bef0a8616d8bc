import { uKey } from './actions.js';
import { greedyActions } from './bandit.js';
import { cascadeFromTable } from './cascade.js';
import type { Candidate } from './select.js';
import type { LevelTable } from './table.js';

/** Default confidence thresholds of the cascade candidates. */
export const CASCADE_THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/** What the candidates are built from besides the level table. */
export interface CandidateOptions {
  /** Cascade thresholds tried (default `CASCADE_THRESHOLDS`). */
  thresholds?: number[];
  /** A bandit policy's action probabilities on the same samples, row-major [count x actions]. */
  policyProbs?: Float32Array;
  /** MACs of one policy decision. */
  policyMacs?: number;
  /** Latency per sample (ms) of one pass at action k; enables `ms` costs. */
  msOf?: (k: number) => number;
  /** Latency per sample (ms) of one policy decision. */
  policyMs?: number;
}

/**
 * The candidate operating points of a level table: every distinct fixed level; two- and three-stage
 * confidence cascades ending at the top level, at each threshold; and, with a policy, the bandit with its
 * argmax restricted to actions >= a floor or <= a ceiling.
 */
export function candidatesFromTable(table: LevelTable, options: CandidateOptions = {}): Candidate[] {
  const n = table.count;
  const K = table.us.length;
  // Actions sharing one operating point share arrays: keep the first of each.
  const levels = table.us.map((_, k) => k).filter((k) => table.predictions.indexOf(table.predictions[k]) === k);
  const ms = options.msOf;
  const out: Candidate[] = [];
  const summarize = (name: string, kind: string, params: Record<string, unknown>, action: ArrayLike<number>, macs: (i: number) => number, msOfSample?: (i: number) => number): Candidate => {
    let right = 0;
    let m = 0;
    let t = 0;
    for (let i = 0; i < n; i++) {
      right += table.correct[action[i]][i];
      m += macs(i);
      if (msOfSample) t += msOfSample(i);
    }
    return { name, kind, params, accuracy: right / n, flopsRatio: m / n / table.fullMacs, ...(msOfSample ? { ms: t / n } : {}) };
  };

  for (const k of levels) {
    const u = table.us[k];
    out.push(summarize(`fixed u=${uKey(u)}`, 'fixed', { u }, new Int32Array(n).fill(k), () => table.macs[k], ms && (() => ms(k))));
  }

  const top = levels[levels.length - 1];
  const stageSets: number[][] = [];
  for (const a of levels) {
    if (a === top) continue;
    stageSets.push([a, top]);
    for (const b of levels) if (b > a && b !== top) stageSets.push([a, b, top]);
  }
  for (const stages of stageSets) {
    for (const t of options.thresholds ?? CASCADE_THRESHOLDS) {
      const r = cascadeFromTable(table, stages, t);
      const us = stages.map((k) => table.us[k]);
      const msOfSample = ms && ((i: number) => {
        let s = 0;
        for (const k of stages) {
          s += ms(k);
          if (k === r.action[i]) break;
        }
        return s;
      });
      out.push(summarize(`cascade ${us.map(uKey).join('>')} t=${t}`, 'cascade', { stages: us, threshold: t }, r.action, (i) => r.macs[i], msOfSample));
    }
  }

  if (options.policyProbs) {
    const probs = options.policyProbs;
    const own = options.policyMacs ?? 0;
    const restrictions: [string, Uint8Array][] = [];
    for (let f = 0; f < K; f++) restrictions.push([`u>=${uKey(table.us[f])}`, Uint8Array.from(table.us, (_, k) => (k >= f ? 1 : 0))]);
    for (let c = 0; c < K - 1; c++) restrictions.push([`u<=${uKey(table.us[c])}`, Uint8Array.from(table.us, (_, k) => (k <= c ? 1 : 0))]);
    for (const [label, allowed] of restrictions) {
      const action = greedyActions(probs, K, allowed);
      const allowedUs = table.us.filter((_, k) => allowed[k]);
      const msOfSample = ms && ((i: number) => ms(action[i]) + (options.policyMs ?? 0));
      out.push(summarize(`bandit ${label}`, 'bandit', { allowed: allowedUs }, action, (i) => table.macs[action[i]] + own, msOfSample));
    }
  }
  return out;
}
