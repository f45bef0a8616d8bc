import { test } from 'node:test';
import assert from 'node:assert/strict';
import { againstCurve, describeGap } from './curve.js';
import { reportRun } from './evaluate.js';
import { oracleCurve, oracleFromTable } from './oracle.js';
import type { LevelTable } from './table.js';

/** A level table over 10 samples at u = 0.25, 0.5, 1 (MACs 10, 40, 100); `right[k]` lists the samples right at level k. */
function table(right: number[][]): LevelTable {
  const n = 10;
  const labels = new Uint8Array(n);
  const correct = right.map((rows) => Uint8Array.from({ length: n }, (_, i) => (rows.includes(i) ? 1 : 0)));
  return {
    us: [0.25, 0.5, 1],
    count: n,
    labels,
    predictions: correct.map((c) => Int32Array.from(c, (r) => (r ? 0 : 1))),
    confidence: correct.map(() => new Float32Array(n).fill(0.9)),
    correct,
    macs: [10, 40, 100],
    fullMacs: 100,
  };
}

// Fixed curve: 50% at 0.1, 70% at 0.4, 80% at 1.
const t = table([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7]]);

/** A controlled run: sample i at level `level[i]` with `overhead` MACs each, right where the table says. */
function run(level: number[], overhead: number) {
  return {
    predictions: Int32Array.from(level, (k, i) => t.predictions[k][i]),
    u: Float64Array.from(level, (k) => t.us[k]),
    macs: Float64Array.from(level, (k) => t.macs[k] + overhead),
  };
}

test('a controller below the fixed-u curve at its FLOPs ratio is flagged, with the gap; one on or above it is not', () => {
  // Every sample at the cheapest level plus its own cost: 50% at 0.13, where the curve gives 52%.
  const below = reportRun(run(Array(10).fill(0), 3), t.labels, t.fullMacs, t);
  assert.equal(below.meanFlopsRatio, 0.13);
  assert.equal(below.againstCurve.below, true);
  assert.ok(Math.abs(below.againstCurve.curveAccuracy! - 0.52) < 1e-12);
  assert.ok(Math.abs(below.againstCurve.gap! + 0.02) < 1e-12);
  assert.match(describeGap('the controller', below.againstCurve, below.meanFlopsRatio), /^BELOW the fixed-u curve: the controller is 2\.00 points less accurate .* at FLOPs ratio 0\.130 \(the fixed-u curve gives 52\.00% there\)/);
  // Samples 5 and 6 escalated to u = 0.5 (right there), the rest at 0.25: 70% at 0.16, above the curve (54%).
  const above = reportRun(run([0, 0, 0, 0, 0, 1, 1, 0, 0, 0], 0), t.labels, t.fullMacs, t);
  assert.equal(above.againstCurve.below, false);
  assert.ok(above.againstCurve.gap! > 0.13);
  assert.match(describeGap('the controller', above.againstCurve, above.meanFlopsRatio), /points above the fixed-u curve/);
  // Exactly on the curve (a fixed level) is not below it.
  assert.equal(reportRun(run(Array(10).fill(1), 0), t.labels, t.fullMacs, t).againstCurve.below, false);
  // Cheaper than every level: nothing to compare with, said so.
  const cheap = againstCurve(below.fixed, { accuracy: 0.1, flopsRatio: 0.01 });
  assert.deepEqual(cheap, { curveAccuracy: null, gap: null, below: false });
  assert.match(describeGap('x', cheap, 0.01), /cheaper than every point of the fixed-u curve/);
});

test('the oracle within a FLOPs budget: the cheapest-to-get-right samples first, ending at the oracle accuracy', () => {
  const curve = oracleCurve(t);
  // Level 0: 5 right at 0.1; +2 samples right at 0.5 (30 MACs more each); +1 right at 1 (90 more).
  assert.deepEqual(curve.map((p) => p.accuracy), [0.5, 0.7, 0.8]);
  assert.deepEqual(curve.map((p) => Number(p.flopsRatio.toFixed(12))), [0.1, 0.16, 0.25]);
  assert.equal(curve[2].accuracy, oracleFromTable(t).accuracy);
  // Never-right samples cost the cheapest level here, u = 1 in the oracle controller's summary.
  assert.ok(curve[2].flopsRatio < oracleFromTable(t).meanFlopsRatio);
  const r = reportRun(run(Array(10).fill(0), 0), t.labels, t.fullMacs, t);
  assert.deepEqual(r.oracle.curve, curve);
});
