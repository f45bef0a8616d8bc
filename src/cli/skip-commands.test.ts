import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import { assertServedLikeGates, assertTrainRefused } from './fixtures.js';
import { loadRun } from '../train/run.js';
import { loadDataset } from '../data/datasets.js';
import { toFloat } from '../data/imageset.js';
import { RoutingState } from '../route/context.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-skip-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const run = path.join(tmp, 'skip');
const data = ['--dataset', 'synthetic', '--train-limit', '64', '--test-limit', '32', '--workers', '0', '--batch-size', '32'];
const small = ['--model', 'resnet-d'];

test('layer skipping: bad targets and models are refused before any training', async () => {
  const cases: [string[], RegExp][] = [
    [[...small, '--dynamic', 'skip', '--skip-target', '0'], /--skip-target must be a number in \(0, 1\], got 0/],
    [[...small, '--dynamic', 'skip', '--skip-target', '1.2'], /--skip-target must be a number in \(0, 1\], got 1.2/],
    [['--model', 'vgg-w', '--dynamic', 'skip'], /--dynamic skip skips residual blocks; vgg-w has no blocks to skip \(expected one of resnet-d, resnet38\)/],
    [['--model', 'densenet41', '--dynamic', 'skip-ff'], /--dynamic skip-ff skips residual blocks; densenet41 has no blocks to skip/],
    [[...small, '--dynamic', 'skip', '--flops-target', '0.5'], /--flops-target does not apply to --dynamic skip, whose target is --skip-target: the skip target \(the mean fraction/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--skip-target', '0.5'], /--skip-target does not apply to --dynamic acs-gn, whose target is --flops-target/],
    [[...small, '--skip-target', '0.5'], /skipTarget \(--skip-target\) needs a dynamic model \(--dynamic NAME\); resnet-d has no gates/],
  ];
  await assertTrainRefused(cases, data, tmp);
});

test('a skip run trains in two steps; its deterministic execution rate is the target; sweep, info, export and serve', async () => {
  const io = captureIo();
  const argv = ['train', ...small, '--dynamic', 'skip', ...data, '--epochs', '2', '--pretrain-epochs', '1', '--vanilla', '--skip-target', '0.5', '--out', run, '--json'];
  assert.equal(await runCli(argv, io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.match(io.stderr(), /blocks executed \d\.\d{3} \(training \d\.\d{3}\)/);
  assert.equal(meta.options.skipTarget, 0.5);
  assert.equal(meta.options.gateEstimator, 'gumbel', 'skip trains with the Gumbel estimator by default (ConvNet-AIG)');
  const last = meta.history[1].gated;
  assert.ok(last.trainExecutionRate >= 0 && last.trainExecutionRate <= 1, 'training\'s sampled execution rate is recorded');
  assert.ok(Math.abs(last.executionRate - 0.5) < 0.2, `deterministic execution rate on the test set ${last.executionRate}`);

  // On the training samples the gates were fitted on, each gate executes half of them.
  const { model } = await loadRun(run);
  const ds = await loadDataset('synthetic', { trainLimit: 64, testLimit: 32, seed: 0 });
  const routing = RoutingState.start('hard', 64);
  const x = tf.tensor(toFloat(ds.train, 0, 64, new Float32Array(64 * 784)), [64, 28, 28, 1]);
  tf.tidy(() => {
    model.forward(x, model.plan(1), { routing });
  });
  x.dispose();
  for (const [gate, skipped] of Object.entries(routing.skipRates())) assert.ok(Math.abs(skipped - 0.5) <= 3 / 64, `${gate} skips ${skipped} of the training samples`);

  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--thresholds', '0,1', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  const [trained, open, closed] = s.points;
  assert.equal(s.dynamic, 'skip');
  assert.deepEqual(Object.keys(trained.skipRates), ['s0.b0', 's0.b1', 's1.b0', 's1.b1', 's2.b0', 's2.b1']);
  assert.ok(Math.abs(open.flopsRatio - (1 + open.gateShare)) < 1e-6, 'threshold 0: every block and gate');
  assert.ok(Object.values(closed.skipRates).every((r) => r === 1), 'threshold 1: every gated block skipped');
  for (const [block, perClass] of Object.entries(trained.classSkipRates as Record<string, (number | null)[]>)) {
    assert.equal(perClass.length, 10);
    const known = perClass.filter((v): v is number => v !== null);
    assert.ok(known.every((v) => v >= 0 && v <= 1), block);
  }
  fs.writeFileSync(path.join(run, 'sweep.json'), sweep.stdout());
  const info = captureIo();
  assert.equal(await runCli(['info', run], info), 0, info.stderr());
  assert.match(info.stdout(), /per-sample gates: skip; skip target \(blocks executed\) 0\.5/);
  assert.match(info.stdout(), /groups skipped per class and block/);
  assert.match(info.stdout(), /│ executed \(training\) │ executed │/);

  const dir = path.join(tmp, 'skip-onnx');
  const ex = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', dir, '--json'], ex), 0, ex.stderr());
  assert.equal(JSON.parse(ex.stdout()).manifest.segments.filter((g: { kind: string }) => g.kind === 'gated').length, 6);
  // Served: the classes and FLOPs ratios TF.js's deterministic gates give.
  await assertServedLikeGates(model, dir, ds.test);
});
