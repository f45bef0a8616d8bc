import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { Rng } from '../util/rng.js';
import { exportOnnx } from './export.js';
import { ModelProto } from './onnx-proto.js';
import { randomizeStatistics, relErr } from './fixtures.js';

await initEngine('wasm');

interface Msg {
  node: { attribute: { g?: Msg }[] }[];
  initializer: { name: string; raw_data: Uint8Array }[];
}

/** Every int64 constant of the model's subgraphs, by name. */
function int64Consts(bytes: Uint8Array): Map<string, number[]> {
  const top = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, defaults: true, arrays: true }).graph as Msg;
  const out = new Map<string, number[]>();
  const walk = (g: Msg) => {
    for (const t of g.initializer) {
      if (t.raw_data.length % 8 !== 0 || t.raw_data.length === 0) continue;
      const view = new DataView(t.raw_data.buffer, t.raw_data.byteOffset, t.raw_data.byteLength);
      out.set(t.name, Array.from({ length: t.raw_data.length / 8 }, (_, i) => Number(view.getBigInt64(i * 8, true))));
    }
    for (const n of g.node) for (const a of n.attribute) if (a.g) walk(a.g);
  };
  walk(top);
  return out;
}

test('channelMultiple 16: TF.js, the cost model and the export run the same rounded channels at every level; ORT matches TF.js', async () => {
  const model = createModel('vgg-w', { channelMultiple: 16 });
  randomizeStatistics(model, 3);
  const before = tf.memory().numTensors;
  const { bytes, metadata } = exportOnnx(model);
  assert.equal(tf.memory().numTensors, before, 'export must not leak tensors');
  const consts = int64Consts(bytes);
  const full = { 'c2.conv': 32, 'c3.conv': 64, 'c4.conv': 64, fc1: 256 } as Record<string, number>;
  const seen: string[] = [];
  for (const lv of metadata.levels) {
    const ch = model.channels(lv.u);
    const row = Object.keys(full).map((k) => ch.get(k)!);
    for (const c of row.slice(0, 3)) assert.equal(c % 16, 0, `level ${lv.level}: ${row} are multiples of 16`);
    // The export's constant slice of each kernel (absent: the layer runs at full width).
    for (const [k, want] of Object.entries(full)) {
      const ends = consts.get(`L${lv.level}/${k}.kernel/ends`);
      // Conv kernels are OIHW (output first); dense kernels [in, out].
      const got = ends ? (k === 'fc1' ? ends[1] : ends[0]) : want;
      assert.equal(got, ch.get(k), `level ${lv.level}: ${k} exports ${got} channels, TF.js runs ${ch.get(k)}`);
    }
    // FLOPs count the channels that run: c2's MACs are 28*28*9*32 per output channel.
    const c2 = model.cost(lv.u).layers.find((l) => l.name === 'c2.conv')!;
    assert.equal(c2.macs, 28 * 28 * 9 * 32 * ch.get('c2.conv')!);
    seen.push(row.join());
  }
  assert.deepEqual(seen, ['16,16,16,32', '16,16,16,64', '16,32,32,96', '16,32,32,128', '32,48,48,160', '32,48,48,192', '32,64,64,224', '32,64,64,256']);

  await assertOrtMatches(model, bytes, metadata.levels);
  assert.equal(tf.memory().numTensors, before, 'tensors stay flat');
  model.dispose();
});

/** ONNX Runtime's scores of the exported model match TF.js's within 1e-4 at every level. */
async function assertOrtMatches(model: Network, bytes: Uint8Array, levels: { level: number; u: number }[]) {
  const s = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
  const x = tf.randomNormal([3, 28, 28, 1], 0, 1, 'float32', 5);
  const nchw = tf.tidy(() => tf.transpose(x, [0, 3, 1, 2]).dataSync() as Float32Array);
  for (const lv of levels) {
    const ref = tf.tidy(() => model.predict(x, lv.u).dataSync() as Float32Array);
    const out = await s.run({ images: new ort.Tensor('float32', nchw, [3, 1, 28, 28]), u: new ort.Tensor('float32', Float32Array.of(lv.u), []) });
    const err = relErr(ref, out.scores.data as Float32Array);
    assert.ok(err < 1e-4, `level ${lv.level}: error ${err}`);
  }
  await s.release();
  x.dispose();
}

/** The [out, in] channels of a level's exported conv kernel (OIHW): its constant slice, else the full kernel. */
function kernelChannels(consts: Map<string, number[]>, level: number, layer: string, full: [number, number]): [number, number] {
  const got = [...full] as [number, number];
  const ends = consts.get(`L${level}/${layer}.kernel/ends`);
  const axes = consts.get(`L${level}/${layer}.kernel/axes`);
  ends?.forEach((e, i) => {
    if (axes![i] < 2) got[axes![i]] = Math.min(e, full[axes![i]]);
  });
  return got;
}

test('throttleStem: the stem takes the rounded channels c2 had and c2 keeps its full output; TF.js, the cost model and the export agree per level; ORT matches TF.js', async () => {
  const model = createModel('vgg-w', { channelMultiple: 16, throttleStem: true });
  randomizeStatistics(model, 3);
  const before = tf.memory().numTensors;
  const { bytes, metadata } = exportOnnx(model);
  const consts = int64Consts(bytes);
  const seen: string[] = [];
  for (const lv of metadata.levels) {
    const ch = model.channels(lv.u);
    const stem = ch.get('stem.conv')!;
    assert.equal(ch.get('c2.conv'), 32, `level ${lv.level}: c2 runs its full output`);
    // What the exported level runs: the stem's output slice, and c2's kernel sliced on its input only.
    assert.deepEqual(kernelChannels(consts, lv.level, 'stem.conv', [32, 1]), [stem, 1], `level ${lv.level}: stem`);
    assert.deepEqual(kernelChannels(consts, lv.level, 'c2.conv', [32, 32]), [32, stem], `level ${lv.level}: c2`);
    assert.deepEqual(kernelChannels(consts, lv.level, 'c3.conv', [64, 32]), [ch.get('c3.conv'), 32], `level ${lv.level}: c3`);
    // FLOPs count the channels that run.
    const macs = Object.fromEntries(model.cost(lv.u).layers.map((l) => [l.name, l.macs]));
    assert.equal(macs['stem.conv'], 28 * 28 * 9 * stem);
    assert.equal(macs['c2.conv'], 28 * 28 * 9 * stem * 32);
    seen.push(['stem.conv', 'c2.conv', 'c3.conv', 'c4.conv', 'fc1'].map((k) => ch.get(k)).join());
  }
  assert.deepEqual(seen, ['16,32,16,16,32', '16,32,16,16,64', '16,32,32,32,96', '16,32,32,32,128', '32,32,48,48,160', '32,32,48,48,192', '32,32,64,64,224', '32,32,64,64,256']);
  assert.equal(tf.memory().numTensors, before, 'export must not leak tensors');
  await assertOrtMatches(model, bytes, metadata.levels);
  // Saved in the run config: rebuilt from it, the model throttles the stem again; absent, c2 as before.
  assert.equal(model.config.args.throttleStem, true);
  const again = createModel(model.config.model, model.config.args);
  assert.deepEqual([...again.channels(0.3)], [...model.channels(0.3)]);
  const c2Throttled = createModel('vgg-w', { channelMultiple: 16 });
  assert.deepEqual([c2Throttled.channels(0.3).get('stem.conv'), c2Throttled.channels(0.3).get('c2.conv')], [32, 16]);
  // Without the rounding the stem takes c2's exact group counts.
  const exact = createModel('vgg-w', { throttleStem: true });
  assert.deepEqual([1 / 9, 0.3, 1].map((u) => [exact.channels(u).get('stem.conv'), exact.channels(u).get('c2.conv')]), [[4, 32], [8, 32], [32, 32]]);
  for (const m of [model, again, c2Throttled, exact]) m.dispose();
});

test('throttleBoth: the stem and c2 both take the rounded channels; the export slices both, the cost model counts them, ORT matches TF.js', async () => {
  const model = createModel('vgg-w', { channelMultiple: 16, throttleBoth: true });
  randomizeStatistics(model, 5);
  const { bytes, metadata } = exportOnnx(model);
  const consts = int64Consts(bytes);
  const seen: string[] = [];
  for (const lv of metadata.levels) {
    const ch = model.channels(lv.u);
    const [stem, c2] = [ch.get('stem.conv')!, ch.get('c2.conv')!];
    assert.deepEqual(kernelChannels(consts, lv.level, 'stem.conv', [32, 1]), [stem, 1], `level ${lv.level}: stem`);
    assert.deepEqual(kernelChannels(consts, lv.level, 'c2.conv', [32, 32]), [c2, stem], `level ${lv.level}: c2 sliced on both axes`);
    const macs = Object.fromEntries(model.cost(lv.u).layers.map((l) => [l.name, l.macs]));
    assert.equal(macs['stem.conv'], 28 * 28 * 9 * stem);
    assert.equal(macs['c2.conv'], 28 * 28 * 9 * stem * c2);
    seen.push(['stem.conv', 'c2.conv', 'c3.conv'].map((k) => ch.get(k)).join());
  }
  assert.deepEqual(seen, ['16,16,16', '16,16,16', '16,16,32', '16,16,32', '32,32,48', '32,32,48', '32,32,64', '32,32,64']);
  // The widest range: the cheapest level costs less than with the stem or c2 throttled alone.
  const stemOnly = createModel('vgg-w', { channelMultiple: 16, throttleStem: true });
  const c2Only = createModel('vgg-w', { channelMultiple: 16 });
  const cheapest = (m: typeof model) => m.cost(1 / 9).flops / m.cost(1).flops;
  assert.ok(cheapest(model) < 0.8 * Math.min(cheapest(stemOnly), cheapest(c2Only)), `${cheapest(model)} against ${cheapest(stemOnly)}, ${cheapest(c2Only)}`);
  await assertOrtMatches(model, bytes, metadata.levels);
  // Saved in the run config: rebuilt from it, the model throttles both again.
  const again = createModel(model.config.model, model.config.args);
  assert.equal(again.config.args.throttleBoth, true);
  assert.deepEqual([...again.channels(0.3)], [...model.channels(0.3)]);
  for (const m of [model, stemOnly, c2Only, again]) m.dispose();
});

test('channelMultiple: absent keeps exact group counts (runs saved before it load unchanged); rebuilt from the saved config it rounds again', () => {
  const plain = createModel('vgg-w');
  assert.equal('channelMultiple' in plain.config.args, false, 'absent from the saved config of a run trained without it');
  assert.deepEqual([...plain.channels(0.3)].filter(([k]) => k === 'c2.conv' || k === 'fc1'), [['c2.conv', 8], ['fc1', 64]]);
  const rounded = createModel('vgg-w', { channelMultiple: 16 });
  assert.equal(rounded.config.args.channelMultiple, 16, 'the rounding is part of the run config');
  const again = createModel(rounded.config.model, rounded.config.args);
  assert.deepEqual([...again.channels(0.3)], [...rounded.channels(0.3)]);
  assert.equal(rounded.channels(0.3).get('c2.conv'), 16);
  const mlp = createModel('mlp-w', { hidden: [64, 32], groups: 8, channelMultiple: 16 });
  assert.deepEqual([1 / 9, 0.5, 1].map((u) => mlp.channels(u).get('fc2')), [16, 16, 32]);
  for (const m of [plain, rounded, again, mlp]) m.dispose();
});

test('channelMultiple and throttleStem: clear errors for a model without rounded layers or a throttleable stem, a dynamic model, a bad value and independent gating', () => {
  assert.throws(() => createModel('resnet-d', { channelMultiple: 16 }), /channelMultiple \(--channel-multiple\) needs a model whose widthwise layers round their channels \(expected one of mlp-w, vgg-exits, vgg-w\), not resnet-d/);
  assert.throws(() => createModel('vgg-w', { channelMultiple: 16, dynamic: 'width' }), /--dynamic width does not take it/);
  assert.throws(() => createModel('vgg-w', { channelMultiple: 0 }), /channelMultiple must be a positive integer, got 0/);
  assert.throws(() => createModel('vgg-exits', { throttleStem: true }), /throttleStem \(--throttle-stem\) needs a model with a throttleable stem \(expected one of vgg-w\), not vgg-exits/);
  assert.throws(() => createModel('vgg-w', { throttleStem: true, dynamic: 'width' }), /--dynamic width does not take it/);
  assert.throws(() => createModel('vgg-w', { throttleStem: 'yes' as unknown as boolean }), /throttleStem must be true or false, got yes/);
  createModel('vgg-exits', { throttleStem: false }).dispose(); // false asks for nothing: any model takes it
  assert.throws(() => createModel('resnet-d', { throttleBoth: true }), /throttleBoth \(--throttle-both\) needs a model with a throttleable stem \(expected one of vgg-w\), not resnet-d/);
  assert.throws(() => createModel('vgg-w', { throttleBoth: 1 as unknown as boolean }), /throttleBoth must be true or false, got 1/);
  assert.throws(() => createModel('vgg-w', { throttleStem: true, throttleBoth: true }), /give one of throttleStem \(--throttle-stem: the stem in place of c2\) and throttleBoth/);
  const model = createModel('vgg-w', { channelMultiple: 8 });
  assert.throws(() => model.channels(model.plan(0.5, { gating: 'independent', rng: new Rng(1) })), /need nested gating/);
  model.dispose();
});

test('training refuses rounded channels with independent gating before any step, not on the first random draw', async () => {
  const { train } = await import('../train/trainer.js');
  let steps = 0;
  await assert.rejects(
    train({ model: 'mlp-w', modelArgs: { channelMultiple: 8 }, gating: 'independent', dataset: 'synthetic', epochs: 1, onStep: () => steps++ }),
    /channels rounded to multiples of 8 need nested gating/,
  );
  assert.equal(steps, 0);
});
