import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { RoutingState } from '../route/context.js';
import { assertServedLike, profileNodes, randomizeStatistics, serveFolder, relErr } from './fixtures.js';
import { saveSegments } from './segments.js';
import { openSession } from '../runtime/node.js';
import { SegmentedSession } from '../runtime/segments.js';
import { MANIFEST_FILE, parseManifest } from './manifest.js';
import { fullSel } from '../layers/index.js';
import { MoeBlock } from '../route/moe.js';
import { DynnServer } from '../serve/server.js';
import { loadWebSegments } from '../runtime/web.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-moe-seg-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
before(async () => {
  await initEngine('wasm');
});

/** Mixtures with a capacity limit at evaluation: the runtime dispatches them (`moe` segments). */
const nets: [string, () => Network][] = [
  ['vgg-moe', () => createModel('vgg-moe', { inputShape: [8, 8, 2], numClasses: 3, groups: 4, widths: [8, 8, 16, 16], hidden: 16, experts: 4, topK: 1, evalCapacityFactor: 2 })],
  ['resnet-moe', () => createModel('resnet-moe', { inputShape: [8, 8, 2], numClasses: 3, width: 4, blocksPerStage: 2, experts: 3, topK: 2, overflow: 'next', priority: 'score', evalCapacityFactor: 1 })],
];

/**
 * Spreads every router's scores over its experts for the batch `x`: a large random kernel on the block's
 * (pooled) input, centred over the batch through the bias (pooled ReLU features share a large common part).
 */
function spreadRouters(model: Network, x: tf.Tensor): void {
  const ctx = { plan: model.plan(1), training: false };
  tf.tidy(() => {
    let y = x;
    let sel = fullSel(x.shape[3]!);
    for (const l of model.layers) {
      if (l instanceof MoeBlock) {
        const mean = tf.mean(y.rank === 4 ? tf.mean(y, [1, 2]) : y, 0);
        const kernel = tf.randomNormal([mean.shape[0], 2 * l.experts], 0, 20, 'float32', 3);
        for (const w of model.weights()) {
          if (w.name === `${l.name}.gate.fc.kernel`) w.variable.assign(kernel);
          if (w.name === `${l.name}.gate.fc.bias`) w.variable.assign(tf.neg(tf.matMul(tf.reshape(mean, [1, -1]), kernel)).reshape([-1]));
        }
      }
      ({ y, sel } = l.call(y, sel, { ...ctx, routing: RoutingState.start('hard', x.shape[0]) }));
    }
  });
}

const toNchw = (x: tf.Tensor) => tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);

for (const [name, make] of nets) {
  test(`${name} with a capacity limit exports by segments (a router graph, one graph per expert) and runs in ONNX Runtime with TF.js's experts and scores within 1e-4, each expert once on its rows`, async () => {
    const model = make();
    randomizeStatistics(model, 3);
    const x = tf.tidy(() => tf.mul(tf.randomNormal([16, 8, 8, 2], 0, 1, 'float32', 8), tf.reshape(tf.linspace(0.1, 3, 16), [16, 1, 1, 1])));
    spreadRouters(model, x);
    const dir = path.join(tmp, name);
    const m = await saveSegments(model, dir);
    const moes = m.segments.filter((s) => s.kind === 'moe');
    assert.equal(moes.length, name === 'vgg-moe' ? 1 : 2);
    assert.ok(moes.every((s) => s.kind === 'moe' && s.routerOutputs === s.experts), 'the router graphs give the scores alone');
    const routing = RoutingState.start('hard', 16);
    const ref = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
    const { fixed, backbone } = model.routedMacs(1);
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const proto = SegmentedSession.prototype as unknown as { once: (s: unknown, feeds: Record<string, { dims: readonly number[] }>, fetch: string) => Promise<unknown> };
    const once = proto.once;
    const expertRows: number[] = [];
    const experts = new Set((session as unknown as { parts: { experts?: unknown[] }[] }).parts.flatMap((p) => p.experts ?? []));
    proto.once = function (s, feeds, fetch) {
      if (experts.has(s)) expertRows.push(feeds.x.dims[0]);
      return once.call(this, s, feeds, fetch);
    };
    try {
      const got = await session.runRouted(toNchw(x));
      const slots = moes.flatMap((s) => (s.kind === 'moe' && s.topK > 1 ? Array.from({ length: s.topK }, (_, k) => `${s.name}.k${k}`) : [s.name]));
      slots.forEach((g, j) => assert.deepEqual([...got.counts[j]], [...routing.decisions.get(g)!], `same experts per sample at ${g}`));
      assert.ok(relErr(ref, got.scores) < 1e-4, `scores: ${relErr(ref, got.scores)}`);
      got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - (fixed + routing.executedMacs[i]) / backbone) < 1e-9, `FLOPs ratio of sample ${i}`));
      // Each expert graph ran once per mixture on exactly the rows assigned to it.
      const perBlock = moes.map((s, b) => {
        const names = slots.filter((g) => g === s.name || g.startsWith(`${s.name}.k`));
        const load = new Array<number>(s.kind === 'moe' ? s.experts : 0).fill(0);
        for (const g of names) routing.decisions.get(g)!.forEach((e) => e >= 0 && load[e]++);
        return [b, load.filter((l) => l > 0)] as const;
      });
      assert.deepEqual(expertRows, perBlock.flatMap(([, l]) => l));
      assert.ok(perBlock.every(([, l]) => l.length >= 2), 'the routers spread samples over experts');
    } finally {
      proto.once = once;
      await session.release();
      x.dispose();
      model.dispose();
    }
  });
}

test('a mixture manifest that does not add up is refused by name', () => {
  const dir = path.join(tmp, 'vgg-moe');
  const text = readFileSync(path.join(dir, MANIFEST_FILE), 'utf8');
  const bad = (edit: (m: Record<string, unknown> & { segments: Record<string, unknown>[] }) => void) => {
    const m = JSON.parse(text);
    edit(m);
    return JSON.stringify(m);
  };
  const moe = (m: { segments: Record<string, unknown>[] }) => m.segments.find((s) => s.kind === 'moe')!;
  assert.throws(() => parseManifest(bad((m) => (moe(m).topK = 9)), 'x'), /topK: top-k 9 exceeds the 4 experts/);
  assert.throws(() => parseManifest(bad((m) => (moe(m).expertGraphs = (moe(m).expertGraphs as unknown[]).slice(1))), 'x'), /3 expert graphs and 4 expert costs for 4 experts/);
  assert.throws(() => parseManifest(bad((m) => (moe(m).overflow = 'drop')), 'x'), /overflow/);
  assert.throws(() => parseManifest(bad((m) => (moe(m).capacityFactor = 0)), 'x'), /capacityFactor/);
});

test('dynn serve of a mixture folder and the web entry give the in-thread dispatcher\'s predictions and experts', async () => {
  const dir = path.join(tmp, 'resnet-moe');
  const x = Float32Array.from({ length: 5 * 128 }, (_, i) => Math.sin(i * 0.61) * (1 + (i % 7)));
  const node = (await openSession(dir, { threads: 1 })) as SegmentedSession;
  const want = await node.runRouted(x);
  const server = await DynnServer.create({ model: dir, threads: 1, maxBatch: 8, maxWaitMs: 1 });
  try {
    await assertServedLike(server.app, x, [5, 2, 8, 8], want, 1e-5);
  } finally {
    await server.close();
  }
  // The browser entry shares the dispatcher: the folder over HTTP gives the same experts and scores.
  const http = await serveFolder(dir, 'moe');
  try {
    const web = await loadWebSegments(`${http.base}/moe`);
    const got = await web.runRouted(x);
    assert.deepEqual(got.counts, want.counts);
    assert.ok(got.scores.every((v, i) => Math.abs(v - want.scores[i]) < 1e-4));
    await web.release();
  } finally {
    http.close();
    await node.release();
  }
});

test('mlp-moe with a capacity limit exports its alike experts as one stacked graph ([E, rows, in] -> [E, rows, out]) that ONNX Runtime runs once per batch on rows padded to the most loaded expert, with TF.js\'s experts and scores', async () => {
  for (const topK of [1, 2]) {
    const model = createModel('mlp-moe', { inputShape: [8, 8, 2], numClasses: 3, experts: 4, hidden: 8, topK, evalCapacityFactor: 4 });
    tf.tidy(() => {
      for (const w of model.weights()) if (w.name === 'moe.gate.fc.kernel') w.variable.assign(tf.randomNormal(w.variable.shape, 0, 1, 'float32', 4));
    });
    const x = tf.randomNormal([16, 8, 8, 2], 0, 1, 'float32', 8);
    const dir = path.join(tmp, `mlp-moe-k${topK}`);
    const m = await saveSegments(model, dir);
    const seg = m.segments.find((s) => s.kind === 'moe')!;
    assert.ok(seg.kind === 'moe' && seg.stacked && seg.expertGraphs.length === 4, 'one stacked graph, and the per-expert graphs for batches whose padding would not pay');
    const text = readFileSync(path.join(dir, MANIFEST_FILE), 'utf8');
    const edited = JSON.parse(text);
    edited.segments.find((s: { kind: string }) => s.kind === 'moe').expertGraphs = [seg.kind === 'moe' && seg.stacked];
    assert.throws(() => parseManifest(JSON.stringify(edited), 'x'), /1 expert graphs and 4 expert costs for 4 experts/);
    const routing = RoutingState.start('hard', 16);
    const ref = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const stacked = (session as unknown as { parts: { stacked?: unknown }[] }).parts.find((p) => p.stacked)!.stacked;
    const proto = SegmentedSession.prototype as unknown as { once: (s: unknown, feeds: Record<string, { dims: readonly number[] }>, fetch: string) => Promise<unknown> };
    const once = proto.once;
    const calls: (readonly number[])[] = [];
    proto.once = function (s, feeds, fetch) {
      if (s === stacked) calls.push(feeds.x.dims);
      return once.call(this, s, feeds, fetch);
    };
    try {
      const got = await session.runRouted(toNchw(x));
      const slots = topK === 1 ? ['moe'] : ['moe.k0', 'moe.k1'];
      slots.forEach((g, j) => assert.deepEqual([...got.counts[j]], [...routing.decisions.get(g)!], `same experts per sample at ${g}`));
      assert.ok(relErr(ref, got.scores) < 1e-4, `scores: ${relErr(ref, got.scores)}`);
      const load = new Array<number>(4).fill(0);
      for (const g of slots) routing.decisions.get(g)!.forEach((e) => e >= 0 && load[e]++);
      assert.ok(load.filter((l) => l > 0).length >= 2, `the router spreads samples (${load})`);
      assert.ok(4 * Math.max(...load) <= 2 * 16 * topK, `padding that pays (${load})`);
      assert.deepEqual(calls, [[4, Math.max(...load), 128]], 'one run, every expert\'s block as wide as the most loaded one');
      // A batch of one at top-1 runs its expert's own graph: the three idle experts are not computed.
      calls.length = 0;
      const x0 = tf.slice(x, [0, 0, 0, 0], [1, 8, 8, 2]);
      const one = await session.runRouted(toNchw(x0));
      x0.dispose();
      // (At top-2 its two experts stack: 4 padded rows for 2, within the rule's bound.)
      assert.deepEqual(calls, topK === 1 ? [] : [[4, 1, 128]], 'a lone expert runs its own graph');
      assert.ok(relErr(ref.subarray(0, 3), one.scores) < 1e-4, 'the same scores for sample 0');
    } finally {
      proto.once = once;
      await session.release();
      x.dispose();
      model.dispose();
    }
  }
});

const inGraph: [string, () => Network][] = [
  ['vgg-moe', () => createModel('vgg-moe', { inputShape: [8, 8, 2], numClasses: 3, groups: 4, widths: [8, 8, 16, 16], hidden: 16, experts: 4, topK: 1 })],
  ['resnet-moe', () => createModel('resnet-moe', { inputShape: [8, 8, 2], numClasses: 3, width: 4, blocksPerStage: 2, experts: 3, topK: 2 })],
  ['mlp-moe', () => createModel('mlp-moe', { inputShape: [8, 8, 2], numClasses: 3, experts: 4, hidden: 8, topK: 2 })],
];

for (const [name, make] of inGraph) {
  test(`${name} without a capacity limit dispatches inside one graph: TF.js's experts, scores within 1e-4 and FLOPs, each expert's nodes on exactly its rows, node and web alike`, async () => {
    const model = make();
    randomizeStatistics(model, 3);
    const x = tf.tidy(() => tf.mul(tf.randomNormal([16, 8, 8, 2], 0, 1, 'float32', 8), tf.reshape(tf.linspace(0.1, 3, 16), [16, 1, 1, 1])));
    spreadRouters(model, x);
    const dir = path.join(tmp, `${name}-in-graph`);
    const m = await saveSegments(model, dir);
    assert.ok(m.segments.every((s) => s.kind === 'plain'), 'no runtime-dispatched segment');
    const mixtures = m.segments.flatMap((s) => (s.kind === 'plain' ? (s.mixtures ?? []) : []));
    assert.equal(mixtures.length, name === 'resnet-moe' ? 2 : 1);
    const routing = RoutingState.start('hard', 16);
    const ref = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
    const { fixed, backbone } = model.routedMacs(1);
    const slots = mixtures.flatMap((mx) => (mx.topK > 1 ? Array.from({ length: mx.topK }, (_, k) => `${mx.name}.k${k}`) : [mx.name]));
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    const runs: unknown[] = [];
    const graphs = (session as unknown as { parts: { graph: { run: (...a: unknown[]) => Promise<unknown> } }[] }).parts.map((p) => p.graph);
    const run = graphs[0].run;
    try {
      for (const g of graphs) g.run = function (...a: unknown[]) { runs.push(g); return run.apply(this, a); };
      const got = await session.runRouted(toNchw(x));
      assert.equal(runs.length, m.segments.length, 'one session run per segment');
      slots.forEach((g, j) => assert.deepEqual([...got.counts[j]], [...routing.decisions.get(g)!], `same experts per sample at ${g}`));
      assert.ok(relErr(ref, got.scores) < 1e-4, `scores: ${relErr(ref, got.scores)}`);
      got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - (fixed + routing.executedMacs[i]) / backbone) < 1e-9, `FLOPs ratio of sample ${i}`));
      // The segment holding the first mixture, on its own input: every node of expert e sees exactly e's rows.
      const at = m.segments.findIndex((s) => s.kind === 'plain' && s.mixtures);
      const seg = m.segments[at];
      const input = tf.tidy(() => {
        let y: tf.Tensor = x;
        let sel = fullSel(2);
        for (const l of model.layers) {
          if (l.name === seg.name.split('..')[0]) break;
          ({ y, sel } = l.call(y, sel, { plan: model.plan(1), training: false, routing: RoutingState.start('hard', 16) }));
        }
        return toNchw(y.rank === 4 ? y : tf.reshape(y, [16, 1, 1, -1]));
      });
      const mx = mixtures[0];
      const load = new Array<number>(mx.experts).fill(0);
      for (const g of slots.filter((g) => g === mx.name || g.startsWith(`${mx.name}.k`))) routing.decisions.get(g)!.forEach((e) => load[e]++);
      assert.ok(load.filter((l) => l > 0).length >= 2, `the router spreads samples (${load})`);
      const nodes = await profileNodes(path.join(dir, seg.graph.file), { x: { data: input, dims: [16, ...seg.input] } }, 1);
      for (let e = 0; e < mx.experts; e++) {
        const mine = nodes.filter((n) => n.name.includes(`/${mx.name}.e${e}/`));
        assert.ok(load[e] === 0 || mine.length > 0, `expert ${e}'s nodes ran`);
        for (const n of mine) assert.equal(n.rows, load[e], `${n.name} (${n.op}) ran on ${n.rows} rows, expert ${e} has ${load[e]}`);
      }
      // The browser entry runs the same graph.
      const http = await serveFolder(dir, 'g');
      try {
        const web = await loadWebSegments(`${http.base}/g`);
        const w = await web.runRouted(toNchw(x));
        assert.deepEqual(w.counts, got.counts);
        assert.ok(relErr(got.scores, w.scores) < 1e-5);
        await web.release();
      } finally {
        http.close();
      }
    } finally {
      for (const g of graphs) g.run = run;
      await session.release();
      x.dispose();
      model.dispose();
    }
  });
}

test('in-graph mixtures: a batch of one (idle experts run on empty parts), a router that ties (every sample to expert 0, at k = 2 to 0 and 1, as the shared rule breaks ties), the router\'s scores alone counted, a graph whose experts the manifest does not know, and a manifest that does not add up', async () => {
  for (const topK of [2, 1]) await tiesAndLies(topK);
});

async function tiesAndLies(topK: number): Promise<void> {
  const model = createModel('mlp-moe', { inputShape: [8, 8, 2], numClasses: 3, experts: 4, hidden: 8, topK });
  tf.tidy(() => {
    for (const w of model.weights()) if (w.name.startsWith('moe.gate.fc.')) w.variable.assign(tf.zerosLike(w.variable));
  });
  const dir = path.join(tmp, `mlp-moe-ties-k${topK}`);
  const m = await saveSegments(model, dir);
  assert.equal(m.format, 'dynn-segments/2');
  // The router's cost is its E scores on the 128 inputs (the noise scales are not computed at inference).
  assert.equal(m.segments[0].kind === 'plain' && m.segments[0].mixtures?.[0].gateMacs, 128 * 4);
  const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
  const x = tf.randomNormal([5, 8, 8, 2], 0, 1, 'float32', 2);
  try {
    for (const n of [5, 1]) {
      const xs = tf.slice(x, 0, n);
      const routing = RoutingState.start('hard', n);
      const ref = tf.tidy(() => model.forward(xs, model.plan(1), { routing }).dataSync() as Float32Array);
      const got = await session.runRouted(toNchw(xs));
      xs.dispose();
      for (let s = 0; s < topK; s++) {
        assert.deepEqual([...got.counts[s]], new Array(n).fill(s));
        assert.deepEqual([...routing.decisions.get(topK === 1 ? 'moe' : `moe.k${s}`)!], new Array(n).fill(s));
      }
      assert.ok(relErr(ref, got.scores) < 1e-4);
    }
  } finally {
    x.dispose();
    await session.release();
    model.dispose();
  }
  const text = readFileSync(path.join(dir, MANIFEST_FILE), 'utf8');
  const bad = (edit: (mx: Record<string, unknown>) => void) => {
    const m = JSON.parse(text);
    edit(m.segments[0].mixtures[0]);
    return JSON.stringify(m);
  };
  assert.throws(() => parseManifest(bad((mx) => (mx.topK = 5)), 'x'), /mixtures\.0\.topK: top-k 5 exceeds the 4 experts/);
  assert.throws(() => parseManifest(bad((mx) => (mx.expertMacs = [1, 2])), 'x'), /2 expert costs for 4 experts/);
  if (topK !== 1) return;
  // A manifest that claims fewer experts than the graph routes to: refused when the graph names one it lacks.
  const spread = createModel('mlp-moe', { inputShape: [8, 8, 2], numClasses: 3, experts: 4, hidden: 8, topK });
  tf.tidy(() => {
    for (const w of spread.weights()) if (w.name === 'moe.gate.fc.kernel') w.variable.assign(tf.randomNormal(w.variable.shape, 0, 1, 'float32', 4));
  });
  const lies = path.join(tmp, 'mlp-moe-lies');
  const honest = await saveSegments(spread, lies);
  spread.dispose();
  const claimed = JSON.parse(JSON.stringify(honest));
  Object.assign(claimed.segments[0].mixtures[0], { experts: 1, expertMacs: [1] });
  writeFileSync(path.join(lies, MANIFEST_FILE), JSON.stringify(claimed));
  const s2 = (await openSession(lies, { threads: 1 })) as SegmentedSession;
  try {
    await assert.rejects(s2.runRouted(Float32Array.from({ length: 8 * 128 }, (_, i) => ((i * 7919) % 13) - 6)), /moe: the graph chose expert [1-3] for sample \d+, not one of its 1/);
  } finally {
    await s2.release();
  }
}
