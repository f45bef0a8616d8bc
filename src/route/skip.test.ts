import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { Conv2D } from '../layers/index.js';
import { RoutingState } from './context.js';
import { GatedResidualBlock } from './residual.js';
import { mechanisms } from './mechanisms.js';
import { fitGateRates } from '../train/calibrate.js';
import { evaluateRouted } from '../eval/routed.js';
import type { ImageSet } from '../data/types.js';

before(async () => {
  await initEngine('wasm');
});

/** A small resnet-d (or resnet38) whose blocks a whole-block mechanism gates, on 8x8x1 inputs in 3 classes. */
function skipNet(mechanism = 'skip', model = 'resnet-d'): Network {
  const args = model === 'resnet-d' ? { width: 4, blocksPerStage: 2 } : { widths: [4, 8, 8], blocksPerStage: 2 };
  return createModel(model, { ...args, inputShape: [8, 8, 1], numClasses: 3, dynamic: mechanism, gateWidth: 4 });
}

/** Gates whose logits vary with the input: random output kernels, zero bias. */
function spreadGates(net: Network): void {
  for (const w of net.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.zerosLike(w.variable));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 3, 'float32', 7));
  }
}

/** `n` deterministic 8x8 images in 3 classes. */
function images(n: number): ImageSet {
  const px = Uint8Array.from({ length: n * 64 }, (_, i) => Math.floor(128 + 127 * Math.sin(i * 0.61 + Math.floor(i / 64) * 1.3)) % 256);
  return { images: px, labels: Uint8Array.from({ length: n }, (_, i) => i % 3), count: n, height: 8, width: 8, channels: 1 };
}

const inputs = (n: number, seed = 5) => tf.tidy(() => tf.mul(tf.randomNormal([n, 8, 8, 1], 0, 1, 'float32', seed), tf.reshape(tf.linspace(0.1, 3, n), [n, 1, 1, 1])));

test('skip mechanisms gate whole blocks that keep their shape; downsampling blocks always run', () => {
  assert.ok(['skip', 'skip-ff'].every((m) => mechanisms.list().includes(m) && mechanisms.get(m).skipsBlocks));
  for (const [model, gated] of [
    ['resnet-d', ['s0.b0', 's0.b1', 's1.b0', 's1.b1', 's2.b0', 's2.b1']],
    ['resnet38', ['s0.b0', 's0.b1', 's1.b1', 's2.b1']],
  ] as const) {
    for (const m of ['skip', 'skip-ff']) {
      const net = skipNet(m, model);
      const blocks = net.layers.filter((l): l is GatedResidualBlock => l instanceof GatedResidualBlock);
      assert.deepEqual(blocks.map((b) => b.name), gated, `${model} ${m}`);
      assert.ok(blocks.every((b) => b.groups === 1));
      assert.equal(net.numLevels, 2);
      net.dispose();
    }
  }
  // resnet-d takes channel skipping too: its depth-gated blocks become ACS's gated blocks of G groups.
  const acs = createModel('resnet-d', { width: 8, inputShape: [8, 8, 1], numClasses: 3, dynamic: 'acs-gn', groups: 4 });
  assert.deepEqual(acs.layers.filter((l): l is GatedResidualBlock => l instanceof GatedResidualBlock).map((b) => b.groups), [4, 4, 4, 4, 4, 4]);
  const routing = RoutingState.start('hard', 2);
  tf.tidy(() => {
    acs.forward(tf.ones([2, 8, 8, 1]), acs.plan(1), { routing });
  });
  assert.equal(routing.decisions.size, 6);
  acs.dispose();
  assert.throws(() => createModel('vgg-w', { dynamic: 'skip' }), /--dynamic skip skips residual blocks; vgg-w has no blocks to skip \(expected one of resnet-d, resnet38\)/);
  assert.throws(() => createModel('densenet41', { dynamic: 'skip-ff' }), /densenet41 has no blocks to skip/);
  assert.throws(() => createModel('resnet-d', { dynamic: 'skipnet' }), /unknown mechanism "skipnet"; expected one of acs-dg, acs-gn, branch, moe, resolution, skip, skip-ff, spatial, width/);
});

test('hard routing: a skipped block is the identity and is not computed; each block processes only the rows that execute it', () => {
  for (const m of ['skip', 'skip-ff']) {
    const net = skipNet(m);
    spreadGates(net);
    // Every gate runs half of these images: the batch below is split at every block.
    fitGateRates(net, images(64), { target: 0.5 });
    const n = 16;
    const x = inputs(n);
    const before = tf.memory().numTensors;
    // Count the rows each gated block's main path (its conv1) really processes.
    const rows = new Map<string, number>();
    const proto = Conv2D.prototype as unknown as { call: (...a: unknown[]) => unknown };
    const call = proto.call;
    proto.call = function (this: Conv2D, ...a: unknown[]) {
      if (/^s\d\.b\d\.conv1$/.test(this.name)) rows.set(this.name, (rows.get(this.name) ?? 0) + (a[0] as tf.Tensor).shape[0]);
      return call.apply(this, a);
    };
    const routing = RoutingState.start('hard', n);
    let y: tf.Tensor2D;
    try {
      y = tf.tidy(() => net.forward(x, net.plan(1), { routing }));
    } finally {
      proto.call = call;
    }
    const decided = [...routing.decisions];
    assert.equal(decided.length, 6);
    for (const [block, d] of decided) {
      const runs = d.reduce((a, k) => a + k, 0);
      assert.equal(rows.get(`${block}.conv1`) ?? 0, runs, `${m} ${block}: conv1 ran on ${rows.get(`${block}.conv1`)} rows, ${runs} execute it`);
    }
    const all = decided.flatMap(([, d]) => [...d]);
    assert.ok(all.includes(0) && all.includes(1), 'the gates both skip and run blocks');
    // Each sample alone takes the same decisions and gets the same scores.
    const scores = y!.arraySync();
    for (let i = 0; i < n; i++) {
      const alone = RoutingState.start('hard', 1);
      const s = tf.tidy(() => net.forward(tf.slice(x, [i, 0, 0, 0], [1, 8, 8, 1]), net.plan(1), { routing: alone }).arraySync()[0]);
      for (const [block, d] of alone.decisions) assert.equal(d[0], routing.decisions.get(block)![i]);
      s.forEach((v, c) => assert.ok(Math.abs(v - scores[i][c]) < 1e-4, `${m} sample ${i}: ${v} vs ${scores[i][c]}`));
    }
    // A skipped block's FLOPs are not counted: executed MACs = fixed + gates + executed blocks.
    const { fixed } = net.routedMacs(1);
    const blockMacs = new Map(net.layers.filter((l) => l instanceof GatedResidualBlock).map((b) => [b.name, net.cost(1).layers.filter((c) => c.routed === b.name && !c.gate).reduce((a, c) => a + c.macs, 0)]));
    const gateMacs = net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
    for (let i = 0; i < n; i++) {
      const want = gateMacs + decided.reduce((a, [b, d]) => a + d[i] * blockMacs.get(b)!, 0);
      assert.ok(Math.abs(routing.executedMacs[i] - want) < 1e-6 * want, `sample ${i}`);
    }
    assert.ok(fixed > 0);
    y!.dispose();
    assert.equal(tf.memory().numTensors, before);
    x.dispose();
    net.dispose();
  }
});

test('the rate term: weight * mean over gates of (execution rate - target)^2, its gradient pulling each gate toward the target', () => {
  const net = skipNet('skip');
  const n = 32;
  const x = inputs(n, 9);
  const before = tf.memory().numTensors;
  const term = mechanisms.get('skip').efficiency;
  assert.equal(term.option, 'skipTarget');
  // Gates start open (logit 5): every block runs, so the term pushes every gate's logit down.
  const biases = net.weights().filter((w) => w.name.endsWith('.gate.fc.bias'));
  let measured = NaN;
  let rates: number[] = [];
  const { value, grads } = tf.variableGrads(() => {
    const routing = RoutingState.start('soft', n, { seed: 3, estimator: 'gumbel' });
    net.forward(x, net.plan(1), { training: true, routing });
    measured = term.add(routing, net.routedMacs(1), { target: 0.25, weight: 2 });
    rates = Object.values(routing.skipRates()).map((s) => 1 - s);
    return routing.losses[0].value;
  }, biases.map((w) => w.variable));
  const want = (2 * rates.reduce((a, r) => a + (r - 0.25) ** 2, 0)) / rates.length;
  assert.ok(Math.abs(value.dataSync()[0] - want) < 1e-5, `${value.dataSync()[0]} vs ${want}`);
  assert.ok(Math.abs(measured - rates.reduce((a, r) => a + r, 0) / rates.length) < 1e-6);
  for (const w of biases) assert.ok(grads[w.variable.name].dataSync()[0] > 0, `${w.name}: descending lowers the logit`);
  tf.dispose([value, ...Object.values(grads)]);
  // No rate term outside soft mode.
  const hard = RoutingState.start('hard', n);
  tf.tidy(() => {
    net.forward(x, net.plan(1), { routing: hard });
  });
  assert.ok(Number.isNaN(term.add(hard, net.routedMacs(1), { target: 0.25, weight: 2 })));
  assert.equal(tf.memory().numTensors, before);
  x.dispose();
  net.dispose();
});

test('fitGateRates: with deterministic gates every gate executes the target share of the samples', () => {
  const net = skipNet('skip');
  spreadGates(net);
  const n = 64;
  const data = images(n);
  const before = tf.memory().numTensors;
  const rates = fitGateRates(net, data, { target: 0.375, samples: n });
  assert.equal(Object.keys(rates).length, 6);
  for (const [gate, r] of Object.entries(rates)) assert.ok(Math.abs(r - 0.375) <= 0.5 / n, `${gate}: ${r}`);
  // evaluateRouted measures the same on those samples.
  const e = evaluateRouted(net, data);
  const mean = 1 - Object.values(e.skipRates).reduce((a, s) => a + s, 0) / 6;
  assert.ok(Math.abs(mean - 0.375) <= 2 / n, `inference execution rate ${mean}`);
  assert.equal(tf.memory().numTensors, before);
  net.dispose();
});
