import type * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { checkActions } from './actions.js';
import type { MixedRunner } from './runner.js';
import { runStages } from './staged.js';
import type { LevelTable } from './table.js';
import type { Controller, Decision } from './types.js';

/** Default stages and threshold of the confidence cascade. */
export const CASCADE_DEFAULTS = { stages: [0.25, 0.5, 1], threshold: 0.9 };

function checkThreshold(t: number): void {
  if (!(typeof t === 'number' && t > 0 && t <= 1)) throw new DynnError(`cascade threshold must be in (0, 1], got ${t}`);
}

/**
 * A confidence cascade: every input runs at the lowest stage's u; while its top softmax probability is below
 * the threshold it runs again at the next stage. The earlier passes are counted in its cost.
 */
export class CascadeController implements Controller {
  readonly name = 'cascade';
  readonly actions: readonly number[];

  constructor(
    private readonly runner: MixedRunner,
    stages = CASCADE_DEFAULTS.stages,
    readonly threshold = CASCADE_DEFAULTS.threshold,
  ) {
    this.actions = checkActions(stages);
    checkThreshold(threshold);
  }

  decide(x: tf.Tensor): Decision {
    const t = this.threshold;
    return runStages(
      this.runner,
      x,
      this.actions,
      (_s, rows, probs, k) => rows.map((_, j) => Math.max(...probs.subarray(j * k, (j + 1) * k)) >= t),
      true,
    );
  }

  dispose(): void {}
}

/** Per-sample outcome of a cascade simulated on a level table (stages are indices into `table.us`). */
export function cascadeFromTable(table: LevelTable, stages: number[], threshold: number): { action: Int32Array; macs: Float64Array } {
  checkThreshold(threshold);
  const action = new Int32Array(table.count);
  const macs = new Float64Array(table.count);
  for (let i = 0; i < table.count; i++) {
    for (let s = 0; s < stages.length; s++) {
      const k = stages[s];
      macs[i] += table.macs[k];
      action[i] = k;
      if (table.confidence[k][i] >= threshold) break;
    }
  }
  return { action, macs };
}
