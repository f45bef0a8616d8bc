import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { initEngine } from '../engine/backend.js';
import { CondConv2D, annealTemperatures, checkCondArgs } from './condconv.js';
import { BatchNorm } from './norm.js';
import { ReLU } from './basic.js';
import { layerFromConfig } from './layer.js';
import { fullSel } from './select.js';
import { staticPlan } from '../models/network.js';
import { fuseOps, runOps } from '../models/subnet.js';

before(async () => {
  await initEngine('wasm');
});

const ctx = { plan: staticPlan(), training: false };

function built(args: ConstructorParameters<typeof CondConv2D>[1], inShape = [7, 6, 3]): CondConv2D {
  const layer = new CondConv2D('cc', args);
  layer.build(inShape, 1);
  // Non-zero biases, so the router's and the experts' biases are checked too.
  for (const w of layer.weights()) if (w.name.endsWith('bias')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 0.5, 'float32', 7));
  return layer;
}

function weight(layer: CondConv2D, suffix: string): tf.Tensor {
  return layer.weights().find((w) => w.name === `cc.${suffix}`)!.variable;
}

/** Per sample: the routing weights by an independent formula, the mixed kernel as HWIO, one plain conv2d. */
function reference(layer: CondConv2D, x: tf.Tensor4D): tf.Tensor4D {
  const { kernelSize: k, strides = 1, padding = 'same', routing = 'sigmoid', temperature = 1 } = layer.args;
  return tf.tidy(() => {
    const [e, rows, cout] = weight(layer, 'kernel').shape;
    const c = rows / (k * k);
    const outs = tf.unstack(x).map((xi) => {
      const z = tf.add(tf.matMul(tf.reshape(tf.mean(xi, [0, 1]), [1, c]), weight(layer, 'route.kernel')), weight(layer, 'route.bias'));
      const r = routing === 'sigmoid' ? tf.div(1, tf.add(1, tf.exp(tf.neg(z)))) : tf.div(tf.exp(tf.div(z, temperature)), tf.sum(tf.exp(tf.div(z, temperature))));
      const mixed = tf.reshape(tf.matMul(r, tf.reshape(weight(layer, 'kernel'), [e, rows * cout])), [c, k, k, cout]);
      let y: tf.Tensor = tf.conv2d(tf.expandDims(xi, 0) as tf.Tensor4D, tf.transpose(mixed, [1, 2, 0, 3]) as tf.Tensor4D, strides, padding);
      if (layer.args.useBias) y = tf.add(y, tf.reshape(tf.matMul(r, weight(layer, 'bias')), [cout]));
      return y;
    });
    return tf.concat(outs, 0) as tf.Tensor4D;
  });
}

const maxDiff = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

test('CondConv2D equals a per-sample convolution with the mixed kernel (sigmoid, softmax, strides, valid, bias)', () => {
  const cases: ConstructorParameters<typeof CondConv2D>[1][] = [
    { filters: 5, kernelSize: 3, experts: 4 },
    { filters: 4, kernelSize: 3, experts: 3, routing: 'softmax', temperature: 3, strides: 2, useBias: true },
    { filters: 2, kernelSize: 3, experts: 1, padding: 'valid' },
    { filters: 3, kernelSize: 1, experts: 2, routing: 'softmax' },
  ];
  for (const args of cases) {
    const layer = built(args);
    const x = tf.randomNormal([3, 7, 6, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const { y, sel } = layer.call(x, fullSel(3), ctx);
      assert.deepEqual(y.shape.slice(1), layer.outShape);
      assert.equal(sel.count, args.filters);
      assert.ok(maxDiff(y, reference(layer, x)) < 1e-4, JSON.stringify(args));
      // Batch 1 takes its own path (one convolution): the same numbers.
      const x0 = tf.slice(x, [0, 0, 0, 0], [1, 7, 6, 3]) as tf.Tensor4D;
      assert.ok(maxDiff(layer.call(x0, fullSel(3), ctx).y, reference(layer, x0)) < 1e-4, `batch 1: ${JSON.stringify(args)}`);
    });
    assert.equal(tf.memory().numTensors, before);
    x.dispose();
    layer.weights().forEach((w) => w.variable.dispose());
  }
});

test('CondConv2D runs one im2col and one batched matmul per call, whatever the batch and the experts; one convolution at batch 1', async () => {
  const one = built({ filters: 4, kernelSize: 3, experts: 3 });
  const x1 = tf.randomNormal([1, 7, 6, 3]);
  const single = (await tf.profile(() => tf.tidy(() => one.call(x1, fullSel(3), ctx).y))).kernels.map((k) => k.name);
  assert.equal(single.filter((k) => k.startsWith('Conv2D') || k.startsWith('FusedConv2D')).length, 1, single.join(' '));
  assert.equal(single.filter((k) => k === 'DepthwiseConv2dNative').length, 0);
  x1.dispose();
  one.weights().forEach((w) => w.variable.dispose());
  for (const [n, e] of [
    [2, 2],
    [6, 8],
  ]) {
    const layer = built({ filters: 4, kernelSize: 3, experts: e });
    const x = tf.randomNormal([n, 7, 6, 3]);
    const { kernels } = await tf.profile(() => tf.tidy(() => layer.call(x, fullSel(3), ctx).y));
    const names = kernels.map((k) => k.name);
    assert.equal(names.filter((k) => k.startsWith('Conv2D')).length, 0, 'no convolution per expert');
    assert.equal(names.filter((k) => k === 'DepthwiseConv2dNative').length, 1);
    // Router FC, kernel mixing, the convolution as one batched product over the n samples.
    const products = kernels.filter((k) => k.name === 'BatchMatMul' || k.name === '_FusedMatMul');
    assert.equal(products.length, 3, names.join(' '));
    assert.equal(products.filter((k) => k.outputShapes[0]?.[0] === n && k.outputShapes[0]?.[1] === 42).length, 1);
    x.dispose();
    layer.weights().forEach((w) => w.variable.dispose());
  }
});

test('CondConv2D: gradients reach the experts and the router; tensor count stays flat', () => {
  for (const routing of ['sigmoid', 'softmax']) {
    const layer = built({ filters: 4, kernelSize: 3, experts: 3, routing });
    const x = tf.randomNormal([4, 7, 6, 3], 0, 1, 'float32', 5);
    const target = tf.randomNormal([4, 7, 6, 4], 0, 1, 'float32', 6);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const trainable = layer.weights().filter((w) => w.trainable);
      const { grads } = tf.variableGrads(() => tf.mean(tf.square(tf.sub(layer.call(x, fullSel(3), ctx).y, target))) as tf.Scalar, trainable.map((w) => w.variable));
      for (const w of trainable) assert.ok(tf.sum(tf.abs(grads[w.variable.name])).dataSync()[0] > 0, `${routing}: gradient of ${w.name}`);
    });
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([x, target]);
    layer.weights().forEach((w) => w.variable.dispose());
  }
});

test('CondConv2D frozen with a folded BatchNorm and ReLU equals the layers run; cost; config round trip', () => {
  const layer = built({ filters: 4, kernelSize: 3, experts: 3, routing: 'softmax', useBias: true });
  const bn = new BatchNorm('bn', { levels: 1 });
  bn.build(layer.outShape, 1);
  for (const w of bn.weights()) w.variable.assign(tf.abs(tf.randomNormal(w.variable.shape, 0.5, 0.3, 'float32', 9)));
  const relu = new ReLU('relu', {});
  const x = tf.randomNormal([2, 7, 6, 3], 0, 1, 'float32', 4);
  tf.tidy(() => {
    let y: tf.Tensor = layer.call(x, fullSel(3), ctx).y;
    y = bn.call(y, fullSel(4), ctx).y;
    y = relu.call(y, fullSel(4)).y;
    const ops = fuseOps([...layer.freeze(fullSel(3)), ...bn.freeze(fullSel(4), staticPlan()), ...relu.freeze()]);
    assert.equal(ops.length, 1);
    assert.ok(maxDiff(runOps(ops, x), y) < 1e-4);
  });
  assert.deepEqual(layer.cost(fullSel(3)), [
    { name: 'cc', kind: 'CondConv2D', macs: 42 * 27 * 4, params: 3 * (27 * 4 + 4) },
    { name: 'cc.route', kind: 'CondConvRouting', macs: 3 * 3 + 3 * (27 * 4 + 4), params: 3 * 3 + 3 },
  ]);
  assert.deepEqual(layerFromConfig(layer.getConfig()).getConfig(), layer.getConfig());
  assert.throws(() => layer.call(x, { full: 3, count: 2, index: null }, ctx), /takes all of its 3 input channels, got 2/);
  tf.dispose([x, ...layer.weights().map((w) => w.variable), ...bn.weights().map((w) => w.variable)]);
});

test('CondConv2D: temperature annealing and bad arguments', () => {
  const layer = new CondConv2D('cc', { filters: 2, kernelSize: 3, experts: 2, routing: 'softmax', temperature: 31, annealEpochs: 10 });
  assert.deepEqual([0, 5, 10, 20].map((e) => layer.temperatureAt(e)), [31, 16, 1, 1]);
  layer.build([5, 5, 2]);
  const temp = () => layer.weights().find((w) => w.name === 'cc.temperature')!;
  assert.equal(temp().trainable, false);
  assert.deepEqual(Array.from(temp().variable.dataSync()), [31]);
  assert.equal(annealTemperatures([layer], 0), false);
  assert.equal(annealTemperatures([layer], 5), true);
  assert.deepEqual(Array.from(temp().variable.dataSync()), [16]);
  layer.weights().forEach((w) => w.variable.dispose());
  assert.throws(() => checkCondArgs({ experts: 0 }), /experts \(--experts\) must be a positive integer, got 0/);
  assert.throws(() => checkCondArgs({ experts: 2.5 }), /positive integer, got 2.5/);
  assert.throws(() => checkCondArgs({ routing: 'softmax', temperature: 0 }), /temperature \(--temperature\) must be a positive number, got 0/);
  assert.throws(() => checkCondArgs({ routing: 'top1' }), /unknown routing "top1"; expected one of sigmoid, softmax/);
  assert.throws(() => checkCondArgs({ temperature: 30 }), /a temperature needs --routing softmax/);
  assert.throws(() => new CondConv2D('cc', { filters: 2, kernelSize: 3, experts: -1 }).build([5, 5, 2]), /must be a positive integer, got -1/);
});
