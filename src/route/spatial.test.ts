import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { BatchNorm, Conv2D, fullSel } from '../layers/index.js';
import type { RunContext } from '../layers/index.js';
import { RoutingState } from './context.js';
import { mechanisms } from './mechanisms.js';
import { innerContext } from './unit.js';
import { SpatialResidualBlock, dilate3, inverseIndex, nonzero, patchIndex } from './spatial.js';
import { evaluateRouted } from '../eval/routed.js';
import { fitGateRates } from '../train/calibrate.js';

before(async () => {
  await initEngine('wasm');
});

/** A small resnet-d (or resnet38) whose shape-keeping blocks compute only the positions their gates select. */
function spatialNet(model = 'resnet-d'): Network {
  const args = model === 'resnet-d' ? { width: 4, blocksPerStage: 2 } : { widths: [4, 8, 8], blocksPerStage: 2 };
  return createModel(model, { ...args, inputShape: [8, 8, 1], numClasses: 3, dynamic: 'spatial' });
}

/** Gates whose logits vary over positions and samples (random kernels, bias `bias`), and BatchNorm statistics that are not the identity. */
function spreadGates(net: Network, bias = 0): void {
  tf.tidy(() => {
    for (const w of net.weights()) {
      if (w.name.endsWith('.gate.bias')) w.variable.assign(tf.fill(w.variable.shape, bias));
      if (w.name.endsWith('.gate.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 2, 'float32', 7));
      if (w.name.endsWith('.running_mean')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 0.3, 'float32', 3));
      if (w.name.endsWith('.running_var')) w.variable.assign(tf.randomUniform(w.variable.shape, 0.5, 2, 'float32', 4));
    }
  });
}

const blocksOf = (net: Network) => net.layers.filter((l): l is SpatialResidualBlock => l instanceof SpatialResidualBlock);

/** A batch of non-negative maps (a block's input follows a ReLU) of `shape`. */
const maps = (shape: number[], seed = 5) => tf.tidy(() => tf.relu(tf.randomNormal(shape, 0, 1, 'float32', seed)));

test('index arithmetic: the dilated mask, the inverse index and the 3x3 patch rows with the zero row outside the map', () => {
  // One 3x4 map, position (1, 3) selected: its 3x3 neighbourhood clipped at the right edge.
  const on = new Uint8Array(12);
  on[1 * 4 + 3] = 1;
  assert.deepEqual([...dilate3(on, 1, 3, 4)], [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]);
  const rows = nonzero(dilate3(on, 1, 3, 4));
  assert.deepEqual([...rows], [2, 3, 6, 7, 10, 11]);
  assert.deepEqual([...inverseIndex(rows, 12)], [6, 6, 0, 1, 6, 6, 2, 3, 6, 6, 4, 5]);
  // Patches of (1, 3) as rows of the dilated positions: the right column is padding (row 6).
  assert.deepEqual([...patchIndex(Int32Array.of(7), 3, 4, inverseIndex(rows, 12), 6)], [0, 1, 6, 2, 3, 6, 4, 5, 6]);
  // Two samples: the second map's positions start at 12; nothing crosses from one map to the next.
  const two = new Uint8Array(24);
  two[12] = 1;
  assert.deepEqual([...nonzero(dilate3(two, 2, 3, 4))], [12, 13, 16, 17]);
});

test('spatial gates the residual blocks that keep their shape; the mechanism is registered with its own target and refuses other models', () => {
  const m = mechanisms.get('spatial');
  assert.ok(m.spatial && m.efficiency.option === 'spatialTarget' && m.efficiency.flag === '--spatial-target' && m.defaults.estimator === 'gumbel');
  for (const [model, gated] of [
    ['resnet-d', ['s0.b0', 's0.b1', 's1.b0', 's1.b1', 's2.b0', 's2.b1']],
    ['resnet38', ['s0.b0', 's0.b1', 's1.b1', 's2.b1']],
  ] as const) {
    const net = spatialNet(model);
    assert.deepEqual(blocksOf(net).map((b) => b.name), gated, model);
    assert.equal(net.numLevels, 2);
    assert.ok(net.gated);
    net.dispose();
  }
  assert.throws(() => createModel('vgg-w', { dynamic: 'spatial' }), /--dynamic spatial gates the positions of residual blocks; vgg-w has no blocks to gate \(expected one of resnet-d, resnet38\)/);
  assert.throws(() => createModel('resnet-d', { dynamic: 'spatial', decisions: 'channel' }), /--dynamic spatial decides positions: it takes --decisions nested only/);
});

/** The block on `x` at BatchNorm row 1 (its one group), with `routing` or dense. */
function runBlock(net: Network, block: SpatialResidualBlock, x: tf.Tensor, routing?: RoutingState, training = false): tf.Tensor {
  const ctx: RunContext = { plan: net.plan(1), training, routing };
  // Dense: the plain block at its group's BatchNorm row, as the sparse path normalizes.
  const c = routing ? ctx : innerContext(ctx, block, 1);
  return block.call(x, fullSel(x.shape[3]!), c).y;
}

test('hard routing: the selected positions equal the dense block, the others are the identity; each conv computes only the positions it needs', () => {
  const net = spatialNet();
  spreadGates(net);
  const block = blocksOf(net)[2]; // s1.b0: 4x4 positions, 8 channels
  const n = 5;
  const x = maps([n, ...block.inShape]);
  const before = tf.memory().numTensors;
  // What the block's layers really process: the rows reaching each BatchNorm, and any dense convolution.
  const rows = new Map<string, number>();
  const dense: string[] = [];
  const bn = BatchNorm.prototype as unknown as { call: (...a: unknown[]) => unknown };
  const conv = Conv2D.prototype as unknown as { call: (...a: unknown[]) => unknown };
  const [bnCall, convCall] = [bn.call, conv.call];
  bn.call = function (this: BatchNorm, ...a: unknown[]) {
    rows.set(this.name, (a[0] as tf.Tensor).shape[0]);
    return bnCall.apply(this, a);
  };
  conv.call = function (this: Conv2D, ...a: unknown[]) {
    dense.push(this.name);
    return convCall.apply(this, a);
  };
  const routing = RoutingState.start('hard', n);
  let sparse: number[][][][];
  try {
    sparse = tf.tidy(() => runBlock(net, block, x, routing).arraySync() as number[][][][]);
  } finally {
    bn.call = bnCall;
    conv.call = convCall;
  }
  const full = tf.tidy(() => runBlock(net, block, x).arraySync() as number[][][][]);
  const logits = tf.tidy(() => block.gate.call(x, fullSel(8), { plan: net.plan(1), training: false }).y.dataSync());
  const on = Uint8Array.from(logits, (z) => (1 / (1 + Math.exp(-z)) > 0.5 ? 1 : 0));
  const selected = on.reduce((a, v) => a + v, 0);
  const needed = dilate3(on, n, 4, 4).reduce((a, v) => a + v, 0);
  assert.ok(selected > 0.2 * on.length && selected < 0.8 * on.length, `a mixed mask (${selected} of ${on.length})`);
  assert.ok(needed > selected && needed < on.length, 'the dilation adds positions and leaves some out');
  // conv1 ran on the dilated positions, conv2 on the selected ones, and no convolution ran densely (the gate's is its own layer).
  assert.equal(rows.get('s1.b0.bn1'), needed);
  assert.equal(rows.get('s1.b0.bn2'), selected);
  assert.deepEqual(dense, []);
  const input = x.arraySync() as number[][][][];
  let checked = 0;
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < 4; y++) {
      for (let xx = 0; xx < 4; xx++) {
        const want = on[(b * 4 + y) * 4 + xx] ? full[b][y][xx] : input[b][y][xx];
        sparse![b][y][xx].forEach((v, c) => assert.ok(Math.abs(v - want[c]) < 1e-4, `sample ${b} (${y}, ${xx}) channel ${c}: ${v} vs ${want[c]}`));
        checked++;
      }
    }
  }
  assert.equal(checked, on.length);
  // Decisions and costs: positions computed per sample, and the MACs of what ran (gate, conv1 on the dilated positions, conv2).
  const decided = routing.decisions.get('s1.b0')!;
  const per = block.positionMacs(fullSel(8));
  const gateMacs = 16 * 8;
  for (let b = 0; b < n; b++) {
    const mask = on.subarray(b * 16, (b + 1) * 16);
    assert.equal(decided[b], mask.reduce((a, v) => a + v, 0));
    const want = gateMacs + dilate3(mask, 1, 4, 4).reduce((a, v) => a + v, 0) * per.conv1 + decided[b] * per.conv2;
    assert.equal(routing.executedMacs[b], want);
  }
  assert.equal(routing.fullRoutes.get('s1.b0'), 16);
  // The masked baseline computes every position and multiplies: the same output.
  const masked = tf.tidy(() => runBlock(net, block, x, RoutingState.start('masked', n)).dataSync());
  const flat = sparse!.flat(3);
  masked.forEach((v, i) => assert.ok(Math.abs(v - flat[i]) < 1e-4));
  assert.equal(tf.memory().numTensors, before);
  x.dispose();
  net.dispose();
});

test('a batch where no position, or every position, is selected works', () => {
  const net = spatialNet();
  const block = blocksOf(net)[0];
  const n = 3;
  const x = maps([n, ...block.inShape], 8);
  const before = tf.memory().numTensors;
  for (const [bias, count] of [[-30, 0], [30, 64]] as const) {
    spreadGates(net, bias);
    const routing = RoutingState.start('hard', n);
    const y = tf.tidy(() => runBlock(net, block, x, routing).dataSync());
    const want = tf.tidy(() => (count ? runBlock(net, block, x) : x).dataSync());
    y.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-4, `bias ${bias}: ${v} vs ${want[i]}`));
    assert.deepEqual([...routing.decisions.get(block.name)!], [count, count, count]);
    const perSample = 64 * 4 + count * (block.positionMacs(fullSel(4)).conv1 + block.positionMacs(fullSel(4)).conv2);
    assert.deepEqual([...routing.executedMacs], [perSample, perSample, perSample]);
  }
  // Soft mode with every gate shut still gives the gates a gradient (the rate term) and no tensor leaks.
  spreadGates(net, -30);
  const term = mechanisms.get('spatial').efficiency;
  const xs = maps([n, 8, 8, 1], 2);
  const { value, grads } = tf.variableGrads(() => {
    const routing = RoutingState.start('soft', n, { seed: 1, estimator: 'gumbel' });
    const scores = net.forward(xs, net.plan(1), { training: true, routing });
    term.add(routing, net.routedMacs(1), { target: 0.5, weight: 1 });
    return tf.add(tf.mean(scores), routing.losses[0].value) as tf.Scalar;
  });
  assert.ok(Number.isFinite(value.dataSync()[0]));
  tf.dispose([value, ...Object.values(grads)]);
  xs.dispose();
  assert.equal(tf.memory().numTensors, before);
  x.dispose();
  net.dispose();
});

test('soft routing: gradients reach the gate through the computed positions and the rate term; BatchNorm uses the computed positions\' statistics; tensor counts flat', () => {
  const net = spatialNet();
  spreadGates(net);
  const n = 6;
  const x = maps([n, 8, 8, 1], 4);
  const labels = tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2], 'int32'), 3);
  const term = mechanisms.get('spatial').efficiency;
  const before = tf.memory().numTensors;
  const gateVars = net.weights().filter((w) => w.name.includes('.gate.')).map((w) => w.variable);
  for (const weight of [0, 4]) {
    let rate = NaN;
    let positions: number[] = [];
    const { value, grads } = tf.variableGrads(() => {
      const routing = RoutingState.start('soft', n, { seed: 2, estimator: 'gumbel' });
      const scores = net.forward(x, net.plan(1), { training: true, routing });
      rate = term.add(routing, net.routedMacs(1), { target: 0.25, weight });
      positions = Object.values(routing.skipRates()).map((s) => 1 - s);
      const task = tf.losses.softmaxCrossEntropy(labels, scores) as tf.Scalar;
      return tf.add(task, routing.losses[0].value) as tf.Scalar;
    }, gateVars);
    assert.equal(positions.length, 6);
    assert.ok(Math.abs(rate - positions.reduce((a, r) => a + r, 0) / 6) < 1e-5, 'the term measures the fraction of positions computed');
    // Every gate's kernel learns from the task (weight 0) as from the term.
    for (const v of gateVars) {
      const g = grads[v.name].dataSync();
      assert.ok(g.some((e) => e !== 0) && g.every(Number.isFinite), `${v.name} at weight ${weight}`);
    }
    tf.dispose([value, ...Object.values(grads)]);
  }
  // Training BatchNorm sees the computed rows only: their mean is its shift (beta, 0 at the start).
  const block = blocksOf(net)[0];
  const bnOut: number[] = [];
  const bn = BatchNorm.prototype as unknown as { call: (...a: unknown[]) => { y: tf.Tensor } };
  const call = bn.call;
  bn.call = function (this: BatchNorm, ...a: unknown[]) {
    const out = call.apply(this, a);
    if (this.name === `${block.name}.bn2`) bnOut.push(...tf.mean(out.y, 0).dataSync());
    return out;
  };
  try {
    tf.tidy(() => {
      runBlock(net, block, maps([n, ...block.inShape], 6), RoutingState.start('soft', n, { seed: 2, estimator: 'gumbel' }), true);
    });
  } finally {
    bn.call = call;
  }
  assert.equal(bnOut.length, 4);
  bnOut.forEach((m) => assert.ok(Math.abs(m) < 1e-4, `batch mean ${m}`));
  assert.equal(tf.memory().numTensors, before);
  labels.dispose();
  x.dispose();
  net.dispose();
});

test('evaluateRouted: the FLOPs ratio counts the positions computed; the gate at -30 leaves the gates and the fixed layers only; the gate fit meets a target per block', () => {
  const net = spatialNet();
  spreadGates(net);
  const n = 12;
  const data = {
    images: Uint8Array.from({ length: n * 64 }, (_, i) => Math.floor(128 + 127 * Math.sin(i * 0.61 + Math.floor(i / 64) * 1.3)) % 256),
    labels: Uint8Array.from({ length: n }, (_, i) => i % 3),
    count: n,
    height: 8,
    width: 8,
    channels: 1,
  };
  const before = tf.memory().numTensors;
  const e = evaluateRouted(net, data);
  assert.ok(e.flopsRatio > 0 && e.flopsRatio < 1);
  assert.deepEqual(Object.keys(e.skipRates), blocksOf(net).map((b) => b.name));
  spreadGates(net, -30);
  const shut = evaluateRouted(net, data);
  const { fixed, backbone } = net.routedMacs(1);
  const gates = net.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  assert.ok(Math.abs(shut.flopsRatio - (fixed + gates) / backbone) < 1e-9);
  Object.values(shut.skipRates).forEach((s) => assert.equal(s, 1));
  // The gate fit shifts each gate so that, deterministically, the target fraction of its positions is computed.
  const rates = fitGateRates(net, data, { target: 0.3, samples: n });
  assert.deepEqual(Object.keys(rates), blocksOf(net).map((b) => b.name));
  const fitted = evaluateRouted(net, data);
  for (const [block, s] of Object.entries(fitted.skipRates)) assert.ok(Math.abs(1 - s - 0.3) < 0.05, `${block} computes ${1 - s} of its positions`);
  assert.equal(tf.memory().numTensors, before);
  net.dispose();
});
