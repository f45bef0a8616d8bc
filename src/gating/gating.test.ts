import { test } from 'node:test';
import assert from 'node:assert/strict';
import { activeGroupCount, checkUtilization, depthNestedCounts, roundChannels, selectGroups, utilizationLevels } from './gating.js';
import { Rng } from '../util/rng.js';

test('d = min(D, floor(u*(D+1))), at least one group without a skip path', () => {
  const D = 8;
  for (let k = 1; k <= 1000; k++) {
    const u = k / 1000;
    const expected = Math.max(1, Math.min(D, Math.floor(u * (D + 1) + 1e-9)));
    assert.equal(activeGroupCount(u, D), expected, `u=${u}`);
  }
  assert.equal(activeGroupCount(1, D), 8);
  assert.equal(activeGroupCount(0.5, D), 4);
  assert.equal(activeGroupCount(0.01, D), 1);
  assert.equal(activeGroupCount(0.01, D, 0), 0);
  // u exactly on a level boundary stays on that level despite float error: (2/9)*9 = 1.9999999999999998.
  assert.equal(activeGroupCount(2 / 9, D), 2);
  assert.equal(activeGroupCount(8 / 9, D), 8);
});

test('d is monotone in u', () => {
  for (const D of [1, 2, 4, 8, 16]) {
    let prev = 0;
    for (let k = 1; k <= 200; k++) {
      const d = activeGroupCount(k / 200, D);
      assert.ok(d >= prev);
      prev = d;
    }
    assert.equal(prev, D);
  }
});

test('u out of range, NaN or not a number: a clear error', () => {
  for (const bad of [0, -0.1, 1.0001, NaN, Infinity, '0.5' as unknown as number]) {
    assert.throws(() => checkUtilization(bad), /utilization u must be a number in \(0, 1\]/);
    assert.throws(() => activeGroupCount(bad, 8), /utilization u must be a number in \(0, 1\]/);
  }
  assert.throws(() => activeGroupCount(0.5, 0), /group count D must be a positive integer/);
});

test('nested gating activates groups 0..d-1; each level contains the smaller ones', () => {
  let prev = new Set<number>();
  for (let d = 1; d <= 8; d++) {
    const g = selectGroups(8, d, 'nested');
    assert.deepEqual(Array.from(g), Array.from({ length: d }, (_, i) => i));
    for (const x of prev) assert.ok(g.includes(x));
    prev = new Set(g);
  }
});

test('independent gating picks d distinct groups, repeatably under a seed', () => {
  const a = selectGroups(8, 3, 'independent', new Rng(5));
  const b = selectGroups(8, 3, 'independent', new Rng(5));
  assert.deepEqual(a, b);
  assert.equal(new Set(a).size, 3);
  for (const g of a) assert.ok(g >= 0 && g < 8);
  assert.deepEqual(Array.from(a), Array.from(a).sort((x, y) => x - y));
  const seen = new Set<string>();
  const rng = new Rng(1);
  for (let i = 0; i < 50; i++) seen.add(Array.from(selectGroups(8, 3, 'independent', rng)).join());
  assert.ok(seen.size > 10, 'independent choices vary across calls');
  assert.throws(() => selectGroups(8, 3, 'independent'), /needs a random generator/);
});

test('utilization levels map back to their d', () => {
  for (const { d, u } of utilizationLevels(8)) assert.equal(activeGroupCount(u, 8), d);
  for (const { d, u } of utilizationLevels(6, 0)) assert.equal(activeGroupCount(u, 6, 0), d);
});

test('depthwise-nested gating: total follows d, output stages first, nested in u', () => {
  const stages = [2, 2, 2];
  let prev = [0, 0, 0];
  for (let k = 1; k <= 100; k++) {
    const u = k / 100;
    const counts = depthNestedCounts(stages, u);
    assert.equal(counts.reduce((a, b) => a + b, 0), activeGroupCount(u, 6, 0), `u=${u}`);
    counts.forEach((c, s) => {
      assert.ok(c <= stages[s]);
      assert.ok(c >= prev[s], `nested at u=${u}`);
    });
    prev = counts;
  }
  // At u = 0.5 (d = 3) each stage runs half its blocks.
  assert.deepEqual(depthNestedCounts(stages, 0.5), [1, 1, 1]);
  // With few blocks on, the stages nearest the output get them first.
  assert.deepEqual(depthNestedCounts([2, 2, 2], 0.3), [0, 1, 1]);
  assert.deepEqual(depthNestedCounts([2, 2, 2], 1), [2, 2, 2]);
});

test('roundChannels: the nearest multiple, at least one multiple and 90% of the count, at most the full width', () => {
  // vgg-w's c2 (32 channels, 8 groups of 4) and c3 (64, 8 groups of 8) at d = 1..8, multiple 16.
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8].map((d) => roundChannels(4 * d, 16, 32)), [16, 16, 16, 16, 32, 32, 32, 32]);
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8].map((d) => roundChannels(8 * d, 16, 64)), [16, 16, 32, 32, 48, 48, 64, 64]);
  assert.deepEqual([4, 12, 20, 28].map((c) => roundChannels(c, 8, 32)), [8, 16, 24, 32]);
  // Nearest, not up: 17 -> 16; but never more than 10% below: 20 -> 32 with 16, since 16 < 0.9 * 20.
  assert.equal(roundChannels(17, 16, 64), 16);
  assert.equal(roundChannels(20, 16, 64), 32);
  assert.equal(roundChannels(40, 16, 40), 40, 'capped at the full width');
  for (let c = 1; c <= 64; c++) assert.equal(roundChannels(c, 1, 64), c, 'multiple 1 keeps the count');
  for (let c = 1; c < 64; c++) assert.ok(roundChannels(c + 1, 16, 64) >= roundChannels(c, 16, 64), 'monotone in the count');
  assert.throws(() => roundChannels(8, 0, 32), /channel multiple must be a positive integer, got 0/);
  assert.throws(() => roundChannels(8, 2.5, 32), /channel multiple must be a positive integer, got 2.5/);
});
