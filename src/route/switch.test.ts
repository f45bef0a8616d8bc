import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { fullSel } from '../layers/index.js';
import type { RunContext } from '../layers/index.js';
import { staticPlan } from '../models/network.js';
import { RoutingState } from './context.js';
import { nestedCounts } from './count.js';
import { mechanisms } from './mechanisms.js';
import { routeLoss, routeProbability, routeSwitch, smallestRight, type Switch } from './switch.js';
import { gateMacsOf } from './unit.js';

before(async () => {
  await initEngine('wasm');
});

const K = 4;
const ROUTE_MACS = [10, 20, 40, 80];

/** A switch with an acs-gn gate on 4x4x3 features, its logits spread by the input. */
function testSwitch(): Switch {
  const gate = mechanisms.get('acs-gn').gate('sw.gate', { outputs: K - 1, width: 4 });
  gate.build([4, 4, 3], 0);
  for (const w of gate.weights()) {
    if (w.name.endsWith('.fc.bias')) w.variable.assign(tf.tensor1d([1, 0, -0.5]));
    if (w.name.endsWith('.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 30, 'float32', 7));
  }
  return { name: 'sw', gate, routes: K };
}

const ctxOf = (routing?: RoutingState): RunContext => ({ plan: staticPlan(), training: false, routing });

/** Route k: scores [rows, 3] from the channel means, scaled by k + 1, so routes differ. */
const route = (k: number, part: tf.Tensor) => tf.mul(tf.mean(part, [1, 2]), k + 1);

function inputs(n: number): tf.Tensor4D {
  return tf.tidy(() => tf.mul(tf.randomNormal([n, 4, 4, 3], 0, 1, 'float32', 3), tf.reshape(tf.linspace(0.1, 3, n), [n, 1, 1, 1])));
}

test('hard: each route runs once on exactly its rows, outputs in input order, routes by the shared count rule, costs recorded', () => {
  const sw = testSwitch();
  const x = inputs(12);
  const before = tf.memory().numTensors;
  const routing = RoutingState.start('hard', 12, { threshold: 0.5 });
  const calls: [number, number][] = [];
  const y = tf.tidy(() =>
    routeSwitch(sw, x, fullSel(3), ctxOf(routing), ROUTE_MACS, (k, part) => {
      calls.push([k, part.shape[0]]);
      return route(k, part);
    }),
  );
  const routes = routing.decisions.get('sw')!;
  const logits = tf.tidy(() => sw.gate.call(x, fullSel(3), ctxOf()).y);
  assert.deepEqual(Array.from(routes), Array.from(nestedCounts(logits.dataSync(), K - 1, 0.5)), 'the count rule ONNX Runtime uses');
  logits.dispose();
  assert.ok(new Set(routes).size > 1, `samples spread over routes (${routes})`);
  const present = [...new Set(routes)].sort();
  assert.deepEqual(calls.map((c) => c[0]), present, 'each route present runs once');
  assert.deepEqual(calls.map((c) => c[1]), present.map((k) => routes.filter((r) => r === k).length), 'on exactly its rows: no full-batch pass, no mask');
  const got = y.arraySync() as number[][];
  for (let i = 0; i < 12; i++) {
    const alone = tf.tidy(() => route(routes[i], tf.slice(x, [i, 0, 0, 0], [1, 4, 4, 3])).arraySync() as number[][]);
    alone[0].forEach((v, c) => assert.ok(Math.abs(v - got[i][c]) < 1e-5, `sample ${i}: ${v} vs ${got[i][c]}`));
  }
  const gateMacs = gateMacsOf(sw.gate, fullSel(3));
  assert.ok(gateMacs > 0);
  routes.forEach((k, i) => assert.equal(routing.executedMacs[i], gateMacs + ROUTE_MACS[k]));
  y.dispose();
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  // Threshold 0 sends every sample down the last route, 1 down the first.
  for (const [threshold, want] of [[0, K - 1], [1, 0]] as const) {
    const r = RoutingState.start('hard', 12, { threshold });
    tf.tidy(() => routeSwitch(sw, x, fullSel(3), ctxOf(r), ROUTE_MACS, route));
    assert.ok(r.decisions.get('sw')!.every((k) => k === want), `threshold ${threshold}`);
  }
  x.dispose();
});

test('masked (timing only): the decisions are recorded but every row runs the last route, once', () => {
  const sw = testSwitch();
  const x = inputs(6);
  const routing = RoutingState.start('masked', 6, { threshold: 0.5 });
  const calls: [number, number][] = [];
  tf.tidy(() => routeSwitch(sw, x, fullSel(3), ctxOf(routing), ROUTE_MACS, (k, part) => (calls.push([k, part.shape[0]]), route(k, part))));
  assert.deepEqual(calls, [[K - 1, 6]]);
  assert.equal(routing.decisions.get('sw')!.length, 6);
  x.dispose();
});

test('soft: the gate learns from the task loss (straight-through factor), the efficiency term and the supervised gate loss', () => {
  const sw = testSwitch();
  const x = inputs(8);
  const vars = sw.gate.weights().filter((w) => w.trainable).map((w) => w.variable);
  const bias = vars.find((v) => v.name.includes('fc.bias') || v.shape.length === 1 && v.shape[0] === K - 1)!;
  const before = tf.memory().numTensors;
  const gradOf = (loss: (routing: RoutingState, y: tf.Tensor) => tf.Scalar, labels?: number[]) =>
    tf.tidy(() => {
      const routing = RoutingState.start('soft', 8, { seed: 1, labels });
      const { grads } = tf.variableGrads(() => loss(routing, routeSwitch(sw, x, fullSel(3), ctxOf(routing), ROUTE_MACS, route, { supervise: labels ? 1 : 0 })), vars);
      return Array.from(grads[bias.name].dataSync());
    });
  // Task: a loss of the output reaches the gate through P(route = k).
  const task = gradOf((_, y) => tf.sum(y));
  assert.ok(task.some((g) => g !== 0), `task gradient ${task}`);
  // Efficiency above a low target pushes every logit down (toward cheaper routes).
  const eff = gradOf((routing, y) => {
    routing.addEfficiencyLoss(0, 100, { target: 0.05, weight: 10 });
    return tf.add(tf.mul(0, tf.sum(y)), routing.losses[0].value) as tf.Scalar;
  });
  assert.ok(eff.every((g) => g > 0), `efficiency gradient ${eff}`);
  // Supervision: labels that route 0 (scale 1) already gets right make route 0 every sample's target, so the
  // gate loss pushes the first logit down (-log(1 - sigmoid(z_0))) and leaves the later ones alone.
  const labels = tf.tidy(() => Array.from(tf.argMax(route(0, x), 1).dataSync()));
  let names: string[] = [];
  const sup = gradOf((routing, y) => {
    names = routing.losses.map((l) => l.name);
    return tf.add(tf.mul(0, tf.sum(y)), routing.losses[0].value) as tf.Scalar;
  }, labels);
  assert.deepEqual(names, ['gate']);
  assert.ok(sup[0] > 0 && sup.slice(1).every((g) => g === 0), `supervised gradient ${sup}`);
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  x.dispose();
});

test('routeProbability sums to 1 over the routes; routeLoss is -mean log P(target); smallestRight picks the first right route', () => {
  tf.tidy(() => {
    const z = tf.tensor2d([[0.3, -1, 2], [-2, 0.5, 0]]);
    const q = tf.exp(tf.cumsum(tf.log(tf.sigmoid(z)), 1)) as tf.Tensor2D;
    const p: number[][] = Array.from({ length: K }, (_, k) => Array.from(routeProbability(q, k).dataSync()));
    [0, 1].forEach((i) => assert.ok(Math.abs(p.reduce((a, r) => a + r[i], 0) - 1) < 1e-6));
    const targets = Int32Array.from([2, 3]);
    const want = -(Math.log(p[2][0]) + Math.log(p[3][1])) / 2;
    assert.ok(Math.abs(routeLoss(z, targets).dataSync()[0] - want) < 1e-5);
    assert.throws(() => routeLoss(z, Int32Array.from([4, 0])), /target route 4 of row 0 is not one of 0..3/);
  });
  assert.deepEqual(Array.from(smallestRight([[false, false, true], [true, false, false], [true, true, false]], 3)), [1, 2, 0]);
});

test('a gate or costs that do not match the routes are refused by name', () => {
  const sw = testSwitch();
  const x = inputs(2);
  const routing = RoutingState.start('hard', 2);
  assert.throws(() => tf.tidy(() => routeSwitch(sw, x, fullSel(3), ctxOf(routing), [1, 2], route)), /sw: 2 route costs for 4 routes/);
  assert.throws(() => tf.tidy(() => routeSwitch({ ...sw, routes: 3 }, x, fullSel(3), ctxOf(routing), [1, 2, 3], route)), /sw: the gate gives 3 logits; 3 routes need 2/);
  assert.throws(() => tf.tidy(() => routeSwitch(sw, x, fullSel(3), ctxOf(RoutingState.start('full', 2)), ROUTE_MACS, route)), /sw: routeSwitch needs gates that decide/);
  x.dispose();
});
