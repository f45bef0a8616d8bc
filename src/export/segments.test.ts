import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { fullSel } from '../layers/select.js';
import type { Layer } from '../layers/layer.js';
import type { ChannelSel, RunContext } from '../layers/types.js';
import type { Network } from '../models/network.js';
import { RoutingState } from '../route/context.js';
import { gatedDenseTestNet, gatedTestNet, TEST_GROUPS } from '../route/fixtures.js';
import { GatedDenseUnit } from '../route/dense.js';
import { GatedResidualBlock } from '../route/residual.js';
import { innerContext } from '../route/unit.js';
import { randomizeStatistics, relErr } from './fixtures.js';
import { exportSegments, saveSegments } from './segments.js';
import { MANIFEST_FILE, parseManifest, SEGMENT_IO, segmentGraphs } from './manifest.js';
import { openSession } from '../runtime/node.js';
import type { SegmentedSession } from '../runtime/segments.js';

await initEngine('wasm');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-segments-'));

/**
 * The routing test network with gates that tell samples apart: large random output kernels, and biases
 * that centre each gate's logits on `x` (the gates' pooled features are small and close together), so samples take
 * different routes.
 */
function dynamicNet(x: tf.Tensor, model: Network = gatedTestNet('acs-gn')): Network {
  randomizeStatistics(model, 3);
  const ctx: RunContext = { plan: model.plan(1), training: false };
  let y = x;
  let sel: ChannelSel = fullSel(2);
  let seed = 5;
  for (const l of model.layers) {
    if (l instanceof GatedResidualBlock || l instanceof GatedDenseUnit) {
      const gate = l.gate;
      const [kernel, bias] = ['kernel', 'bias'].map((s) => gate.weights().find((w) => w.name === `${gate.name}.fc.${s}`)!.variable);
      // Zero hidden biases: the gate's features then scale with its input, so they differ by sample.
      for (const w of gate.weights()) if (/\.(reduce|conv1|conv2)\.bias$/.test(w.name)) w.variable.assign(tf.zerosLike(w.variable));
      // acs-dg: a learned grouping (the first gate off), so U masks the kernel.
      for (const w of gate.weights()) if (w.name.endsWith('.gates')) w.variable.assign(tf.tensor1d(Array.from({ length: w.variable.size }, (_, i) => (i === 0 ? -1 : 1))));
      tf.tidy(() => {
        kernel.assign(tf.randomNormal(kernel.shape, 0, 500, 'float32', seed++));
        const feats = gate.children().slice(0, -1).reduce<{ y: tf.Tensor; sel: ChannelSel }>((a, c) => c.call(a.y, a.sel, ctx), { y, sel }).y;
        const mean = tf.mean(tf.matMul(feats as tf.Tensor2D, kernel as tf.Tensor2D), 0);
        bias.assign(tf.sub(tf.linspace(1.5, -0.5, bias.shape[0]), mean));
      });
    }
    const next = tf.tidy(() => l.call(y, sel, ctx).y);
    sel = l.outSel(sel, ctx.plan);
    if (y !== x) y.dispose();
    y = next;
  }
  y.dispose();
  return model;
}

const toNchw = (t: tf.Tensor) => tf.tidy(() => (t.rank === 4 ? tf.transpose(t, [0, 3, 1, 2]) : t).dataSync() as Float32Array);
const fromNchw = (data: Float32Array, dims: number[]) => tf.tidy(() => (dims.length === 4 ? tf.transpose(tf.tensor(data, dims), [0, 2, 3, 1]) : tf.tensor(data, dims)));

async function ortRun(bytes: Uint8Array, feeds: Record<string, ort.Tensor>, fetch: string): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
  try {
    return (await s.run(feeds, [fetch]))[fetch].data as Float32Array;
  } finally {
    await s.release();
  }
}

const images = (n: number, seed: number) => tf.randomNormal([n, 8, 8, 2], 0, 1, 'float32', seed) as tf.Tensor4D;
/** The images the gates are centred on; their scales differ, so their pooled features do. */
const centre = tf.tidy(() => tf.mul(images(16, 7), tf.reshape(tf.linspace(0.2, 3, 16), [16, 1, 1, 1])));

/** A gated block's output at k inner groups as TF.js's routed pass computes it (`inner` the plan of k groups). */
function blockAt(block: GatedResidualBlock | GatedDenseUnit, x: tf.Tensor, sel: ChannelSel, ctx: RunContext, inner: RunContext): tf.Tensor {
  if (block instanceof GatedResidualBlock) return block.runAt(x, sel, ctx, inner);
  // A dense unit: BN-ReLU on the input at the full plan, then the new channels at k groups, concatenated.
  const [bn1, relu1] = block.children();
  const h = relu1.call(bn1.call(x, sel, ctx).y, sel, ctx).y;
  return tf.concat([x, block.runAt(h, sel, ctx, inner)], 3);
}

/** Every segment of `model`'s export against TF.js within 1e-4: the plain runs, each gate, each body at every k. */
async function segmentParity(model: Network, names: string[], groups = TEST_GROUPS): Promise<void> {
  const { manifest, files } = exportSegments(model, { threshold: 0.4 });
  assert.deepEqual(manifest.segments.map((s) => `${s.kind}:${s.name}`), names);
  const plan = model.plan(1);
  const ctx: RunContext = { plan, training: false };
  const before = tf.memory().numTensors;
  const x0 = images(6, 1);
  let x: tf.Tensor = x0;
  let sel: ChannelSel = fullSel(2);
  for (const seg of manifest.segments) {
    const layers = model.layers.filter((l) => (seg.kind === 'gated' ? l.name === seg.name : seg.name.split('..').includes(l.name) || isBetween(model, seg.name, l)));
    const feedX = new ort.Tensor('float32', toNchw(x), [6, ...seg.input]);
    let y: tf.Tensor;
    if (seg.kind === 'plain') {
      y = tf.tidy(() => layers.reduce<{ y: tf.Tensor; sel: ChannelSel }>((a, l) => l.call(a.y, a.sel, ctx), { y: x, sel }).y);
      const got = await ortRun(files.get(seg.graph.file)!, { [SEGMENT_IO.x]: feedX }, SEGMENT_IO.y);
      assert.ok(relErr(toNchw(y), got) < 1e-4, `${seg.name}`);
    } else if (seg.kind === 'gated') {
      const block = layers[0] as GatedResidualBlock | GatedDenseUnit;
      const gate = block.gate;
      const z = tf.tidy(() => gate.call(x, sel, ctx).y);
      const logits = await ortRun(files.get(seg.gate.file)!, { [SEGMENT_IO.x]: feedX }, SEGMENT_IO.logits);
      assert.ok(relErr(z.dataSync(), logits) < 1e-4, `${seg.name} gate`);
      z.dispose();
      for (let k = 0; k <= groups; k++) {
        const ref = tf.tidy(() => toNchw(blockAt(block, x, sel, ctx, innerContext(ctx, block, k))));
        const got = await ortRun(files.get(seg.body.file)!, { [SEGMENT_IO.x]: feedX, [SEGMENT_IO.k]: new ort.Tensor('float32', Float32Array.of(k), []) }, SEGMENT_IO.y);
        assert.ok(relErr(ref, got) < 1e-4, `${seg.name} body at k = ${k}`);
      }
      y = tf.tidy(() => blockAt(block, x, sel, ctx, ctx));
    } else assert.fail(`${seg.name}: no switch in these models`);
    for (const l of layers) sel = l.outSel(sel, plan);
    if (x !== x0) x.dispose();
    x = y;
  }
  x.dispose();
  x0.dispose();
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks');
  model.dispose();
}

const residualSegments = ['plain:stem.conv..stem.relu', 'gated:b1', 'gated:b2', 'plain:gap..classifier'];

test('every segment matches TF.js within 1e-4: the plain runs, each gate, and each body at every k in 0..G (the gated path: shortcut at the full plan)', async () => {
  await segmentParity(dynamicNet(centre), residualSegments);
});

test('acs-dg: the gates\' DGConv (kernel masked by its learned U) and SE lower, every segment within 1e-4 of TF.js', async () => {
  await segmentParity(dynamicNet(centre, gatedTestNet('acs-dg')), residualSegments);
});

test('gated dense units: each body is concat(x, new channels) at every k (zeros at k = 0), every segment within 1e-4 of TF.js', async () => {
  await segmentParity(dynamicNet(centre, gatedDenseTestNet('acs-gn')), ['plain:stem.conv', 'gated:u1', 'gated:u2', 'plain:final']);
});

test('per-channel decisions (a masked fidelity mode) are refused, for residual blocks and dense units alike', () => {
  for (const model of [gatedTestNet('acs-gn', 4, 'channel'), gatedDenseTestNet('acs-dg', 4, 'channel')]) {
    assert.throws(() => exportSegments(model), /(b1|u1) decides per channel \(--decisions channel\), a masked fidelity mode that does not export; train with nested decisions to deploy/);
    model.dispose();
  }
});

/** Whether layer `l` lies in the plain run `first..last`. */
function isBetween(model: Network, name: string, l: Layer): boolean {
  const [first, last] = name.split('..');
  const i = model.layers.findIndex((k) => k.name === first);
  const j = model.layers.findIndex((k) => k.name === (last ?? first));
  const at = model.layers.indexOf(l);
  return at >= i && at <= j;
}

/** TF.js's hard routed forward: scores, each block's counts and each sample's executed FLOPs ratio. */
function tfRouted(model: Network, x: tf.Tensor, threshold: number) {
  const routing = RoutingState.start('hard', x.shape[0], { threshold });
  const scores = tf.tidy(() => model.forward(x, model.plan(1), { routing }).dataSync() as Float32Array);
  const { fixed, backbone } = model.routedMacs(model.plan(1));
  return { scores, decisions: routing.decisions, ratios: Array.from(routing.executedMacs, (m) => (fixed + m) / backbone) };
}

for (const [what, net] of [
  ['acs-gn residual blocks', () => gatedTestNet('acs-gn')],
  ['acs-dg residual blocks', () => gatedTestNet('acs-dg')],
  ['acs-gn dense units', () => gatedDenseTestNet('acs-gn')],
  ['acs-dg dense units', () => gatedDenseTestNet('acs-dg')],
] as const) {
  test(`the dispatched model in ONNX Runtime (${what}): the same routes, scores within 1e-4 and FLOPs ratios as TF.js hard routing, for mixed routes, one route for all, and routes left empty`, async () => {
    const model = dynamicNet(centre, net());
    const dir = path.join(tmp, `net-${what.replace(/ /g, '-')}`);
    const m = await saveSegments(model, dir, { threshold: 0.4 });
    const blocks = m.segments.filter((s) => s.kind === 'gated').map((s) => s.name);
    const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
    try {
      const x = centre;
      const nchw = toNchw(x);
      for (const threshold of [0.4, 0, 1]) {
        const ref = tfRouted(model, x, threshold);
        const got = await session.runRouted(nchw, { threshold });
        assert.deepEqual(got.counts.map((c) => [...c]), blocks.map((b) => [...ref.decisions.get(b)!]), `routes at threshold ${threshold}`);
        assert.ok(relErr(ref.scores, got.scores) < 1e-4, `scores at threshold ${threshold}`);
        got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - ref.ratios[i]) < 1e-9, `FLOPs ratio of sample ${i}`));
        const routes = new Set(got.counts.flatMap((c) => [...c]));
        if (threshold === 0) assert.deepEqual([...routes], [TEST_GROUPS], 'threshold 0: every sample runs every group');
        if (threshold === 1) assert.deepEqual([...routes], [0], 'threshold 1: no group runs');
        if (threshold === 0.4) {
          assert.ok(got.counts.every((c) => new Set(c).size >= 2), 'mixed routes in each block');
          assert.ok(got.counts.some((c) => new Set(c).size <= TEST_GROUPS), 'some route of 0..G has no sample');
        }
      }
      // The manifest's threshold by default; NHWC input is converted.
      const byDefault = await session.runRouted(x.dataSync() as Float32Array, { layout: 'NHWC' });
      assert.ok(relErr(tfRouted(model, x, 0.4).scores, byDefault.scores) < 1e-4);
    } finally {
      await session.release();
      model.dispose();
    }
  });
}

/** A registered dynamic model exported and dispatched in ONNX Runtime: the segments named, TF.js's routes, scores and FLOPs ratios. */
async function registeredParity(model: Network, name: string, segments: string[], gated: string[]): Promise<void> {
  const dir = path.join(tmp, name);
  const m = await saveSegments(model, dir, { threshold: 0.4 });
  assert.deepEqual(m.segments.map((s) => s.name), segments);
  const session = (await openSession(dir, { threads: 1 })) as SegmentedSession;
  try {
    const ref = tfRouted(model, centre, 0.4);
    const got = await session.runRouted(toNchw(centre));
    assert.deepEqual(got.counts.map((c) => [...c]), gated.map((b) => [...ref.decisions.get(b)!]));
    assert.ok(got.counts.some((c) => new Set(c).size >= 2), 'mixed routes');
    assert.ok(relErr(ref.scores, got.scores) < 1e-4);
    got.flopsRatios.forEach((r, i) => assert.ok(Math.abs(r - ref.ratios[i]) < 1e-9));
  } finally {
    await session.release();
    model.dispose();
  }
}

test('a small resnet38 with acs-gn gates (registered model, 3 stages): the dispatched export gives TF.js\'s routes and scores', async () => {
  const model = dynamicNet(centre, createModel('resnet38', { dynamic: 'acs-gn', widths: [8, 8, 16], blocksPerStage: 1, groups: 4, inputShape: [8, 8, 2], numClasses: 3 }));
  await registeredParity(model, 'resnet38', ['stem.conv..stem.relu', 's0.b0', 's1.b0', 's2.b0', 'gap..classifier'], ['s0.b0', 's1.b0', 's2.b0']);
});

test('layer skipping (skip on resnet-d, skip-ff on resnet38: one group per block, downsampling blocks plain): every segment within 1e-4 of TF.js at k = 0 (the identity) and 1, and the dispatched export gives TF.js\'s routes and scores', async () => {
  const resnetD = () => createModel('resnet-d', { dynamic: 'skip', width: 4, blocksPerStage: 1, inputShape: [8, 8, 2], numClasses: 3 });
  await segmentParity(dynamicNet(centre, resnetD()), ['plain:stem.conv..stem.relu', 'gated:s0.b0', 'plain:s1.down', 'gated:s1.b0', 'plain:s2.down', 'gated:s2.b0', 'plain:gap..classifier'], 1);
  await registeredParity(dynamicNet(centre, resnetD()), 'resnet-d-skip', ['stem.conv..stem.relu', 's0.b0', 's1.down', 's1.b0', 's2.down', 's2.b0', 'gap..classifier'], ['s0.b0', 's1.b0', 's2.b0']);
  const resnet38 = createModel('resnet38', { dynamic: 'skip-ff', widths: [4, 8, 8], blocksPerStage: 2, gateWidth: 4, inputShape: [8, 8, 2], numClasses: 3 });
  await registeredParity(dynamicNet(centre, resnet38), 'resnet38-skip-ff', ['stem.conv..stem.relu', 's0.b0', 's0.b1', 's1.b0', 's1.b1', 's2.b0', 's2.b1', 'gap..classifier'], ['s0.b0', 's0.b1', 's1.b1', 's2.b1']);
});

test('a small densenet41 with acs-dg gates (registered model, transitions between gated units): the dispatched export gives TF.js\'s routes and scores', async () => {
  const model = dynamicNet(centre, createModel('densenet41', { dynamic: 'acs-dg', growth: 4, units: 1, groups: 4, gateWidth: 4, inputShape: [8, 8, 2], numClasses: 3 }));
  await registeredParity(model, 'densenet41', ['stem.conv', 'd0.u0', 't0', 'd1.u0', 't1', 'd2.u0', 'final'], ['d0.u0', 'd1.u0', 'd2.u0']);
});

test('the folder is written atomically and refused when it exists, unless forced; the manifest validates', async () => {
  const model = dynamicNet(centre);
  const dir = path.join(tmp, 'written');
  const before = tf.memory().numTensors;
  const m = await saveSegments(model, dir, { classNames: ['a', 'b', 'c'] });
  assert.equal(tf.memory().numTensors, before, 'export allocates no lasting tensor');
  const names = readdirSync(dir).sort();
  assert.deepEqual(names, [MANIFEST_FILE, ...m.segments.flatMap((s) => segmentGraphs(s).map((g) => g.file))].sort());
  assert.deepEqual(parseManifest(readFileSync(path.join(dir, MANIFEST_FILE), 'utf8'), 'm'), m);
  assert.equal(m.threshold, 0.5);
  assert.deepEqual(m.classNames, ['a', 'b', 'c']);
  writeFileSync(path.join(dir, 'mine.txt'), 'a user file');
  await assert.rejects(saveSegments(model, dir), /written exists; pass --force to overwrite it/);
  assert.ok(readdirSync(dir).includes('mine.txt'), 'the refused export left the folder alone');
  await saveSegments(model, dir, { force: true });
  assert.ok(!readdirSync(dir).includes('mine.txt'), 'forced: replaced by the new export');
  assert.deepEqual(readdirSync(tmp).filter((f) => f.includes('.tmp')), [], 'no temporary folder left');
  // --force replaces an earlier export or an empty folder, never anything else.
  const other = path.join(tmp, 'not-an-export');
  mkdirSync(other);
  writeFileSync(path.join(other, 'checkpoint.json'), '{}');
  await assert.rejects(saveSegments(model, other, { force: true }), /not-an-export is not an export by segments \(no manifest\.json of dynn-segments\/1 or dynn-segments\/2\); --force replaces only an earlier export or an empty folder/);
  assert.deepEqual(readdirSync(other), ['checkpoint.json'], 'the folder was left alone');
  const file = path.join(tmp, 'model.onnx');
  writeFileSync(file, 'x');
  await assert.rejects(saveSegments(model, file, { force: true }), /model\.onnx is a file; an export by segments is a folder/);
  const empty = path.join(tmp, 'empty');
  mkdirSync(empty);
  await saveSegments(model, empty, { force: true });
  assert.ok(readdirSync(empty).includes(MANIFEST_FILE));
  assert.throws(() => exportSegments(model, { threshold: 2 }), /threshold must be in \[0, 1\]/);
  model.dispose();
});

test('the ONNX checker (python3-onnx, full check) accepts every segment graph (acs-gn, acs-dg, dense units)', async (t) => {
  if (spawnSync('/usr/bin/python3', ['-c', 'import onnx'], { stdio: 'ignore' }).status !== 0) {
    t.skip('python3-onnx is not installed (apt-get install python3-onnx)');
    return;
  }
  const files: string[] = [];
  for (const [name, net] of [['gn', gatedTestNet('acs-gn')], ['dg', gatedTestNet('acs-dg')], ['dense', gatedDenseTestNet('acs-dg')]] as const) {
    const model = dynamicNet(centre, net);
    const dir = path.join(tmp, `checked-${name}`);
    await saveSegments(model, dir);
    model.dispose();
    files.push(...readdirSync(dir).filter((f) => f.endsWith('.onnx')).map((f) => path.join(dir, f)));
  }
  const script = 'import onnx,sys\nfor f in sys.argv[1:]: onnx.checker.check_model(onnx.load(f), full_check=True)\nprint("ok")';
  assert.equal(execFileSync('/usr/bin/python3', ['-c', script, ...files], { encoding: 'utf8' }).trim(), 'ok');
});
