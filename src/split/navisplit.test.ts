import { test } from 'node:test';
import assert from 'node:assert/strict';
import { choosePoint, ComputeCosts, predictedMs, type ComputeMs } from './navisplit.js';

// Two split points: pool1 sends more bytes and is more accurate; pool2's head runs more of the network.
const points = [
  { at: 'pool1', channels: 8, bits: 4, bytesPerSample: 400, accuracy: 0.85 },
  { at: 'pool2', channels: 8, bits: 4, bytesPerSample: 204, accuracy: 0.83 },
  { at: 'pool2', channels: 1, bits: 2, bytesPerSample: 21, accuracy: 0.68 },
];
const compute: Record<string, ComputeMs> = { pool1: { headMs: 0.3, tailMs: 0.6 }, pool2: { headMs: 0.5, tailMs: 0.3 } };
const computeOf = (p: { at: string }) => compute[p.at];
/** A link of `mbps` Mbit/s with a 2 ms fixed part (delay and HTTP). */
const link = (mbps: number) => ({ bytesPerMs: (mbps * 1e6) / 8 / 1000, overheadMs: 2 });
const pick = (mbps: number, budget: number) => {
  const p = choosePoint(points, link(mbps), budget, computeOf);
  return `${p.at} ${p.channels}x${p.bits}`;
};

test('the estimate: head on this device + bytes and frame header at the rate + the link fixed part + tail', () => {
  // 1 Mbit/s = 125 bytes a ms: 0.3 + 2 + 416 / 125 + 0.6.
  assert.ok(Math.abs(predictedMs(points[0], link(1), compute.pool1) - (0.3 + 2 + 416 / 125 + 0.6)) < 1e-9);
  // Without compute, the fixed part holds it (a folder of one split point, as before).
  assert.equal(predictedMs(points[0], link(1)), 2 + 416 / 125);
});

test('NaviSplit picks the earlier split point on a fast link and the later one as bandwidth falls', () => {
  const budget = 6;
  assert.equal(pick(100, budget), 'pool1 8x4');
  assert.equal(pick(10, budget), 'pool1 8x4');
  // 1 Mbit/s: pool1 takes 6.23 ms, pool2's 8 channels 4.56 ms.
  assert.equal(pick(1, budget), 'pool2 8x4');
  // 0.1 Mbit/s: only pool2's 1-channel bottleneck (5.61 ms) fits.
  assert.equal(pick(0.1, budget), 'pool2 1x2');
  // Nothing fits: the fastest.
  assert.equal(pick(0.01, budget), 'pool2 1x2');
});

test('the compute at both ends counts: a budget the link alone would meet at pool1 takes pool2 instead', () => {
  // 10 Mbit/s, 3 ms: pool1 is 2.33 ms on the link but 3.23 ms with its head and tail; pool2's 8 channels 2.98 ms.
  assert.equal(choosePoint(points, link(10), 3).at, 'pool1');
  assert.equal(pick(10, 3), 'pool2 8x4');
  // Equal accuracy goes to the faster point.
  const twins = [{ ...points[0], accuracy: 0.8 }, { ...points[1], accuracy: 0.8 }];
  assert.equal(choosePoint(twins, link(100), 100, computeOf).at, 'pool2');
  assert.throws(() => choosePoint([], link(1), 1), /no bottleneck to choose from/);
});

test('compute costs: a seed until the first time, then the median of the last times (the lower middle); nothing seen is 0', () => {
  const c = new ComputeCosts(4);
  assert.deepEqual(c.of('pool1'), { headMs: 0, tailMs: 0 });
  c.seed('pool1', 'headMs', 4);
  c.seed('pool1', 'headMs', 9);
  assert.deepEqual(c.of('pool1'), { headMs: 4, tailMs: 0 });
  c.observe('pool1', 'headMs', 2);
  c.observe('pool1', 'headMs', 3);
  c.observe('pool1', 'tailMs', 1);
  assert.deepEqual(c.of('pool1'), { headMs: 3, tailMs: 1 });
  // A run slowed by load moves nothing; the window keeps the last 4 times.
  c.observe('pool1', 'headMs', 100);
  assert.equal(c.of('pool1').headMs, 3);
  for (const ms of [5, 5, 5]) c.observe('pool1', 'headMs', ms);
  assert.equal(c.of('pool1').headMs, 5);
  assert.deepEqual(c.of('pool2'), { headMs: 0, tailMs: 0 });
});
