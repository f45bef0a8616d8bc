import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import { assertTrainRefused } from './fixtures.js';
import { loadRun } from '../train/run.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-condconv-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const data = ['--dataset', 'synthetic', '--train-limit', '64', '--test-limit', '32', '--workers', '0', '--batch-size', '32'];
const small = ['--model', 'vgg-condconv'];

test('dynamic-parameter options: clear errors before any training', async () => {
  await assertTrainRefused(
    [
      [[...small, '--experts', '0'], /--experts must be an integer >= 1, got 0/],
      [[...small, '--experts', '1.5'], /--experts must be an integer >= 1, got 1.5/],
      [[...small, '--routing', 'top1'], /unknown routing "top1"; expected one of sigmoid, softmax/],
      [[...small, '--routing', 'softmax', '--temperature', '0'], /--temperature must be a number > 0, got 0/],
      [[...small, '--temperature', '30'], /a temperature needs --routing softmax/],
      [[...small, '--anneal-epochs', '2'], /annealEpochs \(--anneal-epochs\) moves a softmax temperature to 1; give --routing softmax and a --temperature other than 1/],
      [['--model', 'vgg-w', '--routing', 'softmax'], /routing \(--routing\) needs a model with conditional convolutions \(expected one of resnet-condconv, vgg-condconv\), not vgg-w/],
    ],
    data,
    tmp,
  );
});

test('a vgg-condconv run trains with an annealed temperature, and sweep --json reports its routing', async () => {
  const run = path.join(tmp, 'cc');
  const io = captureIo();
  const args = ['train', ...small, '--experts', '3', '--routing', 'softmax', '--temperature', '9', '--anneal-epochs', '2', '--epochs', '2', ...data, '--out', run, '--json'];
  assert.equal(await runCli(args, io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.equal(meta.history.length, 2);
  // One operating point: measured at u = 1 only, and info shows one row.
  assert.deepEqual(Object.keys(meta.history[0].testAccuracy), ['1']);
  const shown = captureIo();
  assert.equal(await runCli(['info', run], shown), 0, shown.stderr());
  assert.match(shown.stdout(), /throttleable blocks: none \(one operating point: u does not change its compute\)/);
  assert.doesNotMatch(shown.stdout(), /u=0\.25/);
  // Epoch 0 at 9, epoch 1 at 9 - 8/2: the temperature the run was saved with.
  const { model } = await loadRun(run);
  assert.deepEqual(Array.from(model.getWeights().find((w) => w.name === 'c2.conv.temperature')!.data), [5]);
  model.dispose();
  // No throttleable unit: the default sweep is one point, and a u below 1 is refused rather than run whole.
  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  assert.deepEqual(s.points.map((p: { u: number }) => p.u), [1]);
  const partial = captureIo();
  assert.equal(await runCli(['sweep', run, '--u', '0.5,1', '--no-latency'], partial), 1);
  assert.match(partial.stderr(), /--u does not apply to vgg-condconv: it has no throttleable unit/);
  assert.deepEqual(s.routing.layers.map((l: { layer: string }) => l.layer), ['c2.conv', 'c3.conv', 'c4.conv']);
  assert.equal(s.routing.layers[0].perClass.length, 10);
  const info = captureIo();
  assert.equal(await runCli(['info', run], info), 0, info.stderr());
  assert.match(info.stdout(), /c2\.conv\.route/);
});
