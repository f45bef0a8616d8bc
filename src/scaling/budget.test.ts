import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { makeSynthetic } from '../data/synthetic.js';
import { Rng } from '../util/rng.js';
import { exitCandidates, exitTable, fitThresholds, simulateExits, type ExitTable } from './budget.js';
import { EarlyExitRunner } from './runner.js';
import { sweepExits } from './exit-sweep.js';

before(async () => {
  await initEngine('wasm');
});

test('a policy replayed on a hand-made table: accuracy, mean cost and exit shares', () => {
  const table: ExitTable = {
    scores: [Float64Array.from([0.1, 0.5, 0.9, 0.2]), Float64Array.from([0.3, 0.2, 0.8, 0.1]), Float64Array.from([0, 0, 0, 0])],
    correct: [Uint8Array.from([1, 0, 1, 0]), Uint8Array.from([1, 1, 0, 1]), Uint8Array.from([1, 1, 1, 1])],
    costs: [10, 30, 100],
    baselineFlops: 90,
  };
  // Entropy below 0.25 leaves: samples 0 and 3 at exit 1, sample 1 at exit 2, sample 2 at the last exit.
  const r = simulateExits(table, 'entropy', 0.25);
  assert.equal(r.accuracy, 3 / 4);
  assert.equal(r.meanFlops, (10 + 30 + 100 + 10) / 4);
  assert.equal(r.flopsRatio, 37.5 / 90);
  assert.deepEqual(r.exitShares, [0.5, 0.25, 0.25]);
  const strict = simulateExits(table, 'entropy', [0, 0.25]);
  assert.deepEqual(strict.exitShares, [0, 0.5, 0.5]);
  assert.equal(strict.accuracy, 1);
});

/** A table whose later exits are more accurate and whose confident samples are more often right. */
function randomTable(n: number, seed: number): ExitTable {
  const rng = new Rng(seed);
  const K = 4;
  const scores = Array.from({ length: K }, () => new Float64Array(n));
  const correct = Array.from({ length: K }, () => new Uint8Array(n));
  for (let i = 0; i < n; i++) {
    const hard = rng.next();
    for (let k = 0; k < K; k++) {
      scores[k][i] = 2.3 * hard * (1 - 0.2 * k) * (0.8 + 0.4 * rng.next());
      correct[k][i] = rng.next() < 1 - hard * (0.6 - 0.15 * k) ? 1 : 0;
    }
  }
  return { scores, correct, costs: [5, 40, 60, 104], baselineFlops: 100 };
}

test('fitted thresholds meet the budget tightly, and no simpler policy on the table beats them', () => {
  const table = randomTable(2000, 1);
  for (const budget of [0.2, 0.45, 0.7, 1]) {
    const f = fitThresholds(table, 'entropy', budget);
    assert.ok(f.flopsRatio <= budget + 1e-12, `budget ${budget}: cost ${f.flopsRatio}`);
    assert.ok(f.flopsRatio > budget - 0.03, `budget ${budget} is used: cost ${f.flopsRatio}`);
    // No shared threshold on a fine grid that meets the budget is more accurate (beyond the fit's quantile spacing).
    for (let t = 0; t <= 2.5; t += 0.005) {
      const s = simulateExits(table, 'entropy', t);
      if (s.flopsRatio <= budget) assert.ok(s.accuracy <= f.accuracy + 0.002, `threshold ${t} beats the fit at budget ${budget}: ${s.accuracy} > ${f.accuracy}`);
    }
    const again = simulateExits(table, 'entropy', f.thresholds);
    assert.equal(again.accuracy, f.accuracy);
  }
  const cands = exitCandidates(table, 'entropy');
  assert.equal(cands.length, 32);
  for (const x of cands) {
    const sim = simulateExits(table, 'entropy', x.params.thresholds);
    assert.equal(x.accuracy, sim.accuracy);
    assert.equal(x.flopsRatio, sim.flopsRatio);
    assert.equal(x.kind, 'early-exit');
  }
  assert.ok(cands[0].flopsRatio > cands[31].flopsRatio, 'a laxer entropy threshold is cheaper');
  const c = fitThresholds(table, 'confidence', 0.5);
  assert.ok(c.flopsRatio <= 0.5);
  assert.throws(() => fitThresholds(table, 'entropy', 0.01), /budget 0.01 is below the cost of leaving every sample at the first exit \(0.0500\)/);
  assert.throws(() => fitThresholds(table, 'entropy', -1), /budget must be a positive FLOPs ratio/);
  assert.throws(() => fitThresholds({ ...table, scores: table.scores.slice(3), correct: table.correct.slice(3) }, 'entropy', 0.5), /no early exits/);
});

test('the sweep measures with real early termination and agrees with the replayed table', () => {
  const m = createModel('vgg-exits', { seed: 4 });
  const test = makeSynthetic({ count: 300, seed: 2 });
  const runner = EarlyExitRunner.freeze(m, 1);
  const table = exitTable(runner, test, 'entropy');
  runner.dispose();
  // Thresholds well away from every score, so float differences between batch compositions cannot flip a decision.
  const sorted = [...table.scores[0]].sort((a, b) => a - b);
  let t = sorted[150];
  for (let i = 150; i < sorted.length - 1; i++) {
    if (sorted[i + 1] - sorted[i] > 1e-4) {
      t = (sorted[i] + sorted[i + 1]) / 2;
      break;
    }
  }
  const before = tf.memory().numTensors;
  const s = sweepExits(m, test, [t, -1, 10], { reps: 1, timingBatches: 1 });
  assert.equal(tf.memory().numTensors, before, 'no leaked tensors');
  assert.equal(s.exitAccuracy.length, 4);
  assert.equal(s.baseline.accuracy, s.exitAccuracy[3]);
  for (const p of s.points) {
    const sim = simulateExits(table, 'entropy', p.threshold);
    assert.equal(p.accuracy, sim.accuracy);
    assert.ok(Math.abs(p.flopsRatio - sim.flopsRatio) < 1e-9);
    p.exitShares.forEach((v, k) => assert.ok(Math.abs(v - sim.exitShares[k]) < 1e-9));
    assert.ok(p.latencyMs.batch256 > 0);
  }
  assert.deepEqual(s.points[1].exitShares, [0, 0, 0, 1], 'nobody leaves early');
  assert.ok(s.points[1].flopsRatio > 1, 'passing every exit classifier costs more than the last exit alone');
  assert.equal(s.points[2].exitShares[0], 1);
  assert.throws(() => sweepExits(createModel('vgg-w'), test, [0.1]), /model vgg-w has no early exits/);
  m.dispose();
});
