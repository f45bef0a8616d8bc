import type * as tf from '@tensorflow/tfjs-core';
import { checkUtilization } from '../gating/gating.js';
import type { Controller, Decision } from './types.js';

/** One utilization for every input: the baseline every other controller is compared with. */
export class FixedController implements Controller {
  readonly name = 'fixed';
  readonly actions: readonly number[];

  constructor(readonly u = 1) {
    checkUtilization(u);
    this.actions = [u];
  }

  decide(x: tf.Tensor): Decision {
    const n = x.shape[0];
    return { u: new Float64Array(n).fill(this.u), overheadMacs: new Float64Array(n), scores: null };
  }

  dispose(): void {}
}
