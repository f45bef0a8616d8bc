import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { saveOnnx } from '../export/export.js';
import { maxDiff, randomizeStatistics } from '../export/fixtures.js';
import { encodeModel, IR_VERSION, OPSET_VERSION } from '../export/onnx-proto.js';
import { OnnxModel, sessionOptions } from './node.js';
import { nhwcToNchw } from './core.js';
import { latencyTablePath, profileModel, readLatencyTable, saveLatencyTable } from './profile.js';
import { loadWebModel } from './web.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-runtime-'));
const file = path.join(tmp, 'vgg.onnx');
const model = createModel('vgg-w', { groups: 4, widths: [16, 16, 32, 32], hidden: 64 });
randomizeStatistics(model, 2);
const meta = await saveOnnx(model, file);
const [H, W, C] = model.inputShape;
const N = 3;
const nhwcTensor = tf.randomNormal([N, H, W, C], 0, 1, 'float32', 3);
const nhwc = nhwcTensor.dataSync() as Float32Array;
const nchw = nhwcToNchw(nhwc, [C, H, W]);

test('nhwcToNchw moves channels first', () => {
  const x = Float32Array.from({ length: 2 * 2 * 3 }, (_, i) => i); // [1, 2, 2, 3] NHWC
  assert.deepEqual(Array.from(nhwcToNchw(x, [3, 2, 2])), [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
});

test('in-thread and worker sessions return the same scores, equal to TF.js at every level', async () => {
  const local = await OnnxModel.load(file);
  const worker = await OnnxModel.load(file, { worker: true, threads: 1 });
  assert.deepEqual(local.metadata, meta);
  assert.deepEqual(worker.metadata, meta);
  assert.equal(worker.inWorker, true);
  for (const lv of meta.levels) {
    const a = await local.run(nchw, lv.u);
    const b = await worker.run(nchw, lv.u);
    const c = await worker.run(nhwc, lv.u, { layout: 'NHWC' });
    const ref = tf.tidy(() => model.predict(nhwcTensor, lv.u).dataSync() as Float32Array);
    assert.equal(a.level, lv.level);
    assert.equal(a.u, lv.u);
    assert.equal(a.batch, N);
    assert.ok(maxDiff(a.scores, ref) < 1e-4 * Math.max(1, ...ref.map(Math.abs)), `level ${lv.level}`);
    assert.deepEqual(b.scores, a.scores);
    assert.deepEqual(c.scores, a.scores);
    assert.deepEqual(Array.from(b.classes), Array.from({ length: N }, (_, r) => {
      const row = Array.from(a.scores.subarray(r * 10, r * 10 + 10));
      return row.indexOf(Math.max(...row));
    }));
  }
  // lend: the buffer moves to the worker and comes back as the result's images, values unchanged; the caller's
  // array is empty meanwhile. In-thread nothing moves.
  const lent = nchw.slice();
  const running = worker.run(lent, 1, { lend: true });
  assert.equal(lent.length, 0);
  const back = await running;
  assert.deepEqual(back.scores, (await local.run(nchw, 1)).scores);
  assert.deepEqual(back.images, nchw);
  const kept = nchw.slice();
  assert.equal((await local.run(kept, 1, { lend: true })).images, kept);
  // A u between levels runs the level TF.js runs; the reported u is that level's.
  const p = await worker.run(nchw, 0.55);
  assert.equal(p.level, model.levelOf(0.55));
  assert.equal(p.u, meta.levels.find((l) => l.level === p.level)?.u);
  await local.dispose();
  await worker.dispose();
  await worker.dispose();
  await assert.rejects(worker.run(nchw, 1), /disposed/);
});

test('the worker keeps the event loop free while a batch computes', async () => {
  const m = await OnnxModel.load(file, { worker: true });
  const big = new Float32Array(512 * C * H * W).fill(0.5);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const start = performance.now();
  const p = await m.run(big, 1);
  const wall = performance.now() - start;
  clearInterval(timer);
  await m.dispose();
  assert.equal(p.batch, 512);
  if (wall > 20) assert.ok(ticks >= 3, `${ticks} timer ticks in ${wall.toFixed(0)} ms`);
});

test('bad files and bad input fail with clear errors, in-thread and in a worker', async () => {
  const truncated = path.join(tmp, 'truncated.onnx');
  writeFileSync(truncated, readFileSync(file).subarray(0, 4000));
  const garbage = path.join(tmp, 'garbage.onnx');
  writeFileSync(garbage, Buffer.from('this is not an onnx model at all, just text\n'.repeat(10)));
  const foreign = path.join(tmp, 'foreign.onnx');
  writeFileSync(
    foreign,
    encodeModel({
      ir_version: IR_VERSION,
      opset_import: [{ domain: '', version: OPSET_VERSION }],
      producer_name: 'elsewhere',
      producer_version: '1',
      graph: { name: 'g', node: [], initializer: [], input: [], output: [] },
      metadata_props: [],
    }),
  );
  for (const worker of [false, true]) {
    await assert.rejects(OnnxModel.load(truncated, { worker }), /truncated\.onnx: not a valid ONNX model .*truncated or corrupt/);
    await assert.rejects(OnnxModel.load(path.join(tmp, 'missing.onnx'), { worker }), /missing\.onnx: no such file/);
  }
  await assert.rejects(OnnxModel.load(garbage), /garbage\.onnx: not a valid ONNX model/);
  await assert.rejects(OnnxModel.load(foreign), /foreign\.onnx: no dynn metadata/);
  await assert.rejects(OnnxModel.load(file, { device: 'tpu' as never }), /unknown device "tpu"; expected one of cpu/);
  assert.throws(() => sessionOptions({ threads: 0 }), /threads must be a positive integer/);
  const m = await OnnxModel.load(file, { worker: true });
  await assert.rejects(m.run(nchw.subarray(1), 1), /not a whole batch of \[1,28,28\]/);
  await assert.rejects(m.run(new Float32Array(0), 1), /not a whole batch/);
  await assert.rejects(m.run(nchw, 1.5), /utilization u must be a number in \(0, 1\]/);
  await assert.rejects(m.run(nchw, NaN), /utilization u/);
  await assert.rejects(m.run(Array.from(nchw) as unknown as Float32Array, 1), /images must be a Float32Array/);
  const ok = await m.run(nchw, 1);
  assert.equal(ok.batch, N, 'the worker still answers after bad requests');
  await m.dispose();
});

test('profile: latency per level and batch, stored beside the model and read back; a stale table is refused', async () => {
  const copy = path.join(tmp, 'profiled.onnx');
  writeFileSync(copy, readFileSync(file));
  await assert.rejects(readLatencyTable(copy), /has no latency table .*run `dynn profile/);
  const m = await OnnxModel.load(copy, { threads: 1 });
  const table = await profileModel(m, { batches: [1, 4], reps: 2, warmup: 1, threads: 1 });
  await m.dispose();
  assert.deepEqual(table.levels.map((l) => l.u), meta.levels.map((l) => l.u));
  assert.deepEqual(table.levels.map((l) => l.flopsRatio), meta.levels.map((l) => l.flopsRatio));
  for (const l of table.levels) for (const b of ['1', '4']) assert.ok(l.latencyMs[b] > 0, `level ${l.level} batch ${b}`);
  assert.equal(await saveLatencyTable(copy, table), latencyTablePath(copy));
  assert.deepEqual(await readLatencyTable(copy), table);
  writeFileSync(latencyTablePath(copy), '{"format": "dynn-latency/1"');
  await assert.rejects(readLatencyTable(copy), /not valid JSON/);
  writeFileSync(latencyTablePath(copy), JSON.stringify({ ...table, levels: [] }));
  await assert.rejects(readLatencyTable(copy), /invalid latency table at levels/);
  await saveLatencyTable(copy, table);
  const other = createModel('vgg-w', { groups: 2 });
  await saveOnnx(other, copy);
  other.dispose();
  await assert.rejects(readLatencyTable(copy), /measured on another version/);
});

test('the web entry (onnxruntime-web) gives the scores onnxruntime-node gives', async () => {
  const web = await loadWebModel(readFileSync(file));
  const node = await OnnxModel.load(file);
  for (const lv of [meta.levels[0], meta.levels[meta.levels.length - 1]]) {
    const a = await web.run(nchw, lv.u);
    const b = await node.run(nchw, lv.u);
    assert.equal(a.level, b.level);
    assert.ok(maxDiff(a.scores, b.scores) < 1e-4 * Math.max(1, ...b.scores.map(Math.abs)));
  }
  await web.release();
  await node.dispose();
  await assert.rejects(loadWebModel(new Uint8Array([1, 2, 3])), /not a valid ONNX model/);
});
