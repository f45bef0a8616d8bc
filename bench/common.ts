import path from 'node:path';
import type { Network } from '../src/models/network.js';
import type { TrainOptions } from '../src/train/trainer.js';
import type { ImageSet } from '../src/data/types.js';
import { MixedRunner } from '../src/control/runner.js';
import { fixedCurve, levelTable } from '../src/control/table.js';
import { oracleFromTable } from '../src/control/oracle.js';
import type { RoutedEval } from '../src/eval/routed.js';

// What the bench scripts share.

export { benchArgs } from './args.js';

/** A throttleable network's fixed-u curve at `us` and its oracle (the cheapest u that is right, per sample), on `test`. */
export function curveOf(model: Network, test: ImageSet, us: number[]) {
  const table = levelTable(new MixedRunner(model), test, us);
  const oracle = oracleFromTable(table);
  return { curve: fixedCurve(table), oracle: { accuracy: oracle.accuracy, flopsRatio: oracle.meanFlopsRatio } };
}

/** What every per-sample bench reports of a routed evaluation: accuracy, the FLOPs ratio (mean, range) and the gates' share. */
export function routedFigures(e: RoutedEval) {
  return { accuracy: e.accuracy, flopsRatio: e.flopsRatio, flopsMin: e.flopsMin, flopsMax: e.flopsMax, gateShare: e.gateShare };
}

/**
 * The training options of a bench's scratch runs under `root` (each bench run replaces them: `force`), on
 * Fashion-MNIST with seed 0 and `defaults`, each epoch logged on one line: `base(name, extra)`.
 */
export function scratchRuns(root: string, defaults: TrainOptions, log: (line: string) => void) {
  const pct = (a: number) => `${(100 * a).toFixed(2)}%`;
  return (out: string, extra: TrainOptions): TrainOptions => ({
    dataset: 'fashion-mnist',
    seed: 0,
    out: path.join(root, out),
    force: true,
    onEpoch: (r) => {
      const g = r.gated;
      const u1 = r.testAccuracy['1'];
      log(
        `    epoch ${r.epoch}: loss ${r.loss.toFixed(4)}${u1 === undefined ? '' : `, u=1 ${pct(u1)}`}` +
          (g ? `, gated ${pct(g.accuracy)} at FLOPs ${g.flopsRatio.toFixed(3)}` : '') +
          (g?.trainExecutionRate !== undefined ? `; blocks executed: training ${g.trainExecutionRate.toFixed(3)}, inference ${g.executionRate?.toFixed(3)}` : ''),
      );
    },
    ...defaults,
    ...extra,
  });
}

