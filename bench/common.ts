import type { Network } from '../src/models/network.js';
import type { ImageSet } from '../src/data/types.js';
import { MixedRunner } from '../src/control/runner.js';
import { fixedCurve, levelTable } from '../src/control/table.js';
import { oracleFromTable } from '../src/control/oracle.js';
import type { RoutedEval } from '../src/eval/routed.js';

// What the bench scripts share.

/**
 * The bench scripts' command line, one reader for all: `--name value` options, read as text, as a positive
 * number or as a comma-separated list.
 */
export function benchArgs(argv: string[] = process.argv.slice(2)) {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, dflt: number): number => {
    const v = Number(value(name) ?? dflt);
    if (!(v > 0 && Number.isFinite(v))) throw new Error(`--${name} must be a positive number, got ${value(name)}`);
    return v;
  };
  const list = (name: string, dflt: string): string[] => (value(name) ?? dflt).split(',').filter(Boolean);
  return { value, num, list };
}

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
