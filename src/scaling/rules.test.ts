import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exitDecisions, exitRules, exitScores, perExitThresholds } from './rules.js';

// Hand-made logits over 3 classes, with softmaxes worked out by hand:
// [0, 0, 0]          -> (1/3, 1/3, 1/3):     entropy ln 3 = 1.098612,            top 1/3
// [ln 2, 0, 0]       -> (1/2, 1/4, 1/4):     entropy 1.5 ln 2 = 1.039721,         top 0.5
// [ln 8, 0, 0] + 100 -> (8/10, 1/10, 1/10): entropy 0.8 ln 1.25 + 0.2 ln 10 = 0.639032, top 0.8 (shift-invariant)
// [0, ln 18, 0]      -> (1/20, 18/20, 1/20): entropy 0.9 ln(10/9) + 0.1 ln 20 = 0.394398, top 0.9
const logits = [0, 0, 0, Math.log(2), 0, 0, Math.log(8) + 100, 100, 100, 0, Math.log(18), 0];
const entropy = [Math.log(3), 1.5 * Math.log(2), 0.8 * Math.log(1.25) + 0.2 * Math.log(10), 0.9 * Math.log(10 / 9) + 0.1 * Math.log(20)];

test('entropy and top-probability scores of hand-made logits', () => {
  const h = exitScores(exitRules.get('entropy'), logits, 3);
  h.forEach((v, i) => assert.ok(Math.abs(v - entropy[i]) < 1e-9, `entropy of row ${i}: ${v}`));
  assert.ok(Math.abs(entropy[2] - 0.639032) < 1e-6 && Math.abs(entropy[3] - 0.394398) < 1e-6);
  const top = exitScores(exitRules.get('confidence'), logits, 3);
  [1 / 3, 0.5, 0.8, 0.9].forEach((p, i) => assert.ok(Math.abs(top[i] - p) < 1e-9, `top probability of row ${i}`));
});

test('a sample leaves when its entropy is below, or its top probability at or above, the threshold', () => {
  const e = exitRules.get('entropy');
  assert.deepEqual(Array.from(exitDecisions(e, logits, 3, 0.64)), [0, 0, 1, 1]);
  assert.deepEqual(Array.from(exitDecisions(e, logits, 3, 1.04)), [0, 1, 1, 1]);
  assert.deepEqual(Array.from(exitDecisions(e, logits, 3, 0.3)), [0, 0, 0, 0]);
  assert.deepEqual(Array.from(exitDecisions(e, logits, 3, 1.1)), [1, 1, 1, 1]);
  const c = exitRules.get('confidence');
  assert.deepEqual(Array.from(exitDecisions(c, logits, 3, 0.85)), [0, 0, 0, 1]);
  assert.deepEqual(Array.from(exitDecisions(c, logits, 3, 0.45)), [0, 1, 1, 1]);
  assert.deepEqual(Array.from(exitDecisions(c, logits, 3, 0.95)), [0, 0, 0, 0]);
});

test('thresholds per exit: one number for all, or exactly one per intermediate exit', () => {
  assert.deepEqual(perExitThresholds(0.3, 3), [0.3, 0.3, 0.3]);
  assert.deepEqual(perExitThresholds([0.1, 0.2], 2), [0.1, 0.2]);
  assert.throws(() => perExitThresholds([0.1, 0.2], 3), /expected 3 thresholds \(one per intermediate exit\), got 2/);
  assert.throws(() => perExitThresholds([NaN], 1), /thresholds must be numbers/);
  assert.throws(() => exitRules.get('margin'), /unknown exit rule "margin"; expected one of confidence, entropy/);
});
