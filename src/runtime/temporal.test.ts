// A temporal controller exported beside its network and run as a stateful session in ONNX Runtime: the
// same u per frame and the same classes as TF.js's runTemporal on fashion-mnist-stream sequences.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { saveOnnx } from '../export/export.js';
import { levelIndexFor, TEMPORAL_FEATURES } from '../export/metadata.js';
import { MixedRunner } from '../control/runner.js';
import { runTemporal, sequencesOf } from '../control/temporal.js';
import { DynnError } from '../util/errors.js';
import { OnnxModel } from './node.js';
import { NonFiniteScoresError, TemporalSession } from './session.js';
import { frameOf, temporalFixture } from './temporal-fixtures.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-temporal-'));
const { set, model, policy, controller, actions, file, meta } = await temporalFixture(tmp);
const plain = path.join(tmp, 'plain.onnx');
await saveOnnx(model, plain);

test('export writes the temporal controller in the model graph, with its actions, features, cost and start', async () => {
  assert.deepEqual(meta.controller?.actions, actions);
  assert.deepEqual(meta.controller?.temporal, { start: 3, features: [...TEMPORAL_FEATURES] });
  assert.equal(meta.controller?.macs, policy.macs);
  assert.ok(meta.controller!.flopsRatio > 0 && meta.controller!.flopsRatio < 0.01);
  await assert.rejects(saveOnnx(model, path.join(tmp, 'x.onnx'), { controller: { network: policy.net, actions: [0.5, 1], temporal: { start: 1 } } }), /reads \[17\] features; this network's 10 classes and 2 actions give \[15\]/);
  await assert.rejects(saveOnnx(model, path.join(tmp, 'x.onnx'), { controller: { network: policy.net, actions, temporal: { start: 4 } } }), DynnError);
});

test('export refuses levels that would run a temporal action at another level than the controller learned it at', async () => {
  const controllerOf = { network: policy.net, actions, temporal: { start: 3 } };
  // Leaving out u = 0.75's level would run that action at u = 0.5's.
  await assert.rejects(saveOnnx(model, path.join(tmp, 'x.onnx'), { levels: [0.25, 0.5, 1], controller: controllerOf }), /action u = 0\.75 runs level \d+, which the exported levels \(u = 0\.25, 0\.5, 1\) leave out/);
  // Every action's level kept exports, each action at its own level.
  const sub = await saveOnnx(model, path.join(tmp, 'sub.onnx'), { levels: actions, controller: controllerOf });
  for (const u of actions) assert.equal(sub.levels[levelIndexFor(sub.levels, u)].level, model.levelOf(u));
});

test('a frame with non-finite scores is refused and leaves the session’s plan as it was', async () => {
  const K = actions.length;
  let scores = Float32Array.of(1, 2, NaN, 0, 0, 0, 0, 0, 0, 0);
  const step = async (_x: Float32Array, action: number) => ({ scores, classes: Int32Array.of(1), u: meta.levels[levelIndexFor(meta.levels, actions[action])].u, level: 0, ms: 0, next: Int32Array.of(0) });
  const s = new TemporalSession(meta, step);
  assert.equal(s.plannedU, 1);
  await assert.rejects(s.next(new Float32Array(784)), NonFiniteScoresError);
  assert.equal(s.plannedU, 1, 'the plan is unchanged');
  scores = new Float32Array(10);
  assert.equal((await s.next(new Float32Array(784))).u, 1);
  assert.equal(s.plannedU, meta.levels[levelIndexFor(meta.levels, actions[0])].u, `the plan moves on a good frame (of ${K} actions)`);
});

test('the controller’s weights are under the same digest as the network’s: altering one fails the load', async () => {
  const bytes = readFileSync(file);
  const kernel = policy.net.getWeights().find((w) => w.name === 'policy.fc.kernel')!;
  const at = Buffer.from(bytes).indexOf(Buffer.from(kernel.data.buffer, kernel.data.byteOffset, 16));
  assert.ok(at > 0, 'the controller kernel is stored in the file');
  bytes[at] ^= 1;
  const bad = path.join(tmp, 'bad.onnx');
  writeFileSync(bad, bytes);
  await assert.rejects(OnnxModel.load(bad, { threads: 1 }), /weights digest mismatch/);
});

for (const worker of [false, true]) {
  test(`ONNX sessions choose the u and classes of TF.js's runTemporal on fashion-mnist-stream${worker ? ' (worker)' : ''}`, async () => {
    const before = tf.memory().numTensors;
    const runner = new MixedRunner(model);
    const ref = runTemporal(controller, runner, set);
    runner.dispose();
    // The policy's frozen copy is built on first use; dropping it must bring the count back.
    policy.weightsChanged();
    assert.equal(tf.memory().numTensors, before, 'no tensor left behind');
    assert.ok(new Set(ref.u).size >= 2, `the reference run mixes operating points (${[...new Set(ref.u)]})`);
    const m = await OnnxModel.load(file, { worker, threads: 1 });
    try {
      for (const seq of sequencesOf(set)) {
        const s = m.session();
        assert.equal(s.plannedU, 1, 'a stream starts at the top action');
        let planned = 1;
        for (const f of seq) {
          const step = await s.next(frameOf(set, f), { layout: 'NHWC' });
          assert.equal(step.u, planned);
          // The session reports the u that ran: the representative u of the action's exported level, the level
          // TF.js ran the action at (every level exported).
          const lv = m.levelFor(ref.u[f]);
          assert.equal(step.u, lv.u, `frame ${f}: u`);
          assert.equal(step.level, model.levelOf(ref.u[f]), `frame ${f}: level`);
          assert.equal(step.level, lv.level);
          assert.equal(step.class, ref.predictions[f], `frame ${f}: class`);
          assert.ok(Math.abs(step.flopsRatio - (lv.flopsRatio + meta.controller!.flopsRatio)) < 1e-12);
          assert.equal(step.scores.length, 10);
          planned = step.nextU;
        }
      }
    } finally {
      await m.dispose();
    }
  });
}

test('sessions refuse what does not fit: a model without a temporal controller, a wrong frame, decide on a temporal model', async () => {
  const m = await OnnxModel.load(file, { threads: 1 });
  const p = await OnnxModel.load(plain, { threads: 1 });
  try {
    assert.throws(() => p.session(), /exported without a temporal controller/);
    const s = m.session();
    await assert.rejects(s.next(new Float32Array(10)), /one frame of \[1,28,28\] \(784 values\) at a time, got 10 values/);
    await assert.rejects(s.next(new Float32Array(784 * 2)), /got 1568 values/);
    // A failed call leaves the session usable, at its planned u.
    const step = await s.next(new Float32Array(784));
    assert.equal(step.u, 1);
    await assert.rejects(m.decide(new Float32Array(784)), /controller is temporal/);
    // A plain run of a temporal model still works (the action input takes the start action).
    assert.equal((await m.run(new Float32Array(784 * 3), 0.5)).classes.length, 3);
  } finally {
    await m.dispose();
    await p.dispose();
  }
});
