import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
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

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-whole-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
before(async () => {
  await initEngine('wasm');
});

// Gate scale 1: the spread gate logits below put samples on every route.
const nets: [string, string, () => Network, number][] = [
  ['multi-branch', 'mb', () => createModel('multi-branch', { branches: 'vgg-w:widths=4,4,8,8:hidden=16,vgg-w:widths=8,8,8,8:hidden=16,resnet-d:width=8:blocksPerStage=1', inputShape: [8, 8, 2], numClasses: 3, gateScale: 1 }), 7],
  // 8, 7 and 5: odd sizes, where a stride-2 'same' convolution pads differently than at 8.
  ['resolution', 'res', () => createModel('resnet-d', { dynamic: 'resolution', resolutions: [8, 7, 5], inputShape: [8, 8, 2], numClasses: 3, width: 4, blocksPerStage: 1, gateScale: 1 }), 6],
];

/** Gate logits spread by the input (the seed picked so that these 12 samples take two routes or more). */
function spreadGate(model: Network, seed: number): void {
  for (const w of model.weights()) {
    if (w.name.endsWith('.gate.fc.bias')) w.variable.assign(tf.zeros(w.variable.shape));
    if (w.name.endsWith('.gate.fc.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 60, 'float32', seed));
  }
}

const toNchw = (x: tf.Tensor) => tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);

for (const [name, key, make, seed] of nets) {
  test(`${name} exports by segments (a gate graph, one graph per route) and runs in ONNX Runtime with TF.js's routes, scores within 1e-4, FLOPs ratios, each route's rows run once`, async () => {
    const model = make();
    randomizeStatistics(model, 3);
    spreadGate(model, seed);
    const x = tf.tidy(() => tf.mul(tf.randomNormal([12, 8, 8, 2], 0, 1, 'float32', 3), tf.reshape(tf.linspace(0.2, 3, 12), [12, 1, 1, 1])));
    const dir = path.join(tmp, name);
    const m = await saveSegments(model, dir, { threshold: 0.5 });
    assert.deepEqual(m.segments.map((s) => s.kind), ['switch']);
    if (spawnSync('/usr/bin/python3', ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0) {
      // The ONNX checker (full check) accepts the gate (with its Resize) and every route graph.
      const files = readdirSync(dir).filter((f) => f.endsWith('.onnx')).map((f) => path.join(dir, f));
      const script = 'import onnx,sys\nfor f in sys.argv[1:]: onnx.checker.check_model(onnx.load(f), full_check=True)\nprint("ok")';
      assert.equal(execFileSync('/usr/bin/python3', ['-c', script, ...files], { encoding: 'utf8' }).trim(), 'ok');
    }
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const proto = SegmentedSession.prototype as unknown as { once: (s: unknown, feeds: Record<string, { dims: readonly number[] }>, fetch: string) => Promise<unknown> };
    const once = proto.once;
    const rows: number[] = [];
    proto.once = function (s, feeds, fetch) {
      if (fetch === 'y') rows.push(feeds.x.dims[0]);
      return once.call(this, s, feeds, fetch);
    };
    try {
      for (const t of [0.5, 0, 1]) {
        rows.length = 0;
        const routing = RoutingState.start('hard', 12, { threshold: t });
        const scores = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
        const routes = routing.decisions.get(key)!;
        const { fixed, backbone } = model.routedMacs(1);
        const got = await session.runRouted(toNchw(x), { threshold: t });
        assert.deepEqual([...got.counts[0]], [...routes], `routes at threshold ${t}`);
        assert.ok(relErr(scores, got.scores) < 1e-4, `scores at threshold ${t}: ${relErr(scores, got.scores)}`);
        got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - (fixed + routing.executedMacs[i]) / backbone) < 1e-9, `FLOPs ratio of sample ${i}`));
        const present = [...new Set(routes)].sort();
        assert.deepEqual(rows, present.map((k) => routes.filter((r) => r === k).length), `each route's graph ran once on its rows (threshold ${t})`);
        if (t === 0.5) assert.ok(present.length >= 2, `mixed routes (${[...routes]})`);
      }
    } finally {
      proto.once = once;
      await session.release();
      x.dispose();
      model.dispose();
    }
  });
}
