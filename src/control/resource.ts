import type * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { actionSet, checkActions } from './actions.js';
import { latencyOf, type LatencyTable } from './latency-table.js';
import type { MixedRunner } from './runner.js';
import type { Controller, DecideContext, Decision } from './types.js';

/**
 * A resource rule: the context, not the input, sets u for the whole batch. A battery level b in [0, 1]
 * allows the largest action <= b; a latency budget (ms for this batch) allows the largest action whose
 * measured latency at this batch size fits, from a latency table. With both, the smaller u wins; when
 * nothing fits, the smallest action runs.
 */
export class ResourceController implements Controller {
  readonly name = 'resource';
  readonly actions: readonly number[];

  constructor(
    private readonly runner: MixedRunner,
    private readonly table?: LatencyTable,
    actions?: number[],
  ) {
    this.actions = checkActions(actions ?? (table ? table.levels.map((l) => l.u) : actionSet()));
  }

  /** The utilization the context allows for a batch of n. */
  choose(context: DecideContext, n: number): number {
    const { battery, latencyBudgetMs } = context;
    if (battery === undefined && latencyBudgetMs === undefined) {
      throw new DynnError('the resource controller needs a battery level or a latency budget in its context');
    }
    const fits: number[] = [];
    if (battery !== undefined) {
      if (!(battery >= 0 && battery <= 1)) throw new DynnError(`battery level must be in [0, 1], got ${battery}`);
      fits.push(this.largest((u) => u <= battery + 1e-12));
    }
    if (latencyBudgetMs !== undefined) {
      if (!(latencyBudgetMs > 0)) throw new DynnError(`latency budget must be a positive number of ms, got ${latencyBudgetMs}`);
      const table = this.table;
      if (!table) throw new DynnError('a latency budget needs a latency table (--latency-table FILE)');
      const same = (a: number, b: number) => this.runner.key(a) === this.runner.key(b);
      fits.push(this.largest((u) => latencyOf(table, u, n, same) <= latencyBudgetMs));
    }
    return Math.min(...fits);
  }

  private largest(ok: (u: number) => boolean): number {
    const allowed = this.actions.filter(ok);
    return allowed.length ? allowed[allowed.length - 1] : this.actions[0];
  }

  decide(x: tf.Tensor, context: DecideContext = {}): Decision {
    const n = x.shape[0];
    return { u: new Float64Array(n).fill(this.choose(context, n)), overheadMacs: new Float64Array(n), scores: null };
  }

  dispose(): void {}
}
