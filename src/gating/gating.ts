import { DynnError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';

/** How a widthwise block picks its active groups: the first d (nested) or d at random (independent). */
export type GatingMode = 'nested' | 'independent';

export const GATING_MODES: readonly GatingMode[] = ['nested', 'independent'];

/** Throws a clear error unless u is a finite number in (0, 1]. */
export function checkUtilization(u: number): void {
  if (typeof u !== 'number' || !Number.isFinite(u) || u <= 0 || u > 1) {
    throw new DynnError(`utilization u must be a number in (0, 1], got ${u}`);
  }
}

/** Throws unless `mode` is a known gating mode. */
export function checkGatingMode(mode: string): asserts mode is GatingMode {
  if (!GATING_MODES.includes(mode as GatingMode)) {
    throw new DynnError(`unknown gating "${mode}"; expected one of ${GATING_MODES.join(', ')}`);
  }
}

/**
 * Active groups of a block of D groups at utilization u (DTNN): d = min(D, floor(u*(D+1))).
 * Blocks without a skip path keep at least one group (`minGroups` = 1); depth-gated ones may reach 0.
 * This is the one rounding rule of dynn: the cost model, the TF.js model and the export all call it.
 */
export function activeGroupCount(u: number, D: number, minGroups = 1): number {
  checkUtilization(u);
  if (!Number.isInteger(D) || D < 1) throw new DynnError(`group count D must be a positive integer, got ${D}`);
  // The epsilon keeps u = k/(D+1) on level k despite float error (e.g. (2/9)*9 = 1.9999999999999998).
  const d = Math.min(D, Math.floor(u * (D + 1) + 1e-9));
  return Math.max(minGroups, d);
}

/**
 * Active channels of a widthwise layer whose d groups hold `count` channels, rounded to a multiple of
 * `multiple` so that a level's layer fills whole blocks of the inference kernel (ONNX Runtime's NCHWc
 * convolution computes 16 channels at a time with AVX-512, 8 with AVX2, padding a partial block): the
 * nearest multiple, never below `multiple` nor 10% below `count` (MobileNet's and US-Nets' `make_divisible`),
 * and at most `full`. `multiple` 1 keeps `count`.
 */
export function roundChannels(count: number, multiple: number, full: number): number {
  if (!Number.isInteger(multiple) || multiple < 1) throw new DynnError(`channel multiple must be a positive integer, got ${multiple}`);
  if (multiple === 1) return count;
  let c = Math.max(multiple, Math.floor((count + multiple / 2) / multiple) * multiple);
  if (c < 0.9 * count) c += multiple;
  return Math.min(full, c);
}

/** The distinct active-group counts reachable for u in (0, 1], each with a u that reaches it (1 for d = D). */
export function utilizationLevels(D: number, minGroups = 1): { d: number; u: number }[] {
  const levels: { d: number; u: number }[] = [];
  for (let d = minGroups; d <= D; d++) levels.push({ d, u: d === D ? 1 : Math.max(d, 0.5) / (D + 1) });
  return levels;
}

/** The d active group indices of a block of D groups, sorted ascending. */
export function selectGroups(D: number, d: number, mode: GatingMode, rng?: Rng): Int32Array {
  if (mode === 'nested' || d >= D) return Int32Array.from({ length: d }, (_, i) => i);
  if (!rng) throw new DynnError('independent gating needs a random generator (a seed)');
  return Int32Array.from(rng.choose(D, d));
}

/**
 * Depthwise-nested gating (DTNN): `stages[s]` blocks can be skipped in stage s. The total number of active
 * blocks is d = min(D, floor(u*(D+1))) with D the total; blocks are turned on walking the stages from the
 * output to the input, one more per stage per pass while that stage's active share stays within u. When a
 * pass turns nothing on, the stage with the lowest active share (nearest the output on ties) gets the next
 * block, so the total always reaches d. Within a stage, blocks are turned on first to last.
 * Returns, per stage, how many of its blocks are active.
 */
export function depthNestedCounts(stages: number[], u: number): number[] {
  const total = stages.reduce((a, b) => a + b, 0);
  const d = activeGroupCount(u, total, 0);
  const active = stages.map(() => 0);
  let on = 0;
  while (on < d) {
    let added = false;
    for (let s = stages.length - 1; s >= 0 && on < d; s--) {
      if (active[s] < stages[s] && (active[s] + 1) / stages[s] <= u + 1e-9) {
        active[s]++;
        on++;
        added = true;
      }
    }
    if (!added) {
      let best = -1;
      for (let s = stages.length - 1; s >= 0; s--) {
        if (active[s] >= stages[s]) continue;
        if (best < 0 || active[s] / stages[s] < active[best] / stages[best]) best = s;
      }
      active[best]++;
      on++;
    }
  }
  return active;
}
