import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fails, ok } from './fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-tempres-cli-'));


test('controller train --temporal --resolutions: actions (u, r), eval reports every fixed (u, r); bad resolutions refused before training', async () => {
  const run = path.join(tmp, 'stream');
  await ok(['train', '--dataset', 'fashion-mnist-stream', '--train-limit', '400', '--test-limit', '200', '--val-samples', '200', '--workers', '0', '--epochs', '1', '--batch-size', '50', '--model', 'vgg-w', '--groups', '2', '--out', run]);
  const ctrl = path.join(tmp, 'ctrl');
  const t = (await ok(['controller', 'train', run, '--temporal', '--actions', '0.5,1', '--resolutions', '28,14', '--epochs', '2', '--out', ctrl, '--json'])).json();
  assert.deepEqual([t.actions, t.resolutions], [[0.5, 0.5, 1, 1], [14, 28, 14, 28]]);
  assert.deepEqual(t.validation.fixed.map((f: { resolution: number }) => f.resolution), [14, 28, 14, 28]);
  const [low, full] = [t.validation.fixed[2], t.validation.fixed[3]];
  assert.ok(low.flopsRatio < 0.5 * full.flopsRatio, 'u = 1 at 14x14 costs well under half of 28x28');
  const e = (await ok(['eval', run, '--controller', ctrl, '--dataset', 'fashion-mnist-stream', '--test-limit', '200', '--actions', '0.5,1', '--json'])).json();
  assert.equal(e.controller, 'temporal');
  assert.equal(e.fixed.length, 4);
  assert.equal(Object.values(e.resolutionHistogram as Record<string, number>).reduce((a, b) => a + b, 0), 200);
  const human = await ok(['eval', run, '--controller', ctrl, '--dataset', 'fashion-mnist-stream', '--test-limit', '200', '--actions', '0.5,1']);
  assert.match(human.out, /resolution histogram: /);
  await fails(['controller', 'train', run, '--temporal', '--resolutions', '28,40', '--out', path.join(tmp, 'x')], /resolution 40 is larger than the input \(28x28\)/);
  await fails(['controller', 'train', run, '--temporal', '--resolutions', '28,2', '--out', path.join(tmp, 'x')], /vgg-w cannot run at 2x2/);
  await fails(['controller', 'train', run, '--temporal', '--resolutions', '28,0', '--out', path.join(tmp, 'x')], /--resolutions: 0 is not a positive integer/);
  await fails(['controller', 'train', run, '--resolutions', '28,14', '--out', path.join(tmp, 'x')], /--resolutions are actions of a temporal controller \(--temporal\)/);
  // Exported with the network: the graph resizes each frame to its action's resolution.
  const x = (await ok(['export', run, '--controller', ctrl, '--onnx', path.join(tmp, 'stream.onnx'), '--json'])).json();
  assert.deepEqual(x.metadata.controller.temporal.resolutions, [14, 28, 14, 28]);
  assert.ok(!fs.existsSync(path.join(tmp, 'x')), 'nothing written by a refused command');
});
