import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import type { Network } from '../models/network.js';
import { RoutingState } from './context.js';
import { GatedDenseUnit } from './dense.js';
import { GatedResidualBlock } from './residual.js';
import { decisionForms } from './unit.js';
import { gatedDenseTestNet, gatedTestNet, testBatch } from './fixtures.js';
import { flatLayout, gradientStep } from '../train/step.js';

before(async () => {
  await initEngine('wasm');
});

const nets: [string, () => Network, string[], typeof GatedResidualBlock | typeof GatedDenseUnit][] = [
  ['residual', () => gatedTestNet('acs-gn', 4, 'channel'), ['b1', 'b2'], GatedResidualBlock],
  ['dense', () => gatedDenseTestNet('acs-gn', 4, 'channel'), ['u1', 'u2'], GatedDenseUnit],
];

/** Channel logits spread around 0 by the input, so samples keep different channels. */
function spreadChannels(net: Network): void {
  for (const w of net.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.zeros(w.variable.shape));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 40, 'float32', 13));
  }
}

test('decision forms are a registry: nested (sliced) and channel (masked); an unknown one is named', () => {
  assert.deepEqual(decisionForms.list(), ['channel', 'nested']);
  assert.equal(decisionForms.get('channel').masked, true);
  assert.equal(decisionForms.get('nested').masked, false);
  assert.throws(() => decisionForms.get('nope'), /unknown decision form "nope"; expected one of channel, nested/);
});

for (const [kind, make, units, Unit] of nets) {
  test(`${kind}, channel decisions: one logit and one decision per inner channel, run masked on the whole batch, FLOPs of the channels on`, () => {
    const net = make();
    spreadChannels(net);
    const x = tf.tidy(() => tf.mul(tf.randomNormal([6, 8, 8, 2], 0, 1, 'float32', 5), tf.reshape(tf.linspace(0.2, 3, 6), [6, 1, 1, 1])));
    const unit = net.layers.find((l) => l.name === units[0]) as GatedResidualBlock | GatedDenseUnit;
    const C = unit.groups * unit.groupWidth;
    assert.deepEqual(net.weights().find((w) => w.name === `${units[0]}.gate.fc.bias`)!.variable.shape, [C]);
    const before = tf.memory().numTensors;
    const routing = RoutingState.start('hard', 6, { threshold: 0.5 });
    const calls: number[][] = [];
    const proto = Unit.prototype as unknown as { runAt: (...a: unknown[]) => tf.Tensor };
    const runAt = proto.runAt;
    proto.runAt = function (...a: unknown[]) {
      calls.push([(a[0] as tf.Tensor).shape[0], (a[4] as tf.Tensor).shape[3] as number]);
      return runAt.apply(this, a);
    };
    try {
      tf.tidy(() => {
        net.forward(x, net.plan(1), { routing });
      });
    } finally {
      proto.runAt = runAt;
    }
    assert.deepEqual(calls[0], [6, C], 'the masked form: every sample, every inner channel, once');
    const on = routing.decisions.get(units[0])!;
    assert.ok(new Set(on).size > 1 && on.every((k) => k >= 0 && k <= C), `channels on per sample: ${on}`);
    assert.ok(on.some((k) => k % unit.groupWidth !== 0), `decisions are per channel, not per group (${on})`);
    // A sample pays for each gate and the channels it keeps, as if they alone ran (what the paper counts).
    const paid = units.map((name) => {
      const u = net.layers.find((l) => l.name === name) as GatedResidualBlock | GatedDenseUnit;
      const costs = net.cost(1).layers.filter((c) => c.routed === name);
      const sum = (gate: boolean) => costs.filter((c) => (c.gate ?? false) === gate).reduce((a, c) => a + c.macs, 0);
      return { gate: sum(true), perChannel: sum(false) / (u.groups * u.groupWidth), on: routing.decisions.get(name)! };
    });
    for (let i = 0; i < 6; i++) {
      const want = paid.reduce((a, p) => a + p.gate + p.on[i] * p.perChannel, 0);
      assert.ok(Math.abs(routing.executedMacs[i] - want) < 1e-3, `sample ${i}: ${routing.executedMacs[i]} vs ${want}`);
    }
    assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
    // Threshold 0 keeps every channel (the plain network), 1 none.
    const all = RoutingState.start('hard', 6, { threshold: 0 });
    const none = RoutingState.start('hard', 6, { threshold: 1 });
    tf.tidy(() => {
      const a = net.forward(x, net.plan(1), { routing: all });
      assert.ok(tf.max(tf.abs(tf.sub(a, net.forward(x, net.plan(1))))).dataSync()[0] < 1e-4);
      net.forward(x, net.plan(1), { routing: none });
    });
    assert.ok(all.decisions.get(units[0])!.every((k) => k === C));
    assert.ok(none.decisions.get(units[0])!.every((k) => k === 0));
    x.dispose();
    net.dispose();
  });

  test(`${kind}, channel decisions in soft mode: straight-through gradients reach the gates with either estimator, no leak`, () => {
    const net = make();
    const layout = flatLayout(net);
    const { images, labels } = testBatch();
    const grads = new Float32Array(layout.total);
    const i = layout.names.indexOf(`${units[0]}.gate.fc.bias`);
    const before = tf.memory().numTensors;
    for (const estimator of ['sigmoid', 'gumbel'] as const) {
      const r = gradientStep(net, layout, images, labels, { plans: [net.plan(1)], routing: { mode: 'soft', seed: 3, efficiency: { target: 0.2, weight: 10 }, estimator } }, grads);
      assert.ok(r.flopsRatio !== undefined && r.flopsRatio > 0.2, `${estimator}: ${r.flopsRatio}`);
      const g = Array.from(grads.subarray(layout.offsets[i], layout.offsets[i] + layout.sizes[i]));
      assert.ok(g.every((v) => v > 0), `${estimator}: above the target every channel's logit is pushed down (${g.slice(0, 4)})`);
    }
    assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
    net.dispose();
  });
}
