import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import * as ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { fullSel } from '../layers/index.js';
import { RoutingState } from '../route/context.js';
import { innerContext } from '../route/unit.js';
import { logitCut } from '../route/count.js';
import { SpatialResidualBlock, dilate3 } from '../route/spatial.js';
import { SegmentGraph } from './segments.js';
import { lowerSpatial, SPATIAL_IO } from './spatial.js';

before(async () => {
  await initEngine('wasm');
});

/** A small spatial resnet-d, its gates varying over positions, its BatchNorm statistics not the identity. */
function net() {
  const m = createModel('resnet-d', { width: 4, blocksPerStage: 1, inputShape: [8, 8, 1], numClasses: 3, dynamic: 'spatial', gateScale: 2 });
  tf.tidy(() => {
    for (const w of m.weights()) {
      if (w.name.endsWith('.gate.kernel')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 2, 'float32', 7));
      if (w.name.endsWith('.gate.bias')) w.variable.assign(tf.zerosLike(w.variable));
      if (w.name.endsWith('.running_mean')) w.variable.assign(tf.randomNormal(w.variable.shape, 0, 0.3, 'float32', 3));
      if (w.name.endsWith('.running_var')) w.variable.assign(tf.randomUniform(w.variable.shape, 0.5, 2, 'float32', 4));
      if (w.name.endsWith('.gamma')) w.variable.assign(tf.randomUniform(w.variable.shape, 0.5, 1.5, 'float32', 5));
    }
  });
  return m;
}

const toNchw = (t: tf.Tensor) => tf.tidy(() => tf.transpose(t, [0, 3, 1, 2]).dataSync() as Float32Array);

async function session(block: SpatialResidualBlock, fixedMask = false) {
  const sg = new SegmentGraph('spatial_test', [], []);
  lowerSpatial(sg.g, block, { fixedMask });
  return ort.InferenceSession.create(sg.finish('test').bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
}

test('the ONNX graph of a spatial block computes what TF.js computes: same masks, same counts, outputs within 1e-4', async () => {
  const m = net();
  const block = m.layers.find((l): l is SpatialResidualBlock => l instanceof SpatialResidualBlock && l.name === 's1.b0')!;
  const [H, W, C] = block.inShape;
  const s = await session(block);
  for (const [n, threshold] of [[5, 0.5], [1, 0.3], [3, 1], [2, 0]] as const) {
    const x = tf.tidy(() => tf.relu(tf.randomNormal([n, H, W, C], 0, 1, 'float32', n)));
    const routing = RoutingState.start('hard', n, { threshold });
    const want = tf.tidy(() => toNchw(block.call(x, fullSel(C), { plan: m.plan(1), training: false, routing }).y));
    const out = await s.run({ [SPATIAL_IO.x]: new ort.Tensor('float32', toNchw(x), [n, C, H, W]), [SPATIAL_IO.cut]: new ort.Tensor('float32', Float32Array.of(logitCut(threshold)), []) });
    const y = out[SPATIAL_IO.y].data as Float32Array;
    const computed = out[SPATIAL_IO.computed].data as Float32Array;
    assert.deepEqual(out[SPATIAL_IO.computed].dims, [n, 2]);
    const decided = routing.decisions.get('s1.b0')!;
    for (let i = 0; i < n; i++) assert.equal(computed[2 * i + 1], decided[i], `threshold ${threshold}, sample ${i}: positions`);
    const spent = routing.executedMacs;
    const per = block.positionMacs(fullSel(C));
    for (let i = 0; i < n; i++) assert.equal(H * W * C + computed[2 * i] * per.conv1 + computed[2 * i + 1] * per.conv2, spent[i], `sample ${i}: MACs`);
    want.forEach((v, i) => assert.ok(Math.abs(v - y[i]) < 1e-4, `threshold ${threshold}, value ${i}: ${v} vs ${y[i]}`));
    x.dispose();
  }
  await s.release();
  // With a fixed mask as input (the bench), the graph equals the block at that mask.
  const fixed = await session(block, true);
  const n = 4;
  const x = tf.tidy(() => tf.relu(tf.randomNormal([n, H, W, C], 0, 1, 'float32', 11)));
  const mask = Float32Array.from({ length: n * H * W }, (_, i) => ((i * 7) % 5 < 2 ? 1 : 0));
  const want = tf.tidy(() => toNchw(block.computeAt(x, mask, innerContext({ plan: m.plan(1), training: false }, block, 1))));
  const out = await fixed.run({ [SPATIAL_IO.x]: new ort.Tensor('float32', toNchw(x), [n, C, H, W]), [SPATIAL_IO.mask]: new ort.Tensor('float32', mask, [n, 1, H, W]) });
  (out[SPATIAL_IO.y].data as Float32Array).forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-4));
  const dilated = dilate3(mask, n, H, W);
  for (let i = 0; i < n; i++) assert.equal((out[SPATIAL_IO.computed].data as Float32Array)[2 * i], dilated.subarray(i * H * W, (i + 1) * H * W).reduce((a, v) => a + v, 0));
  await fixed.release();
  x.dispose();
  m.dispose();
});
