import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel, models } from './zoo.js';
import { Rng } from '../util/rng.js';
import { Conv2D, Dense, type Layer } from '../layers/index.js';
import type { Network } from './network.js';
import type { Plan } from '../layers/types.js';
import { fullSel } from '../layers/select.js';

before(async () => {
  await initEngine('wasm');
});

/** Narrow variants of the larger models, so the registry-wide tests stay fast (depth and structure unchanged). */
const SMALL: Record<string, Record<string, unknown>> = {
  resnet38: { widths: [8, 8, 16] },
  densenet41: { growth: 8 },
  densenet53: { growth: 8 },
  'densenet-w': { growth: 8 },
  'densenet-dw': { growth: 8 },
  'resnet-moe': { width: 8, blocksPerStage: 1 },
  'multi-branch': { branches: 'vgg-w:widths=4,4,8,8:hidden=16,vgg-w:widths=8,8,16,16:hidden=32' },
  'vgg-condconv': { widths: [4, 4, 8, 8], hidden: 16, experts: 3 },
  'resnet-condconv': { width: 4, blocksPerStage: 1, experts: 2, routing: 'softmax', temperature: 5 },
  'vgg-se': { widths: [4, 4, 8, 8], hidden: 16 },
};

test('every registered model, at u in {0.1, 0.5, 1}, nested and independent: shape, finite, backward, no leak', () => {
  assert.deepEqual(models.list(), [
    'densenet-dw',
    'densenet-w',
    'densenet41',
    'densenet53',
    'mlp-moe',
    'mlp-w',
    'multi-branch',
    'resnet-condconv',
    'resnet-d',
    'resnet-exits',
    'resnet-moe',
    'resnet38',
    'resnext-w',
    'vgg-condconv',
    'vgg-exits',
    'vgg-moe',
    'vgg-se',
    'vgg-w',
  ]);
  for (const name of models.list()) {
    for (const inputShape of [[28, 28, 1], [32, 32, 3]]) {
      const m = createModel(name, { ...SMALL[name], inputShape, numClasses: 10 });
      // Models with no throttleable unit (dynamic parameters, SE) cost the same at every u.
      if (m.blocks().length > 0) assert.ok(m.cost(1).flops > m.cost(0.1).flops, `${name}: cost falls with u`);
      else assert.equal(m.cost(1).flops, m.cost(0.1).flops, `${name}: static cost`);
      const x = tf.randomNormal([3, ...inputShape], 0, 1, 'float32', 1);
      const before = tf.memory().numTensors;
      for (const u of [0.1, 0.5, 1]) {
        for (const gating of ['nested', 'independent'] as const) {
          const plan = m.plan(u, { gating, rng: new Rng(3) });
          const y = m.predict(x, plan);
          assert.deepEqual(y.shape, [3, 10], `${name} ${u}`);
          assert.ok((y.dataSync() as Float32Array).every(Number.isFinite), `${name} u=${u} finite`);
          y.dispose();
          const vars = m.trainableWeights().map((w) => w.variable);
          const { value, grads } = tf.variableGrads(() => tf.mean(tf.square(m.forward(x, plan, { training: true }))) as tf.Scalar, vars);
          const gs = Object.values(grads);
          assert.ok(gs.length > 0, `${name} has gradients`);
          let nonzero = 0;
          for (const g of gs) {
            const d = g.dataSync() as Float32Array;
            assert.ok(d.every(Number.isFinite), `${name} gradient finite`);
            if (d.some((v) => v !== 0)) nonzero++;
          }
          assert.ok(nonzero > 0, `${name} u=${u}: some gradient is non-zero`);
          tf.dispose([value, ...gs]);
        }
      }
      // What a layer keeps between passes on purpose (a mixture's stacked experts) is not a leak.
      m.releaseCaches();
      assert.equal(tf.memory().numTensors, before, `${name}: no leaked tensors`);
      x.dispose();
      m.dispose();
    }
  }
});

/** Zeroes every kernel entry outside the active input/output channels of a plan (the mask reference). */
function maskedCopy(src: Network, plan: Plan): Network {
  const m = createModel(src.config.model, src.config.args);
  m.setWeights(src.getWeights());
  let sel = fullSel(m.inputShape[2]);
  const walk = (layers: Layer[]) => {
    for (const l of layers) {
      const out = l.outSel(sel, plan);
      if (l instanceof Conv2D || l instanceof Dense) {
        const kernel = l.weights().find((w) => w.name.endsWith('.kernel'))!;
        const shape = kernel.variable.shape;
        const [ci, co] = shape.slice(-2);
        const inOn = new Set(sel.index ? Array.from(sel.index) : Array.from({ length: sel.count }, (_, i) => i));
        const outOn = new Set(out.index ? Array.from(out.index) : Array.from({ length: out.count }, (_, i) => i));
        const data = (kernel.variable.dataSync() as Float32Array).slice();
        for (let i = 0; i < data.length; i++) {
          const o = i % co;
          const c = Math.floor(i / co) % ci;
          if (!inOn.has(c) || !outOn.has(o)) data[i] = 0;
        }
        kernel.variable.assign(tf.tensor(data, shape));
      }
      sel = out;
    }
  };
  walk(m.layers);
  return m;
}

test('sliced execution equals the full network with zero-masked weights (vgg-w, mlp-w; nested and independent)', () => {
  for (const name of ['vgg-w', 'mlp-w']) {
    const m = createModel(name, { seed: 4 });
    const x = tf.randomUniform([4, 28, 28, 1], 0, 1, 'float32', 2);
    for (const u of [0.2, 0.5, 0.8]) {
      for (const gating of ['nested', 'independent'] as const) {
        const plan = m.plan(u, { gating, rng: new Rng(9) });
        const ref = maskedCopy(m, plan);
        const full: Plan = { ...ref.plan(1), level: plan.level };
        const a = m.predict(x, plan).arraySync();
        const b = ref.predict(x, full).arraySync();
        for (let i = 0; i < a.length; i++) {
          for (let j = 0; j < a[i].length; j++) assert.ok(Math.abs(a[i][j] - b[i][j]) < 1e-3 * (1 + Math.abs(b[i][j])), `${name} ${gating} u=${u}`);
        }
        // Sliced really differs from running everything, or the test proves nothing.
        const unsliced = m.predict(x, full).arraySync();
        assert.ok(unsliced.some((r, i) => r.some((v, j) => Math.abs(v - a[i][j]) > 1e-3)));
        ref.dispose();
      }
    }
    x.dispose();
    m.dispose();
  }
});

test('FLOPs, MACs and active parameters of a small vgg-w match hand-computed values', () => {
  const m = createModel('vgg-w', { inputShape: [8, 8, 1], numClasses: 3, groups: 2, widths: [4, 4, 8, 8], hidden: 16 });
  const full = m.cost(1);
  assert.equal(full.macs, 2304 + 9216 + 4608 + 9216 + 512 + 48);
  assert.equal(full.flops, 2 * full.macs);
  // u = 0.5 with D = 2: d = min(2, floor(1.5)) = 1 group of each throttled layer.
  const half = m.cost(0.5);
  assert.equal(half.macs, 2304 + 4608 + 1152 + 2304 + 128 + 24);
  assert.equal(half.params, 36 + 8 + 72 + 4 + 72 + 8 + 144 + 8 + 136 + 27);
  assert.deepEqual(
    half.layers.filter((l) => l.macs > 0).map((l) => [l.name, l.macs]),
    [['stem.conv', 2304], ['c2.conv', 4608], ['c3.conv', 1152], ['c4.conv', 2304], ['fc1', 128], ['classifier', 24]],
  );
  m.dispose();
});

test('vgg-w cost falls with u and resnet-d skips whole blocks', () => {
  const v = createModel('vgg-w');
  const ratio = v.cost(0.5).flops / v.cost(1).flops;
  assert.ok(ratio > 0.3 && ratio < 0.4, `FLOPs ratio at 0.5 is ${ratio}`);
  v.dispose();
  const r = createModel('resnet-d');
  const plan = r.plan(0.5);
  const skipped = [...plan.depth].filter(([, on]) => !on).map(([n]) => n);
  assert.equal(skipped.length, 3);
  const names = r.cost(plan).layers.map((l) => l.name);
  for (const s of skipped) assert.ok(!names.some((n) => n.startsWith(`${s}.`)), `${s} costs nothing`);
  assert.ok(r.cost(0.5).flops < r.cost(1).flops);
  r.dispose();
});

test('bad model names, arguments and inputs give clear errors', () => {
  assert.throws(() => createModel('vgg'), /unknown model "vgg"; expected one of densenet-dw, densenet-w, densenet41, densenet53, mlp-moe, mlp-w, multi-branch, resnet-condconv, resnet-d, resnet-exits, resnet-moe, resnet38, resnext-w, vgg-condconv, vgg-exits, vgg-moe, vgg-se, vgg-w/);
  assert.throws(() => createModel('vgg-w', { inputShape: [28, 28] }), /inputShape must be \[height, width, channels\]/);
  assert.throws(() => createModel('vgg-w', { groups: 3 }), /do not split into 3 groups/);
  assert.throws(() => createModel('vgg-w', { numClasses: 1 }), /numClasses must be an integer >= 2/);
  const m = createModel('mlp-w');
  const x = tf.zeros([2, 28, 28, 3]);
  assert.throws(() => m.predict(x, 1), /input shape \[2,28,28,3\] does not match the model's \[batch, 28, 28, 1\]/);
  assert.throws(() => m.predict(tf.zeros([1, 28, 28, 1]), 0), /utilization u must be a number in \(0, 1\]/);
  assert.throws(() => m.plan(0.5, { gating: 'random' as never }), /unknown gating "random"; expected one of nested, independent/);
  x.dispose();
  m.dispose();
});

test('weights have deterministic dotted names and round-trip through getWeights/setWeights', () => {
  const a = createModel('vgg-w', { seed: 1 });
  const b = createModel('vgg-w', { seed: 2 });
  const names = a.weights().map((w) => w.name);
  assert.ok(names.includes('c2.conv.kernel') && names.includes('c2.bn.running_mean') && names.includes('fc1.kernel'));
  assert.deepEqual(names, b.weights().map((w) => w.name));
  const x = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 3);
  const ya = a.predict(x, 0.5).dataSync();
  assert.notDeepEqual(Array.from(ya), Array.from(b.predict(x, 0.5).dataSync()));
  b.setWeights(a.getWeights());
  assert.deepEqual(Array.from(b.predict(x, 0.5).dataSync()), Array.from(ya));
  assert.throws(() => b.setWeights([{ name: 'c2.conv.kernel', shape: [1], data: new Float32Array(1) }]), /no value for weight|has shape/);
  x.dispose();
  a.dispose();
  b.dispose();
});

test('the frozen subnet (BatchNorm folded, ops fused) equals the sliced forward pass for every model; no leaks', () => {
  // A mixture of experts has no one subnet: each sample runs its own experts (it exports by segments).
  for (const name of models.list().filter((n) => !n.endsWith('-moe'))) {
    const m = createModel(name, { ...SMALL[name], seed: 2 });
    // Non-trivial BatchNorm statistics, so folding is really tested.
    for (const w of m.weights().filter((w) => w.name.includes('running_'))) {
      const v = w.variable;
      v.assign(tf.tidy(() => (w.name.endsWith('running_var') ? tf.randomUniform(v.shape, 0.5, 2, 'float32', 1) : tf.randomNormal(v.shape, 0, 0.3, 'float32', 2))));
    }
    const x = tf.randomUniform([3, 28, 28, 1], 0, 1, 'float32', 5);
    const before = tf.memory().numTensors;
    for (const u of [0.15, 0.5, 1]) {
      for (const gating of ['nested', 'independent'] as const) {
        const plan = m.plan(u, { gating, rng: new Rng(4) });
        const sub = m.subnet(plan);
        const a = sub.predict(x);
        const b = m.predict(x, plan);
        const da = a.dataSync();
        const db = b.dataSync();
        for (let i = 0; i < da.length; i++) assert.ok(Math.abs(da[i] - db[i]) < 1e-3 * (1 + Math.abs(db[i])), `${name} u=${u} ${gating}: ${da[i]} vs ${db[i]}`);
        tf.dispose([a, b]);
        sub.dispose();
        assert.throws(() => sub.predict(x), /disposed/);
      }
    }
    assert.equal(tf.memory().numTensors, before, `${name}: subnet leaks nothing`);
    x.dispose();
    m.dispose();
  }
});

test('batchFor: the evaluation batch shrinks to what the activations of a DenseNet allow, and no more', () => {
  const vgg = createModel('vgg-w', { inputShape: [28, 28, 1] });
  const dense = createModel('densenet41', { inputShape: [28, 28, 1] });
  try {
    assert.equal(vgg.batchFor(500), 500, 'a small network keeps the batch asked for');
    const b = dense.batchFor(500);
    assert.ok(b >= 1 && b < 500, `densenet41 on 28x28 holds more than 2 MB a sample (batch ${b})`);
    assert.ok(dense.batchFor(500, 2 ** 31) >= 2 * b - 1, 'twice the budget, about twice the batch');
    assert.equal(dense.batchFor(500, 1), 1, 'never below one sample');
  } finally {
    vgg.dispose();
    dense.dispose();
  }
});
