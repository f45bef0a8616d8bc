import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { concatSel, DenseHead, DenseTransition, DenseUnit } from './dense.js';
import { Conv2D, Dense } from './conv.js';
import { fullSel } from './select.js';
import type { Layer } from './layer.js';
import type { ChannelSel, Plan } from './types.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { Rng } from '../util/rng.js';

before(async () => {
  await initEngine('wasm');
});

test('concatSel: a prefix while the input is complete, else the union of both selections, offset', () => {
  assert.deepEqual(concatSel(fullSel(4), { full: 6, count: 2, index: null }, 6), { full: 10, count: 6, index: null });
  assert.deepEqual(concatSel({ full: 10, count: 6, index: null }, { full: 6, count: 2, index: null }, 6), {
    full: 16,
    count: 8,
    index: Int32Array.from([0, 1, 2, 3, 4, 5, 10, 11]),
  });
  assert.deepEqual(concatSel({ full: 4, count: 2, index: Int32Array.from([1, 3]) }, { full: 6, count: 2, index: Int32Array.from([2, 5]) }, 6), {
    full: 10,
    count: 4,
    index: Int32Array.from([1, 3, 6, 9]),
  });
  // A skipped unit: nothing appended, the full width still grows.
  assert.deepEqual(concatSel(fullSel(4), { full: 6, count: 0, index: null }, 6), { full: 10, count: 4, index: null });
});

function indices(sel: ChannelSel): Set<number> {
  return new Set(sel.index ? Array.from(sel.index) : Array.from({ length: sel.count }, (_, i) => i));
}

/** The reference: every kernel entry outside the active channels zeroed (skipped units entirely), run at full width. */
function maskedCopy(src: Network, plan: Plan): Network {
  const m = createModel(src.config.model, src.config.args);
  m.setWeights(src.getWeights());
  const zero = (l: Layer, keep: (c: number, o: number) => boolean) => {
    const kernel = l.weights().find((w) => w.name === `${l.name}.kernel`)!;
    const shape = kernel.variable.shape;
    const [ci, co] = shape.slice(-2);
    const data = (kernel.variable.dataSync() as Float32Array).slice();
    for (let i = 0; i < data.length; i++) if (!keep(Math.floor(i / co) % ci, i % co)) data[i] = 0;
    kernel.variable.assign(tf.tensor(data, shape));
  };
  const walk = (layers: Layer[], sel: ChannelSel): ChannelSel => {
    for (const l of layers) {
      if (l instanceof DenseUnit) {
        if (plan.depth.get(l.name) === false) for (const c of l.children()) if (c instanceof Conv2D) zero(c, () => false);
        if (plan.depth.get(l.name) !== false) walk(l.children(), sel);
      } else if (l instanceof DenseTransition || l instanceof DenseHead) {
        walk(l.children(), sel);
      } else if (l instanceof Conv2D || l instanceof Dense) {
        const inOn = indices(sel);
        const outOn = indices(l.outSel(sel, plan));
        zero(l, (c, o) => inOn.has(c) && outOn.has(o));
      }
      sel = l.outSel(sel, plan);
    }
    return sel;
  };
  walk(m.layers, fullSel(m.inputShape[2]));
  return m;
}

test('sliced DenseNet (concatenation of the channels present) equals the zero-masked full network; skipped units add no channels', () => {
  for (const name of ['densenet-w', 'densenet-dw']) {
    const m = createModel(name, { growth: 8, units: 2, groups: 4, seed: 3, inputShape: [12, 12, 1] });
    const x = tf.randomUniform([2, 12, 12, 1], 0, 1, 'float32', 2);
    for (const u of [0.3, 0.7]) {
      for (const gating of ['nested', 'independent'] as const) {
        const plan = m.plan(u, { gating, rng: new Rng(5) });
        const ref = maskedCopy(m, plan);
        const full: Plan = { ...ref.plan(1), level: plan.level };
        const a = m.predict(x, plan).dataSync();
        const b = ref.predict(x, full).dataSync();
        for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-4 * (1 + Math.abs(b[i])), `${name} ${gating} u=${u}: ${a[i]} vs ${b[i]}`);
        const unsliced = m.predict(x, full).dataSync();
        assert.ok(unsliced.some((v, i) => Math.abs(v - a[i]) > 1e-3), 'slicing changes the result');
        ref.dispose();
      }
    }
    if (name === 'densenet-dw') {
      const plan = m.plan(0.3);
      const off = [...plan.depth].filter(([, on]) => !on).map(([n]) => n);
      assert.ok(off.length > 0);
      const costs = m.cost(plan).layers;
      for (const n of off) assert.ok(!costs.some((c) => c.name.startsWith(`${n}.`)), `${n} costs nothing`);
      // The transition after block 0 reads exactly the stem's channels plus the active units' groups.
      let sel = fullSel(1);
      for (const l of m.layers) {
        if (l.name === 't0') break;
        sel = l.outSel(sel, plan);
      }
      const on0 = [...plan.depth].filter(([n, on]) => n.startsWith('d0.') && on).length;
      assert.equal(sel.full, 16 + 2 * 8);
      assert.equal(sel.count, 16 + on0 * 8 * (plan.groups.get('d0.u0.conv2')!.length / 4));
    }
    x.dispose();
    m.dispose();
  }
});

test('the frozen subnet (concat ops) equals the sliced forward pass within 1e-4 for the DenseNet and ResNet-38 families', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['densenet-w', { growth: 8, units: 2, groups: 4 }],
    ['densenet-dw', { growth: 8, units: 3, groups: 4 }],
    ['resnet38', { widths: [8, 8, 16], groups: 4 }],
  ];
  for (const [name, args] of cases) {
    const m = createModel(name, { ...args, inputShape: [12, 12, 3], seed: 1 });
    for (const w of m.weights().filter((w) => /running_|gamma|beta/.test(w.name))) {
      const v = w.variable;
      v.assign(tf.tidy(() => (/running_var|gamma/.test(w.name) ? tf.randomUniform(v.shape, 0.5, 2, 'float32', 1) : tf.randomNormal(v.shape, 0, 0.3, 'float32', 2))));
    }
    const x = tf.randomUniform([3, 12, 12, 3], 0, 1, 'float32', 5);
    const before = tf.memory().numTensors;
    for (const u of [0.2, 0.5, 1]) {
      for (const gating of ['nested', 'independent'] as const) {
        const plan = m.plan(u, { gating, rng: new Rng(8) });
        const sub = m.subnet(plan);
        const ya = sub.predict(x);
        const yb = m.predict(x, plan);
        const a = ya.dataSync();
        const b = yb.dataSync();
        tf.dispose([ya, yb]);
        const scale = Math.max(1, ...Array.from(b, Math.abs));
        for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-4 * scale, `${name} u=${u} ${gating}: ${a[i]} vs ${b[i]}`);
        sub.dispose();
      }
    }
    assert.equal(tf.memory().numTensors, before, `${name}: no leak`);
    x.dispose();
    m.dispose();
  }
});
