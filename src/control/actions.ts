import { DynnError } from '../util/errors.js';

/** Default number of actions K of a controller: u_k = k/K for k = 1..K. */
export const DEFAULT_ACTIONS = 10;

/** The action set u_k = k/K, k = 1..K (DTNN Eq. 13), ascending. */
export function actionSet(K = DEFAULT_ACTIONS): number[] {
  if (!Number.isInteger(K) || K < 1) throw new DynnError(`the number of actions K must be a positive integer, got ${K}`);
  return Array.from({ length: K }, (_, i) => (i + 1) / K);
}

/** Validates an explicit action set: utilizations in (0, 1], distinct; returns them ascending. */
export function checkActions(us: readonly number[]): number[] {
  if (!Array.isArray(us) || us.length === 0) throw new DynnError('an action set needs at least one utilization');
  for (const u of us) {
    if (typeof u !== 'number' || !Number.isFinite(u) || u <= 0 || u > 1) {
      throw new DynnError(`action set: ${u} is not a utilization in (0, 1]`);
    }
  }
  const sorted = [...us].sort((a, b) => a - b);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] === sorted[i - 1]) throw new DynnError(`action set: ${sorted[i]} appears twice`);
  }
  return sorted;
}

/** A utilization as a stable key (histograms, JSON): the shortest decimal that round-trips. */
export function uKey(u: number): string {
  return String(Number(u.toPrecision(12)));
}
