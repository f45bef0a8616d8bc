import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { Network } from '../models/network.js';
import { Flatten } from '../layers/basic.js';
import { Dense } from '../layers/conv.js';
import { Layer } from '../layers/layer.js';
import type { ChannelSel, LayerCost, Shape } from '../layers/types.js';
import type { FrozenOp } from '../models/subnet.js';
import { exportOnnx, saveOnnx, type ExportOptions } from './export.js';
import { readOnnxMetadata, levelIndexFor } from './metadata.js';
import { ModelProto } from './onnx-proto.js';
import { randomizeStatistics, relErr } from './fixtures.js';
import { tfPads } from './lower.js';
import { Policy } from '../control/policy.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-export-'));


/** A random NHWC batch (TF.js) and the same values in NCHW (ONNX). */
function batch(model: Network, n: number, seed: number): { nhwc: tf.Tensor4D; nchw: Float32Array } {
  const [h, w, c] = model.inputShape;
  const nhwc = tf.randomNormal([n, h, w, c], 0, 1, 'float32', seed) as tf.Tensor4D;
  const nchw = tf.tidy(() => tf.transpose(nhwc, [0, 3, 1, 2]).dataSync() as Float32Array);
  return { nhwc, nchw };
}

async function session(bytes: Uint8Array) {
  return ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
}

async function ortScores(s: ort.InferenceSession, model: Network, nchw: Float32Array, n: number, u: number): Promise<Float32Array> {
  const [h, w, c] = model.inputShape;
  const out = await s.run({ images: new ort.Tensor('float32', nchw, [n, c, h, w]), u: new ort.Tensor('float32', Float32Array.of(u), []) });
  return out.scores.data as Float32Array;
}

function tfScores(model: Network, x: tf.Tensor, u: number): Float32Array {
  const y = model.predict(x, u);
  const data = y.dataSync() as Float32Array;
  y.dispose();
  return data;
}

const PARITY: [string, Record<string, unknown>][] = [
  ['vgg-w', { groups: 4 }],
  ['mlp-w', { groups: 4, hidden: [64, 32] }],
  ['resnet-d', { width: 8, blocksPerStage: 2 }],
  ['resnext-w', { groups: 4, inputShape: [12, 12, 3] }],
];

for (const [name, args] of PARITY) {
  test(`${name}: ONNX Runtime matches TF.js at every level within 1e-4, with per-level BatchNorm statistics`, async () => {
    const model = createModel(name, args);
    randomizeStatistics(model, 7);
    const before = tf.memory().numTensors;
    const { bytes, metadata } = exportOnnx(model);
    assert.equal(tf.memory().numTensors, before, 'export must not leak tensors');
    assert.deepEqual(metadata.levels.map((l) => l.u), model.levelUtilizations());
    const s = await session(bytes);
    const { nhwc, nchw } = batch(model, 3, 11);
    const seen = new Set<string>();
    for (const lv of metadata.levels) {
      const ref = tfScores(model, nhwc, lv.u);
      const got = await ortScores(s, model, nchw, 3, lv.u);
      assert.ok(relErr(ref, got) < 1e-4, `level ${lv.level}: error ${relErr(ref, got)}`);
      seen.add(Array.from(ref.slice(0, 4), (v) => v.toFixed(3)).join());
    }
    assert.ok(seen.size > 1, 'levels should give different scores (else the test could not tell levels apart)');
    // Utilizations between the exported representatives pick their own level, as in TF.js.
    for (const u of [0.03, 0.33, 0.61, 0.97]) {
      assert.ok(relErr(tfScores(model, nhwc, u), await ortScores(s, model, nchw, 3, u)) < 1e-4, `u = ${u}`);
    }
    await s.release();
    nhwc.dispose();
    model.dispose();
  });
}

test('u outside (0, 1] is clamped: above 1 runs the top level, 0, negative and NaN the cheapest; one level needs no If', async () => {
  const model = createModel('vgg-w', { groups: 4 });
  randomizeStatistics(model, 3);
  const { bytes, metadata } = exportOnnx(model);
  const s = await session(bytes);
  const { nhwc, nchw } = batch(model, 2, 5);
  const top = tfScores(model, nhwc, 1);
  const low = tfScores(model, nhwc, metadata.levels[0].u);
  assert.ok(relErr(top, await ortScores(s, model, nchw, 2, 1.5)) < 1e-4);
  for (const u of [0, -1, NaN]) assert.ok(relErr(low, await ortScores(s, model, nchw, 2, u)) < 1e-4, `u = ${u}`);
  await s.release();
  const single = await session(exportOnnx(model, { levels: [0.5] }).bytes);
  const mid = tfScores(model, nhwc, 0.5);
  for (const u of [0.1, 0.5, 1]) assert.ok(relErr(mid, await ortScores(single, model, nchw, 2, u)) < 1e-4, `one level, u = ${u}`);
  await single.release();
  nhwc.dispose();
  model.dispose();
});

test('--levels subset: a u between exported levels runs the cheaper one; metadata carries levels, FLOPs, classes, config', async () => {
  const model = createModel('vgg-w', {});
  randomizeStatistics(model, 4);
  const classNames = Array.from({ length: 10 }, (_, i) => `digit ${i}`);
  const { bytes, metadata } = exportOnnx(model, { levels: [1, 0.25, 0.5, 0.75], classNames });
  assert.deepEqual(metadata.levels.map((l) => l.level), [2, 4, 6, 8]);
  assert.deepEqual(metadata.levels.map((l) => l.u), [0.25, 0.5, 0.75, 1]);
  for (const l of metadata.levels) {
    assert.equal(l.flops, model.cost(l.u).flops);
    assert.ok(model.levelOf(l.minU) === l.level && model.levelOf(l.minU * (1 - 1e-9)) < l.level, `minU of level ${l.level}`);
  }
  assert.equal(metadata.levels[3].flopsRatio, 1);
  const read = readOnnxMetadata(bytes, 'm.onnx');
  assert.deepEqual(read, metadata);
  assert.deepEqual(read.classNames, classNames);
  assert.deepEqual(read.model, model.config);
  assert.deepEqual(read.input, { name: 'images', layout: 'NCHW', shape: [1, 28, 28] });
  assert.equal(levelIndexFor(read.levels, 0.6), 1);
  const s = await session(bytes);
  const { nhwc, nchw } = batch(model, 2, 9);
  assert.ok(relErr(tfScores(model, nhwc, 0.5), await ortScores(s, model, nchw, 2, 0.6)) < 1e-4);
  assert.ok(relErr(tfScores(model, nhwc, 0.25), await ortScores(s, model, nchw, 2, 0.1)) < 1e-4);
  await s.release();
  nhwc.dispose();
  model.dispose();
});

interface Msg {
  node: { input: string[]; output: string[]; name: string; op_type: string; attribute: { name: string; g?: Msg }[] }[];
  initializer: { name: string; dims: number[]; data_type: number }[];
  input: { name: string }[];
  name: string;
}

function subgraphs(g: Msg): Msg[] {
  return g.node.flatMap((n) => n.attribute.flatMap((a) => (a.g ? [a.g, ...subgraphs(a.g)] : [])));
}

test('weights are stored once at the top level; branches hold only int64 slice bounds; names are unique model-wide', () => {
  const model = createModel('resnet-d', { width: 8 });
  const { bytes } = exportOnnx(model);
  const m = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, defaults: true, arrays: true }) as { graph: Msg; ir_version: number; opset_import: { version: number }[] };
  assert.equal(m.ir_version, 8);
  assert.equal(m.opset_import[0].version, 17);
  const top = m.graph;
  const weights = model.weights();
  assert.equal(top.initializer.filter((t) => t.data_type === 1 && t.dims.length > 0).length, weights.length);
  for (const w of weights) {
    const init = top.initializer.find((t) => t.name === w.name);
    assert.ok(init, `initializer ${w.name}`);
    const s = w.variable.shape;
    assert.deepEqual(init.dims, s.length === 4 ? [s[3], s[2], s[0], s[1]] : s, `${w.name} dims (OIHW for kernels)`);
  }
  const subs = subgraphs(top);
  assert.equal(subs.filter((g) => g.name.startsWith('level_')).length, 7);
  for (const g of subs) for (const t of g.initializer) assert.equal(t.data_type, 7, `${g.name}/${t.name} should be an int64 constant`);
  const names: string[] = [];
  for (const g of [top, ...subs]) {
    names.push(...g.initializer.map((t) => t.name), ...g.input.map((i) => i.name));
    for (const n of g.node) names.push(...n.output, n.name);
  }
  assert.equal(new Set(names).size, names.length, 'duplicate names');
  // Skipped blocks vanish: the cheapest branch has no node of any depth-gated block.
  const low = subs.find((g) => g.name === 'level_0') as Msg;
  assert.ok(!low.node.some((n) => /\bs\d\.b\d\./.test(n.name)), 'level 0 runs no gated block');
  assert.ok(low.node.some((n) => n.name.includes('s1.down')), 'level 0 still runs the downsampling blocks');
  model.dispose();
});

test('tfPads matches TF "same" padding (odd pixel at the end)', () => {
  assert.deepEqual(tfPads([28, 28, 1], 3, 1, 'same'), [1, 1, 1, 1]);
  assert.deepEqual(tfPads([28, 28, 1], 3, 2, 'same'), [0, 0, 1, 1]);
  assert.deepEqual(tfPads([7, 7, 1], 1, 2, 'same'), [0, 0, 0, 0]);
  assert.deepEqual(tfPads([7, 7, 1], 3, 1, 'valid'), [0, 0, 0, 0]);
});

function pythonOnnx(): boolean {
  return spawnSync('/usr/bin/python3', ['-c', 'import onnx'], { stdio: 'ignore' }).status === 0;
}

test('the ONNX checker (python3-onnx, full check) accepts every model, early-exit stages with the exit rule in the graph and an exported controller', (t) => {
  if (!pythonOnnx()) {
    t.skip('python3-onnx is not installed (apt-get install python3-onnx)');
    return;
  }
  const entropy = { rule: 'entropy', thresholds: [0.5, 0.5, 0.5] };
  const confidence = { rule: 'confidence', thresholds: [0.9, 0.9] };
  // Early-exit models stage by stage, and with their rule in the graph as a fitted policy writes it.
  const cases: [string, Record<string, unknown>, ExportOptions['exitPolicy']?][] = [...PARITY, ['vgg-exits', { groups: 4 }], ['vgg-exits', { groups: 4 }, entropy], ['resnet-exits', { width: 8 }, confidence]];
  for (const [name, args, exitPolicy] of cases) {
    const model = createModel(name, args);
    const file = path.join(tmp, `${name}${exitPolicy ? `-${exitPolicy.rule}` : ''}.onnx`);
    // One of them carries a controller, as `export --controller` writes.
    const ctrl = name === 'vgg-w' ? new Policy({ inputShape: model.inputShape, actions: [0.25, 0.5, 1] }) : null;
    writeFileSync(file, exportOnnx(model, ctrl ? { controller: { network: ctrl.net, actions: ctrl.actions } } : { exitPolicy }).bytes);
    ctrl?.dispose();
    model.dispose();
    const out = execFileSync('/usr/bin/python3', ['-c', 'import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True); print("ok")', file], { encoding: 'utf8' });
    assert.equal(out.trim(), 'ok', name);
  }
});

test('export errors: duplicate levels, bad u, independent gating, wrong class names, unexportable layers', () => {
  const model = createModel('vgg-w', { groups: 4 });
  assert.throws(() => exportOnnx(model, { levels: [0.25, 0.3] }), /levels 0.25 and 0.3 both run level 1/);
  assert.throws(() => exportOnnx(model, { levels: [0] }), /utilization u must be a number in \(0, 1\]/);
  assert.throws(() => exportOnnx(model, { levels: [] }), /at least one level/);
  assert.throws(() => exportOnnx(model, { gating: 'independent' }), /only nested gating exports/);
  assert.throws(() => exportOnnx(model, { classNames: ['a', 'b'] }), /2 class names given for a model with 10 classes/);
  // Controllers: another input shape, outputs that do not match the actions, clashing weight names; exit policies.
  const small = new Policy({ inputShape: [8, 8, 1], actions: [0.5, 1] });
  assert.throws(() => exportOnnx(model, { controller: { network: small.net, actions: small.actions } }), /the controller reads \[8,8,1\] inputs, the network \[28,28,1\]/);
  small.dispose();
  const twin = createModel('vgg-w', { groups: 4, numClasses: 3 });
  assert.throws(() => exportOnnx(model, { controller: { network: twin, actions: [0.3, 0.6, 1] } }), /the controller's weight stem.conv.kernel has the name of one of the network's/);
  assert.throws(() => exportOnnx(model, { controller: { network: twin, actions: [0.5, 1] } }), /the controller has 3 outputs for 2 actions/);
  twin.dispose();
  assert.throws(() => exportOnnx(model, { exitPolicy: { rule: 'entropy', thresholds: [1] } }), /an exit policy needs a model with early exits/);
  model.dispose();

  class Mystery extends Layer<Record<string, never>> {
    readonly className = 'Mystery';
    protected doBuild(s: Shape): Shape {
      return s;
    }
    call(x: tf.Tensor, sel: ChannelSel) {
      return { y: x, sel };
    }
    outSel(sel: ChannelSel): ChannelSel {
      return sel;
    }
    freeze(): FrozenOp[] {
      return [];
    }
    cost(): LayerCost[] {
      return [];
    }
  }
  const odd = new Network({ model: 'odd', args: {} }, [4, 4, 2], [new Flatten('flatten', {}), new Dense('fc', { units: 4, groups: 2 }), new Mystery('mystery', {})]);
  assert.throws(() => exportOnnx(odd), /cannot export layer mystery: unknown exportable layer class "Mystery"; expected one of .*Conv2D/);
});

test('saveOnnx writes atomically; a failed export leaves the old file as it was; a folder is refused', async () => {
  const model = createModel('mlp-w', { hidden: [16], groups: 4 });
  const file = path.join(tmp, 'atomic.onnx');
  const meta = await saveOnnx(model, file);
  const bytes = readFileSync(file);
  assert.deepEqual(readOnnxMetadata(bytes, file), meta);
  await assert.rejects(saveOnnx(model, file, { levels: [0.2, 0.21] }), /both run level/);
  assert.deepEqual(readFileSync(file), bytes);
  assert.deepEqual(readdirSync(tmp).filter((f) => f.endsWith('.tmp')), []);
  assert.ok(existsSync(file));
  // A folder is not a file to write (it was an EISDIR stack trace).
  await assert.rejects(saveOnnx(model, tmp), (err: Error) => err.name === 'DynnError' && /is a folder; give the ONNX file to write, e\.g\. .*model\.onnx/.test(err.message));
  model.dispose();
});
