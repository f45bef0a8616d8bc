import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool, ReLU } from '../layers/index.js';
import type { Layer } from '../layers/index.js';
import { Network } from '../models/network.js';
import { createModel } from '../models/zoo.js';
import { RoutingState } from './context.js';
import { MoeBlock, type MoeArgs } from './moe.js';
import { MoeRouter } from './router.js';
import { fullSel } from '../layers/index.js';
import { assignExperts, stackPays, checkMixture, coefficientOfVariation, expertCapacity } from './experts.js';
import { DynnError } from '../util/errors.js';

before(async () => {
  await initEngine('wasm');
});

const E = 4;

/** A stem and a residual mixture of `E` conv experts on 6x6x2 inputs, 3 classes. */
function moeNet(args: Partial<MoeArgs> = {}, expert?: (prefix: string, i: number) => Layer[]): Network {
  const layers = [
    // A throttleable stem gives the network its plans.
    new Conv2D('stem.conv', { filters: 8, kernelSize: 3, groups: 2 }),
    new ReLU('stem.relu', {}),
    new MoeBlock('moe', { experts: E, residual: true, ...args }, expert ?? ((p) => [new Conv2D(`${p}.conv`, { filters: 8, kernelSize: 3 }), new BatchNorm(`${p}.bn`, { levels: 1 }), new ReLU(`${p}.relu`, {})])),
    new GlobalAvgPool('gap', {}),
    new Dense('classifier', { units: 3 }),
  ];
  return new Network({ model: 'test', args: { dynamic: 'moe' } }, [6, 6, 2], layers, 0);
}

const blockOf = (net: Network) => net.layers.find((l): l is MoeBlock => l instanceof MoeBlock)!;

/** Counts, per expert, the calls and rows its first layer ran (a mask-based mixture runs every expert on every row). */
function spyExperts(block: MoeBlock): { calls: number[]; rows: number[]; restore: () => void } {
  const calls = new Array<number>(block.experts).fill(0);
  const rows = new Array<number>(block.experts).fill(0);
  const firsts = block.expertChains.map((c) => c[0]);
  firsts.forEach((l, e) => {
    const call = l.call.bind(l);
    l.call = (x, sel, ctx) => {
      calls[e]++;
      rows[e] += x.shape[0];
      return call(x, sel, ctx);
    };
  });
  return { calls, rows, restore: () => firsts.forEach((l) => delete (l as Partial<Layer>).call) };
}

/** Router weights that spread samples over the experts by the input's scale. */
function spreadRouter(net: Network, bias = [0, 0, 0, 0]): void {
  tf.tidy(() => {
    for (const w of net.weights()) {
      if (w.name === 'moe.gate.fc.kernel') w.variable.assign(tf.randomNormal(w.variable.shape, 0, 3, 'float32', 7));
      if (w.name === 'moe.gate.fc.bias') w.variable.assign(tf.tensor1d([...bias, 0, 0, 0, 0]));
    }
  });
}

const input = (n: number) => tf.tidy(() => tf.mul(tf.randomNormal([n, 6, 6, 2], 0, 1, 'float32', 5), tf.reshape(tf.linspace(0.1, 3, n), [n, 1, 1, 1])));

test('assignExperts: top-k by score, first choices served first, capacity per expert, overflow dropped or moved on', () => {
  // Three samples all prefer expert 0, then 1.
  const h = [3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0];
  const free = assignExperts(h, 4, 2, 10, 'residual');
  assert.deepEqual([...free.experts], [0, 0, 0, 1, 1, 1]);
  assert.equal(free.overflowed, 0);
  const dropped = assignExperts(h, 4, 1, 2, 'residual');
  assert.deepEqual([...dropped.experts], [0, 0, -1], 'the third sample finds expert 0 full and passes through');
  assert.equal(dropped.overflowed, 1);
  const moved = assignExperts(h, 4, 1, 2, 'next');
  assert.deepEqual([...moved.experts], [0, 0, 1], 'it takes its next choice instead');
  assert.deepEqual([...moved.load], [2, 1, 0, 0]);
  // With k = 2, a moved slot never takes the expert the sample keeps for its second slot.
  const two = assignExperts(h, 4, 2, 2, 'next');
  assert.deepEqual([...two.experts], [0, 0, 2, 1, 1, 3], 'the third sample keeps expert 1 for its second slot, which is full by then');
  assert.equal(two.overflowed, 2);
  // Batch priority: the surest samples first. Sample 2 prefers expert 0 by the widest margin, sample 0 by the least.
  const sure = [1, 0.9, 0, 0, 3, 0, 0, 0, 6, 0, 0, 0];
  const byBatch = assignExperts(sure, 4, 1, 2, 'residual');
  assert.deepEqual([...byBatch.experts], [0, 0, -1], 'batch order: the last sample overflows');
  const byScore = assignExperts(sure, 4, 1, 2, 'residual', 'score');
  assert.deepEqual([...byScore.experts], [-1, 0, 0], 'score order: the least sure sample overflows');
  assert.deepEqual([...assignExperts(sure, 4, 1, 2, 'next', 'score').experts], [1, 0, 0], 'and takes its next choice');
  assert.throws(() => checkMixture(4, 1, [1], 'next', 'first'), /unknown routing priority "first"; expected one of batch, score/);
  // A score that is not finite would make the serving order depend on the engine's sort: refused.
  assert.throws(() => assignExperts([1, Infinity, 0, 0], 4, 1, 1, 'residual', 'score'), /the router's score of sample 0 for expert 1 is Infinity, not a finite number/);
  // One padded call where it pays: several experts busy, padding at most doubling the rows; a lone expert runs alone.
  assert.equal(stackPays([0, 1, 2, 3, 0, 1, 2, 3], 4), true);
  assert.equal(stackPays([2], 10), false, 'a batch of one');
  assert.equal(stackPays([0, 0, 0, 0, 0, 1], 4), false, '4 x 5 padded rows for 6');
  assert.equal(expertCapacity(1.25, 1, 64, 4), 20);
  assert.equal(expertCapacity(2, 1, 1, 10), 1, 'a batch of one always runs');
  assert.equal(coefficientOfVariation([5, 5, 5, 5]), 0);
  assert.ok(Math.abs(coefficientOfVariation([4, 0, 0, 0]) - Math.sqrt(3)) < 1e-12);
});

test('bad mixtures are refused by name: k > E, E or the capacity factor not positive, unknown overflow, experts that disagree', () => {
  assert.throws(() => checkMixture(4, 5), /top-k \(5\) cannot exceed the number of experts \(4\)/);
  assert.throws(() => checkMixture(0, 1), /the number of experts must be a positive integer, got 0/);
  assert.throws(() => checkMixture(4, 1, [0]), /the capacity factor must be a positive number, got 0/);
  assert.throws(() => checkMixture(4, 1, [1], 'drop'), /unknown overflow policy "drop"; expected one of residual, next/);
  assert.throws(() => createModel('vgg-moe', { topK: 5, experts: 4 }), /top-k \(5\) cannot exceed the number of experts \(4\)/);
  assert.throws(() => createModel('vgg-moe', { capacityFactor: -1 }), /capacity factor must be a positive number, got -1/);
  assert.throws(() => createModel('vgg-w', { experts: 4 }), /experts \(--experts\) needs a mixture of experts \(--model vgg-moe, resnet-moe or mlp-moe\); --experts also sets the kernels of --model resnet-condconv or vgg-condconv/);
  assert.throws(() => createModel('resnet-d', { dynamic: 'moe' }), /--dynamic moe needs --model vgg-moe, resnet-moe or mlp-moe/);
  assert.throws(() => createModel('vgg-moe', { dynamic: 'acs-gn' }), /vgg-moe takes --dynamic moe, not acs-gn/);
  const odd = () => moeNet({}, (p, i) => [new Conv2D(`${p}.conv`, { filters: i === 2 ? 4 : 8, kernelSize: 3 })]);
  assert.throws(odd, (err) => err instanceof DynnError && /moe: expert 2 gives outputs of \[6,6,4\], expert 0 of \[6,6,8\]/.test(err.message));
});

test('hard routing: each expert runs once per batch on exactly its rows, equal to the masked baseline; an idle expert does not run', () => {
  for (const topK of [1, 2]) {
    const net = moeNet({ topK });
    spreadRouter(net);
    const x = input(16);
    const before = tf.memory().numTensors;
    const spy = spyExperts(blockOf(net));
    const routing = RoutingState.start('hard', 16);
    const y = tf.tidy(() => net.forward(x, net.plan(1), { routing }));
    spy.restore();
    const names = topK === 1 ? ['moe'] : ['moe.k0', 'moe.k1'];
    const chosen = names.map((g) => routing.decisions.get(g)!);
    const load = new Array<number>(E).fill(0);
    chosen.forEach((c) => c.forEach((e) => e >= 0 && load[e]++));
    assert.deepEqual(spy.rows, load, `top-${topK}: the rows each expert ran are the rows assigned to it`);
    assert.deepEqual(spy.calls, load.map((l) => (l > 0 ? 1 : 0)), 'one call per expert that has rows, none for an idle one');
    assert.ok(load.filter((l) => l > 0).length > 1, `the router spreads samples (${load})`);
    assert.ok(routing.choiceGates.has(names[0]) && Object.keys(routing.skipRates()).length === 0, 'choices are not skip rates');
    // The masked baseline runs every expert on every row and zeroes the gates: the same scores.
    const spyM = spyExperts(blockOf(net));
    const masked = RoutingState.start('masked', 16);
    const ym = tf.tidy(() => net.forward(x, net.plan(1), { routing: masked }));
    spyM.restore();
    assert.deepEqual(spyM.rows, new Array(E).fill(16));
    const [a, b] = [y.dataSync(), ym.dataSync()];
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) < 1e-4, `score ${i}: ${v} vs ${b[i]}`));
    // Executed MACs: the fixed layers, the router and k experts (fewer where a slot overflowed).
    const macs = blockOf(net).expertMacs({ full: 8, count: 8, index: null }, net.plan(1))[0];
    const spent = routing.executedMacs;
    const min = Math.min(...spent);
    assert.ok(Math.max(...spent) - min <= topK * macs + 1e-6 && Math.max(...spent) >= min);
    assert.equal(routing.counters.get('moe')!.of, 16 * topK);
    tf.dispose([y, ym]);
    assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
    x.dispose();
    net.dispose();
  }
});

test('a batch that all picks one expert runs it once at capacity; the rest overflow to the residual or to their next choice', () => {
  for (const overflow of ['residual', 'next'] as const) {
    // Expert 0 wins every sample by far; at an evaluation factor of 2, capacity ceil(2 * 8 / 4) = 4 of 8 rows.
    const net = moeNet({ overflow, evalCapacityFactor: 2 });
    spreadRouter(net, [100, 0, 0, 0]);
    const x = input(8);
    const spy = spyExperts(blockOf(net));
    const routing = RoutingState.start('hard', 8);
    const y = tf.tidy(() => net.forward(x, net.plan(1), { routing }));
    spy.restore();
    assert.equal(spy.rows[0], 4, 'expert 0 takes its capacity');
    assert.equal(routing.counters.get('moe')!.events, 4, 'four rows overflowed');
    if (overflow === 'residual') assert.deepEqual(spy.calls, [1, 0, 0, 0], 'the other experts get nothing and do not run');
    else assert.equal(spy.rows.reduce((a, b) => a + b, 0), 8, 'every row ran an expert');
    assert.ok(Array.from(y.dataSync()).every(Number.isFinite));
    y.dispose();
    x.dispose();
    // Without an evaluation factor there is no limit (a served batch merges requests): every row runs expert 0.
    const loose = moeNet({});
    spreadRouter(loose, [100, 0, 0, 0]);
    const spy2 = spyExperts(blockOf(loose));
    const xs = input(8);
    tf.tidy(() => loose.forward(xs, loose.plan(1), { routing: RoutingState.start('hard', 8) }));
    spy2.restore();
    assert.deepEqual(spy2.rows, [8, 0, 0, 0]);
    xs.dispose();
    net.dispose();
    loose.dispose();
  }
});

test('soft routing: noisy top-k gives the router the task gradient (k = 1 too), and each balance loss is added and differentiable', () => {
  for (const topK of [1, 2]) {
    const net = moeNet({ topK, importanceWeight: 0.1, loadWeight: 0.1, switchWeight: 0.01 });
    spreadRouter(net);
    const x = input(12);
    const before = tf.memory().numTensors;
    const vars = net.trainableWeights().map((w) => w.variable);
    const losses: string[] = [];
    const { value, grads } = tf.variableGrads(() => {
      const routing = RoutingState.start('soft', 12, { seed: 3 });
      const task = tf.mean(tf.square(net.forward(x, net.plan(1), { training: true, routing }))) as tf.Scalar;
      losses.push(...routing.losses.map((l) => l.name));
      return routing.losses.reduce((a, l) => tf.add(a, l.value), task) as tf.Scalar;
    }, vars);
    assert.deepEqual(losses, ['importance', 'load', 'switch']);
    const byName = new Map(net.trainableWeights().map((w) => [w.name, grads[w.variable.name]]));
    const kernel = byName.get('moe.gate.fc.kernel')!.arraySync() as number[][];
    // Columns 0..E-1 score the experts, E..2E-1 scale their noise: both learn.
    assert.ok(kernel.some((r) => r.slice(0, E).some((v) => v !== 0)), `top-${topK}: the scores get a gradient`);
    assert.ok(kernel.some((r) => r.slice(E).some((v) => v !== 0)), `top-${topK}: the noise scales get a gradient`);
    tf.dispose([value, ...Object.values(grads)]);
    assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
    x.dispose();
    net.dispose();
  }
});

test('vgg-moe and resnet-moe build, run in every mode with the right shape, and train a step with finite gradients', () => {
  for (const name of ['vgg-moe', 'resnet-moe']) {
    const m = createModel(name, { experts: 3, topK: 2, ...(name === 'vgg-moe' ? { widths: [8, 8, 16, 16], hidden: 16 } : { width: 8, blocksPerStage: 1 }) });
    assert.ok(m.gated, 'its routers are gates');
    const x = tf.randomNormal([5, 28, 28, 1], 0, 1, 'float32', 1);
    const before = tf.memory().numTensors;
    for (const mode of ['hard', 'masked', 'soft'] as const) {
      const routing = RoutingState.start(mode, 5);
      const y = tf.tidy(() => m.forward(x, m.plan(1), { routing, training: mode === 'soft' }));
      assert.deepEqual(y.shape, [5, 10]);
      assert.ok(Array.from(y.dataSync()).every(Number.isFinite));
      y.dispose();
    }
    assert.equal(tf.memory().numTensors, before, `${name}: no tensor leaks`);
    x.dispose();
    m.dispose();
  }
});

/** A mixture of `E` MLP experts (dense 8, ReLU, dense 3) on flattened 6x6x2 inputs; `stack: false` runs one call per expert. */
function mlpNet(args: Partial<MoeArgs> = {}): Network {
  const expert = (p: string) => [new Dense(`${p}.fc1`, { units: 8, groups: 2 }), new ReLU(`${p}.relu`, {}), new Dense(`${p}.fc2`, { units: 3 })];
  return new Network({ model: 'test', args: { dynamic: 'moe' } }, [6, 6, 2], [new Flatten('flatten', {}), new MoeBlock('moe', { experts: E, ...args }, expert)], 0);
}

/** Records the rows of every stacked call (E blocks of the most loaded expert's rows). */
function spyStack(block: MoeBlock): { rows: number[]; restore: () => void } {
  const stack = block.stack!;
  const rows: number[] = [];
  const run = stack.run.bind(stack);
  stack.run = (part, C, training) => {
    rows.push(part.shape[0]);
    return run(part, C, training);
  };
  return { rows, restore: () => delete (stack as Partial<typeof stack>).run };
}

const loadOf = (routing: RoutingState, topK: number): number[] => {
  const load = new Array<number>(E).fill(0);
  for (const g of topK === 1 ? ['moe'] : Array.from({ length: topK }, (_, s) => `moe.k${s}`)) routing.decisions.get(g)!.forEach((e) => e >= 0 && load[e]++);
  return load;
};

test('stacked experts: one batched call over every expert, padded only up to the most loaded expert, the same outputs and gradients as one call per expert', () => {
  const before0 = tf.memory().numTensors;
  for (const topK of [1, 2]) {
    const [stacked, looped] = [mlpNet({ topK }), mlpNet({ topK, stack: false })];
    assert.ok(blockOf(stacked).stack && !blockOf(looped).stack, 'dense experts stack; stack: false keeps one call each');
    spreadRouter(stacked);
    looped.setWeights(stacked.getWeights());
    const x = input(16);
    const spy = spyStack(blockOf(stacked));
    const perExpert = spyExperts(blockOf(stacked));
    const [ra, rb] = [RoutingState.start('hard', 16), RoutingState.start('hard', 16)];
    const ya = tf.tidy(() => stacked.forward(x, stacked.plan(1), { routing: ra }));
    const yb = tf.tidy(() => looped.forward(x, looped.plan(1), { routing: rb }));
    perExpert.restore();
    const load = loadOf(ra, topK);
    assert.deepEqual(loadOf(rb, topK), load, 'the same experts per sample');
    assert.ok(load.filter((l) => l > 0).length > 1, `the router spreads samples (${load})`);
    assert.deepEqual(spy.rows, [E * Math.max(...load)], `top-${topK}: one call of E x ${Math.max(...load)} rows (${E * Math.max(...load) - 16 * topK} of them padding)`);
    assert.deepEqual(perExpert.calls, new Array(E).fill(0), 'no expert runs a call of its own');
    const [a, b] = [ya.dataSync(), yb.dataSync()];
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) < 1e-5, `score ${i}: ${v} vs ${b[i]}`));
    // Soft routing, the same seed: the same losses and gradients for every weight, the router's included.
    const grads = [stacked, looped].map((net) => {
      const vars = net.trainableWeights().map((w) => w.variable);
      const { value, grads: g } = tf.variableGrads(() => {
        const routing = RoutingState.start('soft', 16, { seed: 3 });
        const task = tf.mean(tf.square(net.forward(x, net.plan(1), { training: true, routing }))) as tf.Scalar;
        return routing.losses.reduce((acc, l) => tf.add(acc, l.value), task) as tf.Scalar;
      }, vars);
      const out = new Map(net.trainableWeights().map((w) => [w.name, Array.from(g[w.variable.name].dataSync())]));
      tf.dispose([value, ...Object.values(g)]);
      return out;
    });
    assert.equal(grads[0].size, grads[1].size);
    for (const [name, g] of grads[0]) {
      const h = grads[1].get(name)!;
      const scale = Math.max(1e-6, ...h.map(Math.abs));
      assert.ok(g.every((v, i) => Math.abs(v - h[i]) <= 1e-4 * scale), `gradient of ${name}`);
      if (name.startsWith('moe.e')) assert.ok(h.some((v) => v !== 0) || load[Number(name[5])] === 0, `${name} learns`);
    }
    spy.restore();
    // Inference keeps the stacked weights between calls, and nothing else: the tensor count stays flat.
    const count = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) tf.dispose(tf.tidy(() => stacked.forward(x, stacked.plan(1), { routing: RoutingState.start('hard', 16) })));
    assert.equal(tf.memory().numTensors, count, 'no tensor leaks');
    // A weight assigned after a pass (a training step, a loaded checkpoint) reaches the kept stack.
    const busy = load.indexOf(Math.max(...load));
    for (const net of [stacked, looped]) tf.tidy(() => net.weights().forEach((w) => w.name === `moe.e${busy}.fc2.bias` && w.variable.assign(tf.fill(w.variable.shape, 5))));
    const [za, zb] = [stacked, looped].map((net) => tf.tidy(() => net.forward(x, net.plan(1), { routing: RoutingState.start('hard', 16) })));
    assert.ok(tf.tidy(() => tf.max(tf.abs(tf.sub(za, ya))).dataSync()[0]) > 0.1, 'the outputs moved');
    assert.ok(tf.tidy(() => tf.max(tf.abs(tf.sub(za, zb))).dataSync()[0]) < 1e-5, 'as one call per expert does');
    tf.dispose([za, zb, ya, yb, x]);
    stacked.dispose();
    looped.dispose();
  }
  assert.equal(tf.memory().numTensors, before0, 'dispose frees the kept stack too');
});

test('stacked experts: a batch that all picks one expert runs it alone; overflowing to the next choice, the idle experts are padded up to its capacity; the same outputs as one call per expert', () => {
  for (const [cf, overflow, rows] of [[undefined, 'residual', undefined], [2, 'residual', undefined], [2, 'next', E * 4]] as const) {
    const [stacked, looped] = [mlpNet({ evalCapacityFactor: cf, overflow }), mlpNet({ evalCapacityFactor: cf, overflow, stack: false })];
    spreadRouter(stacked, [100, 0, 0, 0]);
    looped.setWeights(stacked.getWeights());
    const x = input(8);
    const spy = spyStack(blockOf(stacked));
    const perExpert = spyExperts(blockOf(stacked));
    const routing = RoutingState.start('hard', 8);
    const ya = tf.tidy(() => stacked.forward(x, stacked.plan(1), { routing }));
    const yb = tf.tidy(() => looped.forward(x, looped.plan(1), { routing: RoutingState.start('hard', 8) }));
    spy.restore();
    perExpert.restore();
    assert.deepEqual(spy.rows, rows ? [rows] : [], `capacity factor ${cf}, ${overflow}: ${rows ? 'one stacked call' : 'no stacked call'}`);
    if (!rows) assert.deepEqual(perExpert.rows, [cf ? 4 : 8, 0, 0, 0], 'the busy expert runs alone, on its rows');
    assert.ok(loadOf(routing, 1).filter((l) => l === 0).length >= (overflow === 'next' ? 1 : 3), 'experts that get nothing');
    const [a, b] = [ya.dataSync(), yb.dataSync()];
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) < 1e-5, `score ${i}: ${v} vs ${b[i]}`));
    tf.dispose([ya, yb, x]);
    stacked.dispose();
    looped.dispose();
  }
});

test('at inference the router computes the E scores alone (the first E columns of its dense layer), and its cost counts that half; the pass leaks no tensor', () => {
  const net = moeNet();
  const block = blockOf(net);
  const router = block.gate as MoeRouter;
  const x = tf.randomNormal([5, 6, 6, 8], 0, 1, 'float32', 3);
  const sel = fullSel(8);
  const ctx = { plan: net.plan(1), training: false };
  const [full, scores] = tf.tidy(() => [router.call(x, sel, ctx).y.arraySync() as number[][], router.scores(x, sel, ctx).arraySync()]);
  assert.equal(full[0].length, 2 * E);
  assert.deepEqual(scores.map((r) => r.length), new Array(5).fill(E));
  scores.forEach((r, i) => r.forEach((v, e) => assert.ok(Math.abs(v - full[i][e]) < 1e-5, `score ${i},${e}`)));
  // Behind a throttled layer only the active channels arrive: the scores read their kernel rows alone.
  const part = { full: 8, count: 4, index: null };
  const [fullPart, scoresPart] = tf.tidy(() => {
    const xs = tf.slice(x, [0, 0, 0, 0], [5, 6, 6, 4]);
    return [router.call(xs, part, ctx).y.arraySync() as number[][], router.scores(xs, part, ctx).arraySync()];
  });
  scoresPart.forEach((r, i) => r.forEach((v, e) => assert.ok(Math.abs(v - fullPart[i][e]) < 1e-5, `score ${i},${e} on 4 of 8 channels`)));
  const fc = router.children()[router.children().length - 1];
  const [dense] = fc.cost(sel, net.plan(1));
  const costs = router.cost(sel, net.plan(1));
  assert.equal(costs[costs.length - 1].macs, dense.macs / 2);
  const before = tf.memory().numTensors;
  tf.dispose(tf.tidy(() => net.forward(tf.randomNormal([4, 6, 6, 2], 0, 1, 'float32', 4), net.plan(1), { routing: RoutingState.start('hard', 4) })));
  assert.equal(tf.memory().numTensors, before, 'no tensor leaked');
  tf.dispose(x);
  net.dispose();
});
