import type { Network } from '../src/models/network.js';
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
