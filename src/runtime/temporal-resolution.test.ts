// A temporal controller over (u, r) exported beside its network: the graph resizes the input to the planned
// resolution, and ONNX Runtime sessions give the u, resolution and class of TF.js's runTemporal per frame.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { loadDataset } from '../data/datasets.js';
import { createModel } from '../models/zoo.js';
import { saveOnnx } from '../export/export.js';
import { metadataProps, parseMetadataProps } from '../export/metadata.js';
import { MixedRunner } from '../control/runner.js';
import { runTemporal, sequencesOf, TemporalController, temporalPolicy } from '../control/temporal.js';
import { OnnxModel } from './node.js';
import { DynnServer } from '../serve/server.js';
import { frameOf } from './temporal-fixtures.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-tempres-'));
const set = (await loadDataset('fashion-mnist-stream', { trainLimit: 1, testLimit: 300 })).test;
const model = createModel('vgg-w', { inputShape: [28, 28, 1], numClasses: 10, widths: [4, 4, 8, 8], hidden: 16, groups: 2 });
const resolutions = [14, 21, 28];
const policy = temporalPolicy(10, [0.5, 1], { seed: 5, resolutions });
// Larger weights spread an untrained policy's answers over the actions, so a run mixes operating points.
policy.net.setWeights(policy.net.getWeights().map((w) => ({ ...w, data: w.data.map((v) => v * 6) })));
policy.weightsChanged();
const controller = new TemporalController(policy);
const file = path.join(tmp, 'stream.onnx');
const meta = await saveOnnx(model, file, { controller: { network: policy.net, actions: policy.actions, temporal: { start: controller.start, resolutions: policy.resolutions } } });

test('export stores each action’s resolution and the network’s FLOPs ratio there, and refuses a mismatch', async () => {
  const runner = new MixedRunner(model);
  assert.deepEqual(meta.controller?.temporal?.resolutions, policy.resolutions);
  const ratios = meta.controller!.temporal!.actionFlopsRatios!;
  policy.actions.forEach((u, k) => assert.ok(Math.abs(ratios[k] - runner.macs(u, policy.resolutions![k]) / runner.fullMacs) < 1e-12));
  assert.ok(ratios[3] < 0.5 * ratios[5], 'u = 1 at 14x14 costs under half of 28x28');
  runner.dispose();
  await assert.rejects(saveOnnx(model, path.join(tmp, 'x.onnx'), { controller: { network: policy.net, actions: policy.actions, temporal: { start: 5 } } }), /trained over resolutions \[14,21,28,14,21,28\], the export was given \[none\]/);
  // A file whose metadata claims resolutions that do not fit is refused at load.
  const props = metadataProps({ ...meta, controller: { ...meta.controller!, temporal: { ...meta.controller!.temporal!, resolutions: [14, 21, 28, 14, 21, 56] } } });
  assert.throws(() => parseMetadataProps(props, 'x.onnx'), /a resolution above the input's height 28/);
  const unordered = metadataProps({ ...meta, controller: { ...meta.controller!, temporal: { ...meta.controller!.temporal!, resolutions: [21, 14, 28, 14, 21, 28] } } });
  assert.throws(() => parseMetadataProps(unordered, 'x.onnx'), /strictly increasing by u, then r/);
});

for (const worker of [false, true]) {
  test(`ONNX sessions run each frame at the (u, r) and give the class of TF.js's runTemporal${worker ? ' (worker)' : ''}`, async () => {
    const before = tf.memory().numTensors;
    const runner = new MixedRunner(model);
    const ref = runTemporal(controller, runner, set);
    runner.dispose();
    policy.weightsChanged();
    assert.equal(tf.memory().numTensors, before, 'no tensor left behind');
    assert.ok(new Set(ref.resolution).size >= 2, `the reference run mixes resolutions (${[...new Set(ref.resolution)]})`);
    const m = await OnnxModel.load(file, { worker, threads: 1 });
    try {
      for (const seq of sequencesOf(set)) {
        const s = m.session();
        let planned = [1, 28];
        for (const f of seq) {
          const step = await s.next(frameOf(set, f), { layout: 'NHWC' });
          assert.deepEqual([step.u, step.resolution], planned);
          assert.deepEqual([step.u, step.resolution, step.class], [m.levelFor(ref.u[f]).u, ref.resolution![f], ref.predictions[f]], `frame ${f}`);
          assert.ok(Math.abs(step.flopsRatio - ref.macs[f] / model.cost(1).macs) < 1e-9, `frame ${f}: FLOPs ratio`);
          planned = [step.nextU, step.nextResolution!];
        }
      }
      // A plain run of the model runs at the input's own resolution.
      const x = frameOf(set, 0);
      const full = await m.run(x, 1, { layout: 'NHWC' });
      const want = tf.tidy(() => Array.from(model.predict(tf.tensor(x, [1, 28, 28, 1]), 1).dataSync()));
      assert.ok(want.every((v, i) => Math.abs(v - full.scores[i]) < 1e-3));
    } finally {
      await m.dispose();
    }
  });
}

test('dynn serve’s sessions answer each frame’s resolution and the next one’s, as the runtime session does', async () => {
  const server = await DynnServer.create({ model: file, policy: 'fixed:1', threads: 1 });
  const m = await OnnxModel.load(file, { threads: 1 });
  try {
    const opened = await server.app.inject({ method: 'POST', url: '/v1/sessions' });
    assert.equal(opened.statusCode, 201, opened.body);
    const { id, actions, resolutions: rs } = opened.json();
    assert.deepEqual([actions, rs], [policy.actions, policy.resolutions], 'each action’s u and resolution');
    const local = m.session();
    const seen = new Set<number>();
    for (const f of sequencesOf(set)[0].slice(0, 30)) {
      const frame = frameOf(set, f);
      // The server takes NCHW, as the runtime does by default: one channel, so the same values.
      const got = (await server.app.inject({ method: 'POST', url: `/v1/sessions/${id}/predict`, payload: { inputs: Array.from(frame) } })).json();
      const want = await local.next(frame);
      assert.deepEqual([got.u, got.resolution, got.nextU, got.nextResolution, got.class], [want.u, want.resolution, want.nextU, want.nextResolution, want.class]);
      assert.ok(Math.abs(got.flopsRatio - want.flopsRatio) < 1e-12);
      seen.add(got.resolution);
    }
    assert.ok(seen.size >= 2, `the plans mix resolutions (${[...seen]})`);
  } finally {
    await m.dispose();
    await server.close();
  }
});
