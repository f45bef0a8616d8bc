import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { againstCurve, bestMixAccuracy, describeGap, type CurvePoint } from './curve.js';
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
  assert.match(describeGap('the controller', below.againstCurve, below.meanFlopsRatio), /^BELOW the fixed-u curve: the controller is 2\.00 points less accurate .* at FLOPs ratio 0\.130 \(the best of the fixed-u curve, or a mix of two of its points, gives 52\.00% there\)/);
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

/** The best a point, or a mix of two, does at a mean FLOPs ratio of at most c, by brute force over pairs. */
function bestMixBrute(points: CurvePoint[], c: number): number {
  let best = -Infinity;
  for (const p of points) if (p.flopsRatio <= c) best = Math.max(best, p.accuracy);
  for (const p of points) {
    for (const q of points) {
      if (p.flopsRatio < c && c < q.flopsRatio) best = Math.max(best, p.accuracy + ((q.accuracy - p.accuracy) * (c - p.flopsRatio)) / (q.flopsRatio - p.flopsRatio));
    }
  }
  return best === -Infinity ? NaN : best;
}

test('against the curve means against the best a fixed u or a mix of two does: a level a cheaper one beats, or a dip, is below it', () => {
  // A run whose u = 0.5 (0.354) is less accurate than u = 0.4 (0.240), and u = 1 less than u = 0.8.
  const curve = [
    { flopsRatio: 0.24, accuracy: 0.506 },
    { flopsRatio: 0.354, accuracy: 0.498 },
    { flopsRatio: 0.81, accuracy: 0.592 },
    { flopsRatio: 1, accuracy: 0.58 },
  ];
  assert.equal(againstCurve(curve, curve[1]).below, true);
  assert.ok(Math.abs(againstCurve(curve, curve[1]).curveAccuracy! - (0.506 + (0.086 * 0.114) / 0.57)) < 1e-12);
  assert.equal(againstCurve(curve, curve[3]).below, true);
  // Dearer than the whole network, as a cascade can be: the best point is there to beat.
  assert.ok(Math.abs(againstCurve(curve, { flopsRatio: 1.498, accuracy: 0.58 }).curveAccuracy! - 0.592) < 1e-12);
  // The points on the envelope are not below it.
  for (const p of [curve[0], curve[2]]) assert.equal(againstCurve(curve, p).below, false);
  fc.assert(
    fc.property(
      fc.array(fc.record({ flopsRatio: fc.double({ min: 0.01, max: 1, noNaN: true }), accuracy: fc.double({ min: 0, max: 1, noNaN: true }) }), { minLength: 1, maxLength: 8 }),
      fc.double({ min: 0, max: 1.5, noNaN: true }),
      (points, c) => {
        const [got, want] = [bestMixAccuracy(points, c), bestMixBrute(points, c)];
        return Number.isNaN(want) ? Number.isNaN(got) : Math.abs(got - want) < 1e-9;
      },
    ),
    { numRuns: 300 },
  );
});
