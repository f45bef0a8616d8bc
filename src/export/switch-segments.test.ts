import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { RoutingState } from '../route/context.js';
import { randomizeStatistics, relErr } from './fixtures.js';
import { saveSegments } from './segments.js';
import { openSession } from '../runtime/node.js';
import { SegmentedSession } from '../runtime/segments.js';
import { fullSel } from '../layers/index.js';
import { WidthSwitch } from '../route/width.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-switch-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
before(async () => {
  await initEngine('wasm');
});

const nets: [string, () => Network][] = [
  ['vgg-w', () => createModel('vgg-w', { dynamic: 'width', inputShape: [8, 8, 2], numClasses: 3, groups: 4, widths: [8, 8, 16, 16], hidden: 16, gateWidth: 4 })],
  ['resnet38', () => createModel('resnet38', { dynamic: 'width', inputShape: [8, 8, 2], numClasses: 3, groups: 4, widths: [8, 8, 16], blocksPerStage: 1, gateWidth: 4, widthRoutes: 3 })],
];

/** TF.js's hard routed forward: scores, the switch's routes and each sample's executed FLOPs ratio. */
function tfRouted(model: Network, x: tf.Tensor, threshold: number) {
  const routing = RoutingState.start('hard', x.shape[0], { threshold });
  const scores = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
  const { fixed, backbone } = model.routedMacs(1);
  return { scores, routes: routing.decisions.get('switch')!, ratios: Array.from(routing.executedMacs, (m) => (fixed + m) / backbone) };
}

/**
 * Sets the gate's output layer so that its logits (all alike) span -4..4 over the samples of `x`, along the
 * direction in which the first and last samples' pooled gate features differ.
 */
function spreadGate(model: Network, x: tf.Tensor): void {
  const sw = model.layers.find((l) => l.name === 'switch') as WidthSwitch;
  const ctx = { plan: model.plan(1), training: false };
  const f = tf.tidy(() => {
    let y = x;
    let sel = fullSel(x.shape[3]!);
    for (const l of [...model.layers.slice(0, model.layers.indexOf(sw)), ...sw.gate.children().slice(0, -1)]) ({ y, sel } = l.call(y, sel, ctx));
    return y.arraySync() as number[][];
  });
  const n = f.length;
  const d = f[n - 1].map((v, j) => v - f[0][j]);
  const proj = f.map((row) => row.reduce((a, v, j) => a + v * d[j], 0));
  const [lo, hi] = [Math.min(...proj), Math.max(...proj)];
  const scale = (sw.gate as unknown as { args: { logitScale?: number } }).args.logitScale ?? 1;
  const a = 8 / (hi - lo) / scale;
  const K = sw.routes;
  for (const w of model.weights()) {
    if (w.name === 'switch.gate.fc.kernel') w.variable.assign(tf.tidy(() => tf.tile(tf.reshape(tf.mul(tf.tensor1d(d), a), [d.length, 1]), [1, K - 1])));
    if (w.name === 'switch.gate.fc.bias') w.variable.assign(tf.fill([K - 1], -a * (lo + hi) / 2 + 1 / scale));
  }
}

const toNchw = (x: tf.Tensor) => tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);

for (const [name, make] of nets) {
  test(`${name} with a width switch exports by segments (a gate graph, one graph per width) and runs in ONNX Runtime with TF.js's routes, scores within 1e-4, FLOPs ratios, each width's rows run once`, async () => {
    const model = make();
    randomizeStatistics(model, 3);
    const x = tf.tidy(() => tf.mul(tf.randomNormal([16, 8, 8, 2], 0, 1, 'float32', 8), tf.reshape(tf.linspace(0.1, 3, 16), [16, 1, 1, 1])));
    spreadGate(model, x);
    const threshold = 0.5;
    const dir = path.join(tmp, name);
    const m = await saveSegments(model, dir, { threshold });
    const sw = m.segments.find((s) => s.kind === 'switch');
    assert.ok(sw && sw.kind === 'switch' && sw.routes.length === (name === 'vgg-w' ? 4 : 3));
    assert.deepEqual(m.segments.map((s) => s.kind), ['plain', 'switch']);
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const proto = SegmentedSession.prototype as unknown as { once: (s: unknown, feeds: Record<string, { dims: readonly number[] }>, fetch: string) => Promise<unknown> };
    const once = proto.once;
    const rows: number[] = [];
    proto.once = function (s, feeds, fetch) {
      if (fetch === 'y' && feeds.x.dims[1] !== 2) rows.push(feeds.x.dims[0]);
      return once.call(this, s, feeds, fetch);
    };
    try {
      for (const t of [threshold, 0, 1]) {
        rows.length = 0;
        const ref = tfRouted(model, x, t);
        const got = await session.runRouted(toNchw(x), { threshold: t });
        assert.deepEqual([...got.counts[0]], [...ref.routes], `routes at threshold ${t}`);
        assert.ok(relErr(ref.scores, got.scores) < 1e-4, `scores at threshold ${t}: ${relErr(ref.scores, got.scores)}`);
        got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - ref.ratios[i]) < 1e-9, `FLOPs ratio of sample ${i}`));
        const present = [...new Set(ref.routes)].sort();
        assert.deepEqual(rows, present.map((k) => ref.routes.filter((r) => r === k).length), `each width's graph ran once on its rows (threshold ${t})`);
        if (t === threshold) assert.ok(present.length >= 2, `mixed widths (${[...ref.routes]})`);
        if (t === 0) assert.deepEqual(present, [sw.routes.length - 1]);
        if (t === 1) assert.deepEqual(present, [0]);
      }
    } finally {
      proto.once = once;
      await session.release();
      x.dispose();
      model.dispose();
    }
  });
}
