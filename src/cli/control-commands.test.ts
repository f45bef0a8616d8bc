import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fails, ok } from './fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-control-cli-'));
const runA = path.join(tmp, 'a');
const runB = path.join(tmp, 'b');
const ctrl = path.join(tmp, 'ctrl');
const data = ['--dataset', 'synthetic', '--train-limit', '400', '--test-limit', '120', '--workers', '0', '--epochs', '1', '--batch-size', '50', '--model', 'mlp-w'];


test('controller train, eval --json (the issue’s format), select both problems, latency tables', async () => {
  await ok(['train', ...data, '--val-samples', '100', '--out', runA]);
  await ok(['train', ...data, '--seed', '1', '--out', runB]);

  const t = (await ok(['controller', 'train', runA, '--out', ctrl, '--epochs', '2', '--train-samples', '200', '--json'])).json();
  assert.equal(t.actions.length, 10);
  assert.equal(t.history.length, 2);
  assert.ok(t.validation.meanFlopsRatio > 0);
  const full = (await ok(['controller', 'train', runA, '--out', path.join(tmp, 'ctrl-full'), '--epochs', '1', '--train-samples', '100', '--feedback', 'full', '--gamma1', '4', '--json'])).json();
  assert.equal(full.history[0].epsilon, 0, 'full feedback explores nothing');
  const saved = JSON.parse(fs.readFileSync(path.join(tmp, 'ctrl-full', 'checkpoint.json'), 'utf8'));
  assert.deepEqual([saved.meta.options.feedback, saved.meta.options.gamma1], ['full', 4]);

  const e = (await ok(['eval', runA, '--controller', ctrl, '--test-limit', '120', '--json'])).json();
  assert.deepEqual(Object.keys(e).sort(), ['accuracy', 'againstCurve', 'controller', 'dataset', 'fixed', 'meanFlopsRatio', 'meanU', 'oracle', 'samples', 'split', 'uHistogram', 'verdict']);
  assert.deepEqual([e.controller, e.dataset, e.split, e.samples], ['bandit', 'synthetic', 'test', 120]);
  assert.deepEqual(Object.keys(e.oracle).sort(), ['accuracy', 'curve', 'meanFlopsRatio', 'meanU']);
  // Where it sits against the best a fixed u, or a mix of two, does at its own FLOPs ratio, from the curve it printed.
  const pts = e.fixed as { flopsRatio: number; accuracy: number }[];
  let there = Math.max(...pts.filter((p) => p.flopsRatio <= e.meanFlopsRatio).map((p) => p.accuracy));
  for (const p of pts) {
    for (const q of pts) {
      if (p.flopsRatio < e.meanFlopsRatio && e.meanFlopsRatio < q.flopsRatio) there = Math.max(there, p.accuracy + ((q.accuracy - p.accuracy) * (e.meanFlopsRatio - p.flopsRatio)) / (q.flopsRatio - p.flopsRatio));
    }
  }
  assert.ok(Math.abs(e.againstCurve.curveAccuracy - there) < 1e-9);
  assert.equal(e.againstCurve.below, e.accuracy < there - 1e-9);
  assert.match(e.verdict, e.againstCurve.below ? /^BELOW the fixed-u curve: the bandit controller is [\d.]+ points less accurate/ : /^the bandit controller is [\d.]+ points above the fixed-u curve/);
  assert.equal(Object.values(e.uHistogram as Record<string, number>).reduce((a, b) => a + b, 0), 120);
  assert.deepEqual(e.fixed.map((f: { u: number }) => f.u), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1]);
  assert.equal(e.fixed[9].flopsRatio, 1);
  assert.ok(e.oracle.accuracy >= Math.max(...e.fixed.map((f: { accuracy: number }) => f.accuracy)));
  // Its own network's cost is inside the mean: more than the cheapest level's.
  assert.ok(e.meanFlopsRatio > e.fixed[0].flopsRatio);

  // The network and its controller export as one ONNX model; in ONNX Runtime the controller decides as in TF.js.
  const onnxFile = path.join(tmp, 'adaptive.onnx');
  const x = (await ok(['export', runA, '--onnx', onnxFile, '--controller', ctrl, '--json'])).json();
  assert.equal(x.metadata.controller.actions.length, 10);
  const { loadDataset } = await import('../data/datasets.js');
  const { OnnxModel } = await import('../runtime/node.js');
  const { toFloat } = await import('../data/imageset.js');
  const test = (await loadDataset('synthetic', { trainLimit: 400, testLimit: 120 })).test;
  const m = await OnnxModel.load(onnxFile, { threads: 1 });
  try {
    const r = await m.runAdaptive(toFloat(test, 0, 120), { layout: 'NHWC' });
    const hist: Record<string, number> = {};
    for (const u of r.decision.u) hist[String(u)] = (hist[String(u)] ?? 0) + 1;
    assert.deepEqual(hist, e.uHistogram);
    const right = r.classes.filter((c, i) => c === test.labels[i]).length;
    assert.ok(Math.abs(right / 120 - e.accuracy) <= 1 / 120 + 1e-9, `ONNX Runtime ${right / 120} vs TF.js ${e.accuracy}`);
  } finally {
    await m.dispose();
  }

  const human = await ok(['eval', runA, '--controller', 'cascade', '--stages', '0.25,1', '--threshold', '0.8', '--test-limit', '120']);
  assert.match(human.out, /cascade controller, mlp-w on synthetic test \(120 samples\)/);
  assert.match(human.out, /(BELOW the fixed-u curve: the controller is [\d.]+ points less accurate than the fixed-u curve|the controller is [\d.]+ points above the fixed-u curve) at FLOPs ratio/);
  const fixed = (await ok(['eval', runA, '--controller', 'fixed', '--u', '0.5', '--test-limit', '120', '--json'])).json();
  assert.deepEqual(fixed.uHistogram, { '0.5': 120 });

  const s1 = (await ok(['select', runA, '--objective', 'min-error', '--budget-flops', '0.4', '--json'])).json();
  assert.ok(s1.choice.flopsRatio <= 0.4);
  assert.equal(s1.samples, 100);
  for (let i = 1; i < s1.front.length; i++) {
    assert.ok(s1.front[i].flopsRatio >= s1.front[i - 1].flopsRatio && s1.front[i].accuracy > s1.front[i - 1].accuracy);
  }
  assert.ok(s1.front.every((c: { flopsRatio: number; accuracy: number }) => c.flopsRatio > 0.4 || c.accuracy <= s1.choice.accuracy));
  const s2 = (await ok(['select', runA, '--controller', ctrl, '--objective', 'min-cost', '--min-accuracy', '0.99', '--json'])).json();
  assert.ok(s2.choice.accuracy >= 0.99 * s2.fullAccuracy - 1e-12);
  assert.ok(s2.front.every((c: { flopsRatio: number; accuracy: number }) => c.flopsRatio >= s2.choice.flopsRatio || c.accuracy < 0.99 * s2.fullAccuracy));
  const human2 = await ok(['select', runA, '--objective', 'min-cost', '--min-accuracy', '0.9']);
  assert.match(human2.out, /chosen: /);
  assert.match(human2.out, /Pareto front/);

  const table = path.join(tmp, 'latency.json');
  await ok(['latency-table', runA, '--out', table, '--batch', '1,4', '--actions', '0.5,1', '--reps', '2']);
  const lt = JSON.parse(fs.readFileSync(table, 'utf8'));
  assert.deepEqual(lt.levels.map((l: { u: number }) => l.u), [0.5, 1]);
  assert.ok(lt.levels[1].latencyMs['4'] > 0);
  const r = (await ok(['eval', runA, '--controller', 'resource', '--latency-table', table, '--latency-budget', '10000', '--test-limit', '120', '--json'])).json();
  assert.deepEqual(r.uHistogram, { '1': 120 });
  const s3 = (await ok(['select', runA, '--objective', 'min-error', '--budget-ms', '10000', '--latency-table', table, '--actions', '0.5,1', '--json'])).json();
  assert.equal(s3.objective.unit, 'ms');
  assert.ok(s3.choice.ms > 0);

  // Bad input: clear errors, nothing written.
  await fails(['eval', runA, '--controller', 'greedy'], /unknown controller "greedy"; expected a controller checkpoint directory or one of bandit, cascade, fixed, oracle, resource/);
  await fails(['eval', runA, '--controller', tmp], /is not a controller checkpoint: it has no checkpoint\.json/);
  await fails(['eval', runB, '--controller', ctrl], /this controller was made for another network \(mlp-w from .*a, weights [0-9a-f]{16}\), not .*b/);
  await fails(['select', runB, '--objective', 'min-error', '--budget-flops', '0.4'], /held out no validation split; train it with --val-samples N/);
  await fails(['controller', 'train', runA, '--actions', '0,0.5,1.2', '--out', path.join(tmp, 'bad')], /--actions: 0 is not a utilization in \(0, 1\]/);
  await fails(['eval', runA, '--controller', 'cascade', '--stages', '0.5,1.5'], /--stages: 1\.5 is not a utilization in \(0, 1\]/);
  await fails(['select', runA, '--objective', 'min-error'], /needs exactly one of --budget-flops X or --budget-ms MS/);
  await fails(['select', runA, '--objective', 'fastest'], /--objective must be one of min-cost, min-error/);
  await fails(['eval', runA, '--controller', 'resource'], /needs a battery level or a latency budget/);
  await fails(['controller', 'fly', runA], /unknown controller action "fly"/);
  await fails(['controller', 'train', runA, '--out', path.join(tmp, 'bad'), '--feedback', 'full', '--objective', 'policy-gradient'], /full feedback trains a reward model/);
  await fails(['controller', 'train', runA, '--out', path.join(tmp, 'bad'), '--objective', 'q'], /--objective must be one of policy-gradient, reward/);
  assert.ok(!fs.existsSync(path.join(tmp, 'bad')));
});

test('gates train (REINFORCE, CONCRETE) and gates eval', async () => {
  const run = path.join(tmp, 'g');
  await ok(['train', ...data, '--gating', 'independent', '--out', run]);
  const gates = path.join(tmp, 'gates');
  const g = (await ok(['gates', 'train', run, '--method', 'reinforce', '--steps', '6', '--samples-per-step', '2', '--out', gates, '--json'])).json();
  assert.equal(g.method, 'reinforce');
  assert.equal(g.pattern.length, 8);
  assert.deepEqual(Object.keys(g.pattern[0].blocks), ['fc1', 'fc2']);
  await ok(['gates', 'train', run, '--method', 'concrete', '--steps', '3', '--out', path.join(tmp, 'gates-c')]);
  const e = (await ok(['gates', 'eval', run, '--gates', gates, '--u', '0.5,1', '--json'])).json();
  assert.deepEqual(e.points.map((p: { u: number }) => p.u), [0.5, 1]);
  for (const p of e.points) assert.ok(p.accuracy >= 0 && p.complexity > 0 && p.nested.flopsRatio > 0);
  const human = await ok(['gates', 'eval', run, '--gates', gates, '--u', '0.5']);
  assert.match(human.out, /learned pattern: active fraction per block/);
  await fails(['gates', 'train', run, '--method', 'annealing', '--out', path.join(tmp, 'x')], /--method must be one of reinforce, concrete/);
  await fails(['gates', 'train', run, '--p', '3', '--out', path.join(tmp, 'x')], /--p must be an integer/);
  await fails(['gates', 'eval', run, '--gates', ctrl], /is not a gates checkpoint \(it holds a controller\)/);
  await fails(['info', gates], /holds learned gates, not a training run; give the run it was made for \(its checkpoint says: \S+\)/);
  await fails(['sweep', ctrl], /holds a controller, not a training run/);
  // --out never takes a run, another kind of checkpoint or other files; earlier gates only with --force.
  const before = fs.readdirSync(run).sort();
  await fails(['gates', 'train', run, '--steps', '1', '--out', run], /--out \S+ holds a training run \(mlp-w\); save gates in a folder of its own/);
  await fails(['gates', 'train', run, '--steps', '1', '--out', run, '--force'], /holds a training run/);
  assert.deepEqual(fs.readdirSync(run).sort(), before);
  await fails(['controller', 'train', run, '--epochs', '1', '--out', gates], /--out \S+ holds learned gates; save a controller in a folder of its own/);
  await fails(['gates', 'train', run, '--steps', '1', '--out', gates], /--out \S+ holds learned gates already; give another --out, or --force to replace it/);
  await ok(['gates', 'train', run, '--steps', '1', '--samples-per-step', '2', '--out', gates, '--force']);
  const notes = path.join(tmp, 'notes');
  fs.mkdirSync(notes, { recursive: true });
  fs.writeFileSync(path.join(notes, 'weights-mine.bin'), 'mine');
  await fails(['gates', 'train', run, '--steps', '1', '--out', notes, '--force'], /is a folder with other files in it/);
  assert.equal(fs.readFileSync(path.join(notes, 'weights-mine.bin'), 'utf8'), 'mine');
});

test('controller train --temporal on fashion-mnist-stream, eval in the form eval prints; what it refuses', async () => {
  const run = path.join(tmp, 'stream');
  const stream = ['--dataset', 'fashion-mnist-stream', '--train-limit', '600', '--test-limit', '200', '--workers', '0', '--epochs', '1', '--batch-size', '50', '--model', 'mlp-w'];
  await ok(['train', ...stream, '--val-samples', '200', '--out', run]);
  const temporal = path.join(tmp, 'temporal');
  const t = (await ok(['controller', 'train', run, '--temporal', '--actions', '0.25,0.5,1', '--epochs', '2', '--out', temporal, '--json'])).json();
  assert.equal(t.temporal, true);
  assert.equal(t.history.length, 2);
  // The validation split is the last 200 training frames: two whole sequences of 100.
  assert.ok(t.validation.meanFlopsRatio > 0 && t.validation.meanFlopsRatio < 1.01);
  assert.equal(t.validation.fixed.length, 3);
  const e = (await ok(['eval', run, '--controller', temporal, '--dataset', 'fashion-mnist-stream', '--test-limit', '200', '--json'])).json();
  assert.deepEqual([e.controller, e.dataset, e.samples], ['temporal', 'fashion-mnist-stream', 200]);
  for (const key of ['accuracy', 'meanFlopsRatio', 'fixed', 'oracle', 'againstCurve', 'verdict']) assert.ok(key in e, key);
  // Its own cost: a few hundred MACs per frame, far under one percent of the network.
  const ckpt = JSON.parse(fs.readFileSync(path.join(temporal, 'checkpoint.json'), 'utf8'));
  assert.ok(ckpt.meta.policyMacs / ckpt.meta.fullMacs < 0.01);
  await fails(['controller', 'train', run, '--temporal', '--dataset', 'fashion-mnist', '--out', path.join(tmp, 'x')], /--temporal needs a stream, frames in sequences: fashion-mnist has none \(use --dataset fashion-mnist-stream\)/);
  await fails(['controller', 'train', run, '--temporal', '--feedback', 'bandit', '--out', path.join(tmp, 'x')], /--feedback bandit and --epsilon do not apply/);
  await fails(['controller', 'train', run, '--temporal', '--objective', 'policy-gradient', '--out', path.join(tmp, 'x')], /needs exactly one of --budget B .* or --beta B/);
  await fails(['controller', 'train', run, '--temporal', '--budget', '0.5', '--out', path.join(tmp, 'x')], /--budget, --beta and --lambda need --objective policy-gradient/);
  await fails(['controller', 'train', run, '--budget', '0.5', '--out', path.join(tmp, 'x')], /--budget and --beta are objectives of a temporal controller/);
  // REINFORCE over whole sequences, NaviSlim's budget problem: a controller that evaluates like the other.
  const pg = path.join(tmp, 'temporal-pg');
  const h = (await ok(['controller', 'train', run, '--temporal', '--objective', 'policy-gradient', '--budget', '0.5', '--actions', '0.25,0.5,1', '--epochs', '2', '--out', pg, '--json'])).json();
  assert.equal(h.history.length, 2);
  assert.ok('meanReturn' in h.history[0]);
  const pe = (await ok(['eval', run, '--controller', pg, '--dataset', 'fashion-mnist-stream', '--test-limit', '200', '--json'])).json();
  assert.equal(pe.controller, 'temporal');
  const pgSaved = JSON.parse(fs.readFileSync(path.join(pg, 'checkpoint.json'), 'utf8')).meta.options;
  assert.deepEqual([pgSaved.sequence?.objective ?? pgSaved.objective, pgSaved.epochs, pgSaved.batchSize, pgSaved.lambda], [{ kind: 'budget', budget: 0.5 }, 2, 16, 10], 'the settings that trained, not the bandit defaults');
  await fails(['controller', 'train', run, '--temporal', '--objective', 'policy-gradient', '--beta', '0.9', '--gamma1', '2', '--out', path.join(tmp, 'x')], /--gamma1, --gamma2 and --cost shape the reward model/);
  // Exported beside the network: the stream starts at the top action, the graph computes the features.
  const x = (await ok(['export', run, '--controller', temporal, '--onnx', path.join(tmp, 'stream.onnx'), '--json'])).json();
  assert.deepEqual(x.metadata.controller.temporal, { start: 2, features: ['probabilities', 'top', 'margin', 'normalizedEntropy', 'actionOneHot'] });
  assert.deepEqual(x.metadata.controller.actions, [0.25, 0.5, 1]);
});
