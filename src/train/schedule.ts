import { DynnError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';

/**
 * How training draws the utilization of each batch (DTNN Eq. 1): `uniform` u ~ U(0, 1]; `curriculum`
 * u ~ U(0, uMax] with uMax rising linearly from `curriculumStart` to 1 over the first half of training,
 * so the narrow sub-networks settle before the wide ones are trained on top of them; `vanilla` u = 1
 * always (the baseline the paper compares against); `sandwich` trains several widths per batch (the
 * widest, the narrowest and random ones: universally slimmable networks, see scaling's `sandwichPlans`),
 * and draws its random widths like `uniform`. With `fullWidth` = p, uniform and curriculum batches
 * train the full network (u = 1) with probability p: under u ~ U(0, 1] alone the outermost group learns
 * from only 1/(D+1) of the batches, which costs accuracy at u = 1 (the sandwich rule's lesson, at the
 * price of one full-width batch in 1/p).
 */
export type USchedule = 'uniform' | 'curriculum' | 'vanilla' | 'sandwich';

export const U_SCHEDULES: readonly USchedule[] = ['uniform', 'curriculum', 'vanilla', 'sandwich'];

export function checkUSchedule(name: string): asserts name is USchedule {
  if (!U_SCHEDULES.includes(name as USchedule)) {
    throw new DynnError(`unknown u schedule "${name}"; expected one of ${U_SCHEDULES.join(', ')}`);
  }
}

/** The utilization of one batch at `progress` in [0, 1] of training. */
export function sampleU(schedule: USchedule, rng: Rng, progress: number, fullWidth = 0, curriculumStart = 0.25): number {
  if (schedule === 'vanilla') return 1;
  if (fullWidth > 0 && schedule !== 'sandwich' && rng.next() < fullWidth) return 1;
  const r = 1 - rng.next(); // in (0, 1]
  if (schedule === 'uniform' || schedule === 'sandwich') return r;
  const uMax = Math.min(1, curriculumStart + (1 - curriculumStart) * Math.min(1, progress / 0.5));
  return r * uMax;
}

/** Learning-rate schedules over training progress in [0, 1]. */
export type LrSchedule = 'cosine' | 'constant';

export const LR_SCHEDULES: readonly LrSchedule[] = ['cosine', 'constant'];

export function checkLrSchedule(name: string): asserts name is LrSchedule {
  if (!LR_SCHEDULES.includes(name as LrSchedule)) {
    throw new DynnError(`unknown learning-rate schedule "${name}"; expected one of ${LR_SCHEDULES.join(', ')}`);
  }
}

/** The learning rate at `progress` in [0, 1]: cosine decays from `base` to 0. */
export function learningRate(schedule: LrSchedule, base: number, progress: number): number {
  return schedule === 'cosine' ? (base * (1 + Math.cos(Math.PI * Math.min(1, progress)))) / 2 : base;
}
