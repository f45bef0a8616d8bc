import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { loadSynthetic } from '../data/synthetic.js';
import { toFloat } from '../data/imageset.js';
import { Bottleneck, SplitNetwork, splitPoints } from './bottleneck.js';
import { fakeQuantize, quantize, dequantize } from './quantize.js';
import { planSplit, splitNetwork } from './split.js';
import { SPLIT_IO } from './export.js';
import { predictSet } from './train.js';

await initEngine('wasm');

const small = () => createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, groups: 2 });

test('split points are the image-shaped top-level layers; bad points, channels and bits are refused by name', () => {
  const model = small();
  try {
    assert.deepEqual(splitPoints(model).map((p) => p.name), ['stem.conv', 'stem.bn', 'stem.relu', 'c2.conv', 'c2.bn', 'c2.relu', 'pool1', 'c3.conv', 'c3.bn', 'c3.relu', 'c4.conv', 'c4.bn', 'c4.relu', 'pool2']);
    assert.throws(() => planSplit(model, { at: 'fc1' }), /unknown split layer "fc1"; expected one of stem\.conv, .*pool2/);
    assert.throws(() => planSplit(model, { at: 'nope' }), /unknown split layer/);
    assert.throws(() => planSplit(model, { at: 'pool1', channels: [0] }), /channels must be integers from 1 to 8 \(the channels of pool1\), got 0/);
    assert.throws(() => planSplit(model, { at: 'pool1', channels: [9] }), /from 1 to 8/);
    assert.throws(() => planSplit(model, { at: 'pool1', bits: [0] }), /bits must be an integer from 1 to 16, got 0/);
    assert.throws(() => planSplit(model, { at: 'pool1', bits: [17] }), /got 17/);
    assert.throws(() => planSplit(model, { at: 'pool1', bits: [2.5] }), /got 2.5/);
    // Default channels above the layer's are dropped.
    assert.deepEqual(planSplit(model, { at: 'pool2' }).channels, [1, 2, 4, 8]);
    assert.deepEqual(planSplit(model, { at: 'pool1', channels: [4, 2, 4] }), { point: planSplit(model, { at: 'pool1' }).point, channels: [2, 4], bits: [2, 4, 8] });
  } finally {
    model.dispose();
  }
});

test('quantization: codes in range, dequantized within half a step, a straight-through gradient', () => {
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    const x = tf.randomNormal([3, 4, 4, 2], 0, 2, 'float32', 7) as tf.Tensor4D;
    for (const bits of [1, 2, 4, 8, 16]) {
      const q = quantize(x, bits);
      const codes = q.codes.dataSync();
      assert.ok(codes.every((c) => Number.isInteger(c) && c >= 0 && c <= 2 ** bits - 1), `bits ${bits}`);
      const err = tf.max(tf.abs(tf.sub(dequantize(q.codes, q.min, q.step), x)), [1, 2, 3]).dataSync();
      const step = q.step.dataSync();
      err.forEach((e, i) => assert.ok(e <= step[i] / 2 + 1e-5, `bits ${bits}: error ${e} against step ${step[i]}`));
    }
    // A constant sample: codes 0 and its value back exactly.
    const flat = quantize(tf.fill([1, 2, 2, 1], 3) as tf.Tensor4D, 4);
    assert.deepEqual(Array.from(dequantize(flat.codes, flat.min, flat.step).dataSync()), [3, 3, 3, 3]);
    const g = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(fakeQuantize(v as tf.Tensor4D, 2), tf.range(0, 32).reshape([1, 4, 4, 2]))))(x.slice([0], [1]));
    assert.deepEqual(Array.from(g.dataSync()), Array.from(tf.range(0, 32).dataSync()));
  });
  assert.equal(tf.memory().numTensors, before);
});

test('a slimmable bottleneck trained by head distillation; the ONNX head and tail give the TF.js classes', async () => {
  const data = await loadSynthetic({ trainLimit: 256, testLimit: 64 });
  const model = small();
  const before = tf.memory().numTensors;
  const r = splitNetwork(model, data.train, data.test, { at: 'pool1', channels: [1, 4], bits: [2, 8], epochs: 2, batchSize: 32, pngSamples: 16 });
  try {
    const { meta } = r;
    assert.equal(r.log.length, 2);
    assert.ok(r.log[1].mse < r.log[0].mse, `feature MSE falls: ${r.log.map((e) => e.mse)}`);
    assert.deepEqual(meta.points.map((p) => [p.channels, p.bits, p.bytesPerSample]), [[1, 2, 8 + 49], [1, 8, 8 + 196], [4, 2, 8 + 196], [4, 8, 8 + 784]]);
    assert.deepEqual(meta.features.shape, [8, 14, 14]);
    assert.equal(meta.bottleneck.relu, true);
    assert.equal(meta.inputBytesPerSample, 784);
    assert.ok(meta.inputPngBytesPerSample > 0);
    for (const p of meta.points) assert.ok(p.accuracy >= 0 && p.accuracy <= 1);

    const head = await ort.InferenceSession.create(r.head, { intraOpNumThreads: 1 });
    const tail = await ort.InferenceSession.create(r.tail, { intraOpNumThreads: 1 });
    const n = 32;
    const nhwc = toFloat(data.test, 0, n);
    const nchw = tf.tidy(() => tf.transpose(tf.tensor4d(nhwc, [n, 28, 28, 1]), [0, 3, 1, 2]).dataSync() as Float32Array);
    const sub = { ...data.test, count: n };
    for (const [c, b] of [[1, 2], [4, 8], [3, 5]]) {
      const ref = predictSet(sub, (x) => r.split.tail(r.split.reconstruct(r.split.head(x), c, b)));
      const h = await head.run({
        [SPLIT_IO.images]: new ort.Tensor('float32', nchw, [n, 1, 28, 28]),
        [SPLIT_IO.channels]: new ort.Tensor('int64', BigInt64Array.of(BigInt(c)), [1]),
        [SPLIT_IO.bits]: new ort.Tensor('float32', Float32Array.of(b), [1]),
      });
      assert.deepEqual(h[SPLIT_IO.codes].dims, [n, c, 14, 14]);
      assert.ok((h[SPLIT_IO.codes].data as Int32Array).every((v) => v >= 0 && v < 2 ** b));
      const t = await tail.run({ [SPLIT_IO.codes]: h[SPLIT_IO.codes], [SPLIT_IO.min]: h[SPLIT_IO.min], [SPLIT_IO.step]: h[SPLIT_IO.step] });
      const scores = t[SPLIT_IO.scores].data as Float32Array;
      let same = 0;
      for (let i = 0; i < n; i++) {
        const row = Array.from(scores.subarray(i * 10, (i + 1) * 10));
        if (row.indexOf(Math.max(...row)) === ref[i]) same++;
      }
      // A feature on a rounding boundary may round the other way in float32 ONNX arithmetic; classes agree.
      assert.ok(same >= n - 1, `${c} channels at ${b} bits: ${same}/${n} classes agree`);
    }
    await head.release();
    await tail.release();
  } finally {
    r.split.bottleneck.dispose();
  }
  assert.equal(tf.memory().numTensors, before, 'no tensor leaks from training and evaluation');
  model.dispose();
});

test('a bottleneck wider than the split point is refused', () => {
  const model = small();
  const b = new Bottleneck(4, 2, false);
  try {
    assert.throws(() => new SplitNetwork(model, 'pool1', b), /takes 4 channels; pool1 has 8/);
  } finally {
    b.dispose();
    model.dispose();
  }
});

test('the symmetric eigen-decomposition: A v = lambda v, eigenvalues descending, orthonormal vectors', async () => {
  const { symmetricEigen } = await import('./pca.js');
  const n = 5;
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = Math.sin(i * 3 + j * 7) + (i === j ? 3 : 0);
  const { values, vectors } = symmetricEigen(a, n);
  for (let k = 0; k < n; k++) {
    if (k > 0) assert.ok(values[k] <= values[k - 1]);
    for (let i = 0; i < n; i++) {
      let av = 0;
      for (let j = 0; j < n; j++) av += a[i * n + j] * vectors[j * n + k];
      assert.ok(Math.abs(av - values[k] * vectors[i * n + k]) < 1e-9);
    }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += vectors[i * n + k] ** 2;
    assert.ok(Math.abs(norm - 1) < 1e-9);
  }
});

test('the PCA start: a bottleneck as wide as the features reconstructs them, narrower ones lose less as they widen', async () => {
  const { pcaInit } = await import('./pca.js');
  const data = await loadSynthetic({ trainLimit: 64, testLimit: 8 });
  const model = small();
  const b = new Bottleneck(8, 8, false);
  try {
    const split = new SplitNetwork(model, 'pool1', b);
    pcaInit(split, data.train, 64);
    const errs = tf.tidy(() => {
      const f = split.head(tf.tensor4d(toFloat(data.train, 0, 64), [64, 28, 28, 1]));
      return [1, 2, 4, 8].map((c) => tf.losses.meanSquaredError(f, b.decode(b.encode(f, c))).dataSync()[0]);
    });
    for (let i = 1; i < errs.length; i++) assert.ok(errs[i] <= errs[i - 1] + 1e-9, `MSE by width: ${errs}`);
    assert.ok(errs[3] < 1e-8, `full width: ${errs[3]}`);
  } finally {
    b.dispose();
    model.dispose();
  }
});
