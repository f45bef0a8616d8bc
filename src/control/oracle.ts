import type * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { actionSet, checkActions } from './actions.js';
import type { MixedRunner } from './runner.js';
import { runStages } from './staged.js';
import type { LevelTable } from './table.js';
import type { CurvePoint } from './curve.js';
import type { Controller, DecideContext, Decision } from './types.js';

/** The oracle's summary: the ceiling every controller is reported against. */
export interface OracleSummary {
  accuracy: number;
  meanU: number;
  meanFlopsRatio: number;
}

/**
 * The oracle (evaluation only): for each input, the lowest u at which the network is right, or u = 1 when it
 * never is. It reads the labels, so it cannot be deployed; its cost is that of the u it picks.
 */
export class OracleController implements Controller {
  readonly name = 'oracle';
  readonly actions: readonly number[];

  constructor(
    private readonly runner: MixedRunner,
    actions: number[] = actionSet(),
  ) {
    const a = checkActions(actions);
    this.actions = a[a.length - 1] === 1 ? a : [...a, 1];
  }

  decide(x: tf.Tensor, context: DecideContext = {}): Decision {
    const labels = context.labels;
    if (!labels || labels.length !== x.shape[0]) throw new DynnError('the oracle needs the labels of the batch (it is for evaluation only)');
    return runStages(
      this.runner,
      x,
      this.actions,
      (_s, rows, probs, k) =>
        rows.map((i, j) => {
          const row = probs.subarray(j * k, (j + 1) * k);
          return row.indexOf(Math.max(...row)) === labels[i];
        }),
      false,
    );
  }

  dispose(): void {}
}

/** Action indices from the cheapest to the dearest (ties in table order): operating points (u, r) are not sorted by cost. */
function byCost(table: LevelTable): number[] {
  return table.us.map((_, k) => k).sort((a, b) => table.macs[a] - table.macs[b] || a - b);
}

/** The oracle computed from a level table: per-sample action index (the cheapest right one; -1: never right, runs at u = 1) and summary. */

export function oracleFromTable(table: LevelTable): OracleSummary & { action: Int32Array } {
  const action = new Int32Array(table.count).fill(-1);
  let right = 0;
  let sumU = 0;
  let sumMacs = 0;
  const order = byCost(table);
  for (let i = 0; i < table.count; i++) {
    for (const k of order) {
      if (table.correct[k][i]) {
        action[i] = k;
        break;
      }
    }
    const k = action[i];
    if (k >= 0) right++;
    sumU += k >= 0 ? table.us[k] : 1;
    sumMacs += k >= 0 ? table.macs[k] : table.fullMacs;
  }
  return {
    action,
    accuracy: right / table.count,
    meanU: sumU / table.count,
    meanFlopsRatio: sumMacs / table.count / table.fullMacs,
  };
}

/**
 * The oracle under a FLOPs budget, from a level table: point j runs every sample whose lowest right action is
 * at most j at that action and every other sample at the cheapest action. Filling the budget with the samples
 * that are cheapest to get right is optimal, so this is the ceiling a per-sample choice of u can reach at each
 * cost (linear between points); the last point is the oracle with its never-right samples at the cheapest action.
 */
export function oracleCurve(table: LevelTable): CurvePoint[] {
  const { action } = oracleFromTable(table);
  const K = table.us.length;
  const counts = new Float64Array(K);
  for (let i = 0; i < table.count; i++) if (action[i] >= 0) counts[action[i]]++;
  const out: CurvePoint[] = [];
  let right = 0;
  let extra = 0;
  const order = byCost(table);
  const base = table.macs[order[0]];
  for (const j of order) {
    right += counts[j];
    extra += counts[j] * (table.macs[j] - base);
    out.push({ accuracy: right / table.count, flopsRatio: (base + extra / table.count) / table.fullMacs });
  }
  return out;
}
