import { test } from 'node:test';
import assert from 'node:assert/strict';
import { costOf, paretoFront, selectOperatingPoint, type Candidate } from './select.js';
import { interpolateAccuracy } from './curve.js';
import { checkActions, actionSet, uKey } from './actions.js';

const c = (name: string, accuracy: number, flopsRatio: number, ms?: number): Candidate => ({ name, kind: 'test', params: {}, accuracy, flopsRatio, ...(ms !== undefined ? { ms } : {}) });

// A hand-made table. Full accuracy (A, cost 1) is 0.90. Dominated: E (costlier than C, less accurate),
// F (same cost as B, less accurate). Front by FLOPs: G 0.50@0.10, B 0.80@0.30, C 0.87@0.45, D 0.893@0.60, A 0.90@1.
const table: Candidate[] = [
  c('A', 0.9, 1.0, 10),
  c('B', 0.8, 0.3, 2),
  c('C', 0.87, 0.45, 6),
  c('D', 0.893, 0.6, 4),
  c('E', 0.86, 0.5, 3),
  c('F', 0.79, 0.3, 1),
  c('G', 0.5, 0.1, 0.5),
];

test('Pareto front of a hand-made table, by FLOPs and by ms', () => {
  assert.deepEqual(paretoFront(table).map((x) => x.name), ['G', 'B', 'C', 'D', 'A']);
  // By ms: G .5 (0.50), F 1 (0.79), B 2 (0.80), E 3 (0.86), D 4 (0.893), C 6 (0.87: dominated by D), A 10 (0.90).
  assert.deepEqual(paretoFront(table, 'ms').map((x) => x.name), ['G', 'F', 'B', 'E', 'D', 'A']);
});

test('min-cost: the cheapest candidate with accuracy >= beta x full', () => {
  const solve = (beta: number) => selectOperatingPoint(table, { kind: 'min-cost', beta, fullAccuracy: 0.9, unit: 'flops' }).choice.name;
  assert.equal(solve(0.99), 'D'); // needs 0.891: D (0.893 @ 0.6) beats A (@ 1)
  assert.equal(solve(0.96), 'C'); // needs 0.864: C (0.87 @ 0.45); E (0.86) just misses
  assert.equal(solve(0.95), 'C'); // needs 0.855: E (0.86 @ 0.5) qualifies but C is cheaper
  assert.equal(solve(0.85), 'B'); // needs 0.765: B and F both qualify at 0.3; B is more accurate
  assert.equal(solve(1), 'A');
  assert.equal(selectOperatingPoint(table, { kind: 'min-cost', beta: 0.95, fullAccuracy: 0.9, unit: 'ms' }).choice.name, 'E');
  assert.throws(() => selectOperatingPoint(table, { kind: 'min-cost', beta: 1, fullAccuracy: 0.95, unit: 'flops' }), /no candidate reaches accuracy 95\.00%.*most accurate is A/);
  assert.throws(() => selectOperatingPoint(table, { kind: 'min-cost', beta: 1.5, fullAccuracy: 0.9, unit: 'flops' }), /--min-accuracy must be a fraction in \(0, 1\]/);
});

test('min-error: the most accurate candidate within the budget', () => {
  const solve = (budget: number, unit: 'flops' | 'ms' = 'flops') => selectOperatingPoint(table, { kind: 'min-error', budget, unit }).choice.name;
  assert.equal(solve(0.4), 'B');
  assert.equal(solve(0.45), 'C'); // exactly on the budget counts
  assert.equal(solve(0.59), 'C'); // E (0.5) is within too but less accurate
  assert.equal(solve(0.99), 'D');
  assert.equal(solve(1), 'A');
  assert.equal(solve(3.5, 'ms'), 'E');
  assert.equal(solve(1.5, 'ms'), 'F');
  assert.throws(() => solve(0.05), /no candidate has a mean cost within 0\.05 \(FLOPs ratio\); the cheapest is G/);
  assert.throws(() => solve(0), /budget must be positive/);
});

test('ms costs need a latency; empty candidate lists fail clearly', () => {
  assert.throws(() => costOf(c('X', 0.5, 0.5), 'ms'), /candidate "X" has no latency/);
  assert.throws(() => selectOperatingPoint([], { kind: 'min-error', budget: 1, unit: 'flops' }), /no candidate operating points/);
});

test('the fixed-u curve interpolates linearly between levels', () => {
  const curve = [
    { accuracy: 0.5, flopsRatio: 0.1 },
    { accuracy: 0.9, flopsRatio: 1 },
    { accuracy: 0.8, flopsRatio: 0.3 },
  ];
  assert.equal(interpolateAccuracy(curve, 0.3), 0.8);
  assert.ok(Math.abs(interpolateAccuracy(curve, 0.2) - 0.65) < 1e-12);
  assert.ok(Math.abs(interpolateAccuracy(curve, 0.65) - 0.85) < 1e-12);
  assert.equal(interpolateAccuracy(curve, 1.2), 0.9);
  assert.ok(Number.isNaN(interpolateAccuracy(curve, 0.05)));
});

test('action sets: k/K, validation of explicit sets, stable keys', () => {
  assert.deepEqual(actionSet(4), [0.25, 0.5, 0.75, 1]);
  assert.deepEqual(actionSet().map(uKey), ['0.1', '0.2', '0.3', '0.4', '0.5', '0.6', '0.7', '0.8', '0.9', '1']);
  assert.deepEqual(checkActions([1, 0.5]), [0.5, 1]);
  assert.throws(() => checkActions([0, 0.5]), /action set: 0 is not a utilization in \(0, 1\]/);
  assert.throws(() => checkActions([0.5, 1.2]), /action set: 1\.2 is not a utilization in \(0, 1\]/);
  assert.throws(() => checkActions([0.5, 0.5]), /appears twice/);
  assert.throws(() => checkActions([]), /at least one/);
  assert.throws(() => actionSet(0), /positive integer/);
  assert.equal(uKey(0.1 + 0.2), '0.3');
});
