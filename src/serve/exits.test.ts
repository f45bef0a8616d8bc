// An early-exit model exported with its fitted rule serves with it: each batch runs the policy in one graph
// run, and every answer names the exit its sample left at and that exit's FLOPs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { saveOnnx } from '../export/export.js';
import { maxDiff, smallExitNet, splitAt } from '../export/fixtures.js';
import { EarlyExitRunner } from '../scaling/runner.js';
import { exitRules, exitScores } from '../scaling/rules.js';
import { OnnxModel } from '../runtime/node.js';
import { profileModel } from '../runtime/profile.js';
import { DynnServer } from './server.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-serve-exits-'));
const N = 16;
const { net, x, nchw: images } = smallExitNet(N, 9);
// Thresholds at a quantile of each exit's scores over the batch (samples leave at several exits), stored as the policy.
const runner = EarlyExitRunner.freeze(net, 1);
const thresholds = runner.allExits(x).slice(0, -1).map((l) => splitAt(exitScores(exitRules.get('entropy'), l, 10), 0.35));
runner.dispose();
const file = path.join(tmp, 'exits.onnx');
const meta = await saveOnnx(net, file, { exitPolicy: { rule: 'entropy', thresholds } });
tf.dispose(x);
net.dispose();

const servers: DynnServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

type Served = { class: number; scores: number[]; u: number; exit?: number; flopsRatio?: number };

/** The batch's samples as two concurrent requests (5 and 11 samples), which the server batches together. */
const predict = async (s: DynnServer): Promise<Served[]> => {
  const per = 144;
  const parts = [images.subarray(0, 5 * per), images.subarray(5 * per)];
  const answers = await Promise.all(parts.map((p) => s.app.inject({ method: 'POST', url: '/v1/predict', headers: { 'content-type': 'application/octet-stream' }, payload: Buffer.from(p.buffer, p.byteOffset, p.byteLength) })));
  return answers.flatMap((r) => {
    assert.equal(r.statusCode, 200, r.body);
    return r.json().predictions as Served[];
  });
};

test('an early-exit model serves with its rule: each answer has its exit and that exit\'s FLOPs, as runExits gives, at every level asked; --no-exits runs every sample to the end', async () => {
  const model = await OnnxModel.load(file, { threads: 1 });
  try {
    for (const u of [1, 0.4]) {
      const want = await model.runExits(images, u);
      assert.equal(want.oneRun, true);
      assert.ok(new Set(want.exits).size >= 2, `samples leave at several exits (${Array.from(want.exits)})`);
      const server = await DynnServer.create({ model: file, policy: `fixed:${u}`, threads: 1 });
      servers.push(server);
      const got = await predict(server);
      assert.equal(got.length, N);
      got.forEach((g, i) => {
        assert.equal(g.exit, want.exits[i], `u ${u}, sample ${i}'s exit`);
        assert.equal(g.class, want.classes[i]);
        assert.equal(g.u, want.u);
        assert.ok(maxDiff(g.scores, want.scores.subarray(i * 10, (i + 1) * 10)) < 1e-5);
      });
      // Per sample, its exit's FLOPs over the network's at u = 1: their mean is runExits' mean FLOPs.
      const full = meta.levels[meta.levels.length - 1].flops;
      const mean = got.reduce((a, g) => a + g.flopsRatio!, 0) / N;
      assert.ok(Math.abs(mean * full - want.meanFlops) < 1e-6 * want.meanFlops, `u ${u}: mean FLOPs ${mean * full} against ${want.meanFlops}`);
      assert.ok(got.some((g) => g.flopsRatio! < 0.5 * want.u), 'a sample that left early costs a fraction of its level');
    }
    // Without exits: the whole network, no exit named.
    const whole = await DynnServer.create({ model: file, policy: 'fixed:1', threads: 1, exits: false });
    servers.push(whole);
    const full = await model.run(images, 1);
    (await predict(whole)).forEach((g, i) => {
      assert.equal(g.exit, undefined);
      assert.ok(maxDiff(g.scores, full.scores.subarray(i * 10, (i + 1) * 10)) < 1e-5);
    });
  } finally {
    await model.dispose();
  }
});

test('dynn profile times an early-exit model as the server runs it: through its rule, with no sample leaving', async () => {
  const model = await OnnxModel.load(file, { threads: 1 });
  try {
    const thresholds: unknown[] = [];
    const runExits = model.runExits.bind(model);
    model.runExits = (x, u, o) => {
      thresholds.push(o?.thresholds);
      return runExits(x, u, o);
    };
    const table = await profileModel(model, { batches: [1, 4], reps: 1, warmup: 1, threads: 1 });
    assert.deepEqual(table.levels.map((l) => l.level), meta.levels.map((l) => l.level));
    assert.equal(thresholds.length, meta.levels.length * 2 * 2);
    assert.ok(thresholds.every((t) => t === -Infinity), 'entropy leaves below its threshold: none is below -Infinity');
  } finally {
    await model.dispose();
  }
});
