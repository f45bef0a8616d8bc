import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';

/**
 * When a sample leaves at an exit: a score of the exit's softmax and the side of the threshold that exits.
 * Scores are computed from logits in float64, row by row.
 */
export interface ExitRule {
  /** One line for help texts. */
  description: string;
  /** The score of one row of softmax probabilities. */
  score(probs: Float64Array): number;
  /** 'below': a score under the threshold exits; 'above': a score at or over it exits. */
  exitsWhen: 'below' | 'above';
}

/** Exit rules by name: `entropy` (BranchyNet) and `confidence` (top probability). */
export const exitRules = new Registry<ExitRule>('exit rule');

exitRules.register('entropy', {
  description: 'leave when the entropy of the softmax (nats) is below the threshold (BranchyNet)',
  score(p) {
    let h = 0;
    for (let i = 0; i < p.length; i++) if (p[i] > 0) h -= p[i] * Math.log(p[i]);
    return h;
  },
  exitsWhen: 'below',
});

exitRules.register('confidence', {
  description: 'leave when the top softmax probability is at or above the threshold',
  score(p) {
    let m = 0;
    for (let i = 0; i < p.length; i++) if (p[i] > m) m = p[i];
    return m;
  },
  exitsWhen: 'above',
});

/** Whether a score leaves under a rule and threshold. */
export function leaves(rule: ExitRule, score: number, threshold: number): boolean {
  return rule.exitsWhen === 'below' ? score < threshold : score >= threshold;
}

/** A threshold at which no sample leaves under `rule` (its negation lets every sample leave at the first exit). */
export function neverLeaves(rule: ExitRule): number {
  return rule.exitsWhen === 'below' ? -Infinity : Infinity;
}

/** The softmax of row `r` of a [rows, classes] logit matrix, in float64 (max-shifted for stability). */
export function softmaxRow(logits: ArrayLike<number>, classes: number, r: number, out = new Float64Array(classes)): Float64Array {
  let m = -Infinity;
  for (let j = 0; j < classes; j++) m = Math.max(m, logits[r * classes + j]);
  let s = 0;
  for (let j = 0; j < classes; j++) s += out[j] = Math.exp(logits[r * classes + j] - m);
  for (let j = 0; j < classes; j++) out[j] /= s;
  return out;
}

/**
 * One exit's verdict on the samples still running. `scores` holds their exit's logits, row j for sample
 * `alive[j]`; every sample that leaves (all of them at the last exit) gets its logits copied into row
 * `alive[j]` of `out` and `exits[alive[j]] = k`. Returns the rows j that stay. Both early-exit runners
 * (TF.js and ONNX Runtime) decide through this one function.
 */
export function settleExit(
  scores: Float32Array,
  classes: number,
  alive: Int32Array,
  at: { rule: ExitRule; threshold: number; k: number; last: boolean },
  out: Float32Array,
  exits: Int32Array,
  probs = new Float64Array(classes),
): number[] {
  const { rule, threshold, k, last } = at;
  const stay: number[] = [];
  for (let j = 0; j < alive.length; j++) {
    if (!last && !leaves(rule, rule.score(softmaxRow(scores, classes, j, probs)), threshold)) {
      stay.push(j);
      continue;
    }
    out.set(scores.subarray(j * classes, (j + 1) * classes), alive[j] * classes);
    exits[alive[j]] = k;
  }
  return stay;
}

/** The rule's score of every row of a [rows, classes] logit matrix. */
export function exitScores(rule: ExitRule, logits: ArrayLike<number>, classes: number): Float64Array {
  const rows = logits.length / classes;
  const scores = new Float64Array(rows);
  const p = new Float64Array(classes);
  for (let r = 0; r < rows; r++) scores[r] = rule.score(softmaxRow(logits, classes, r, p));
  return scores;
}

/** Which rows of a logit matrix leave (1) under a rule and threshold. */
export function exitDecisions(rule: ExitRule, logits: ArrayLike<number>, classes: number, threshold: number): Uint8Array {
  return Uint8Array.from(exitScores(rule, logits, classes), (s) => (leaves(rule, s, threshold) ? 1 : 0));
}

/**
 * One threshold per intermediate exit (the last exit takes every sample left): a single number applies
 * to all of them. Throws a DynnError for a wrong count or a non-finite value.
 */
export function perExitThresholds(thresholds: number | number[], intermediate: number): number[] {
  const t = typeof thresholds === 'number' ? Array.from({ length: intermediate }, () => thresholds) : thresholds;
  if (t.length !== intermediate) throw new DynnError(`expected ${intermediate} thresholds (one per intermediate exit), got ${t.length}`);
  if (t.some((v) => typeof v !== 'number' || Number.isNaN(v))) throw new DynnError(`thresholds must be numbers, got ${JSON.stringify(t)}`);
  return t;
}
