import type { GateEstimator, GateMode } from '../layers/types.js';

/** Every gate mode (see `GateMode`); TF-free, so the CLI checks an option without loading the engine. */
export const GATE_MODES: readonly GateMode[] = ['soft', 'hard', 'full', 'masked'];

/** Every gradient estimator of soft decisions (see `GateEstimator`). */
export const GATE_ESTIMATORS: readonly GateEstimator[] = ['sigmoid', 'gumbel'];
