import type { GateEstimator, GateMode } from '../layers/types.js';
import { DynnError } from '../util/errors.js';

/** Every gate mode (see `GateMode`); TF-free, so the CLI checks an option without loading the engine. */
export const GATE_MODES: readonly GateMode[] = ['soft', 'hard', 'full', 'masked'];

/** Every gradient estimator of soft decisions (see `GateEstimator`). */
export const GATE_ESTIMATORS: readonly GateEstimator[] = ['sigmoid', 'gumbel'];

/** Refuses anything but a registered estimator, naming them. */
export function checkGateEstimator(estimator: string): asserts estimator is GateEstimator {
  if (!GATE_ESTIMATORS.includes(estimator as GateEstimator)) throw new DynnError(`unknown gate estimator "${estimator}"; expected one of ${GATE_ESTIMATORS.join(', ')}`);
}

/** Refuses an inference threshold outside [0, 1] (TF.js routing, the segment exporter and its runtime). */
export function checkGateThreshold(threshold: number): void {
  if (!(threshold >= 0 && threshold <= 1)) throw new DynnError(`the gate threshold must be in [0, 1], got ${threshold}`);
}
