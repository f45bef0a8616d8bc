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

/**
 * A temporal controller's operating points (u, r): every action u at every input resolution r (heights), as
 * parallel arrays sorted by u then r, so the last is the full network at the largest resolution.
 */
export function operatingPoints(us: readonly number[], resolutions: readonly number[]): { actions: number[]; resolutions: number[] } {
  const u = checkActions(us);
  const rs = [...resolutions].sort((a, b) => a - b);
  if (rs.length === 0 || rs.some((r) => !Number.isInteger(r) || r < 1)) throw new DynnError(`resolutions must be positive integers, got ${resolutions.join(',')}`);
  if (rs.some((r, i) => i > 0 && r === rs[i - 1])) throw new DynnError(`resolutions: ${rs.find((r, i) => i > 0 && r === rs[i - 1])} appears twice`);
  return { actions: u.flatMap((x) => rs.map(() => x)), resolutions: u.flatMap(() => rs) };
}

/** Validates operating points (u, r) given as parallel arrays: each u a utilization, each r a positive integer, pairs ascending by u then r and distinct. */
export function checkOperatingPoints(us: readonly number[], resolutions: readonly number[]): void {
  if (!Array.isArray(resolutions) || resolutions.length !== us.length) throw new DynnError(`${us.length} actions but ${Array.isArray(resolutions) ? resolutions.length : 'no'} resolutions`);
  for (let i = 0; i < us.length; i++) {
    const [u, r] = [us[i], resolutions[i]];
    if (typeof u !== 'number' || !Number.isFinite(u) || u <= 0 || u > 1) throw new DynnError(`action set: ${u} is not a utilization in (0, 1]`);
    if (!Number.isInteger(r) || r < 1) throw new DynnError(`action set: resolution ${r} is not a positive integer`);
    if (i > 0 && (u < us[i - 1] || (u === us[i - 1] && r <= resolutions[i - 1]))) throw new DynnError('action set: operating points (u, r) must be distinct and ascending by u, then r');
  }
}
