import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import { assertServedLikeGates, assertTrainRefused } from './fixtures.js';
import { loadRun } from '../train/run.js';
import { loadDataset } from '../data/datasets.js';
import { maskCells, parseDynamicSweep, type DynamicSweepData } from '../report/dynamic.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-spatial-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const run = path.join(tmp, 'spatial');
const data = ['--dataset', 'synthetic', '--train-limit', '64', '--test-limit', '32', '--workers', '0', '--batch-size', '32'];
const small = ['--model', 'resnet-d'];

test('spatial sparsity: a target outside (0, 1), other targets and models without blocks are refused before any training', async () => {
  const cases: [string[], RegExp][] = [
    [[...small, '--dynamic', 'spatial', '--spatial-target', '0'], /the spatial target \(--spatial-target\) must be in \(0, 1\), got 0/],
    [[...small, '--dynamic', 'spatial', '--spatial-target', '1'], /the spatial target \(--spatial-target\) must be in \(0, 1\), got 1/],
    [[...small, '--dynamic', 'spatial', '--spatial-target', '-0.5'], /must be in \(0, 1\), got -0.5/],
    [[...small, '--dynamic', 'spatial', '--spatial-target', 'half'], /--spatial-target must be a number, got "half"/],
    [['--model', 'vgg-w', '--dynamic', 'spatial'], /--dynamic spatial gates the positions of residual blocks; vgg-w has no blocks to gate/],
    [[...small, '--dynamic', 'spatial', '--skip-target', '0.5'], /--skip-target does not apply to --dynamic spatial, whose target is --spatial-target: the spatial target \(the mean fraction/],
    [[...small, '--dynamic', 'skip', '--spatial-target', '0.5'], /--spatial-target does not apply to --dynamic skip, whose target is --skip-target/],
    [[...small, '--spatial-target', '0.5'], /spatialTarget \(--spatial-target\) needs a dynamic model \(--dynamic NAME\); resnet-d has no gates/],
  ];
  await assertTrainRefused(cases, data, tmp);
});

test('a spatial run trains in two steps; its deterministic fraction of positions is the target; sweep and info report positions per block, the report draws the masks over test images; export and serve', async () => {
  const io = captureIo();
  const argv = ['train', ...small, '--dynamic', 'spatial', ...data, '--epochs', '2', '--pretrain-epochs', '1', '--vanilla', '--spatial-target', '0.4', '--out', run, '--json'];
  assert.equal(await runCli(argv, io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.equal(meta.options.spatialTarget, 0.4);
  assert.equal(meta.options.gateEstimator, 'gumbel');
  const last = meta.history[1].gated;
  // The gate fit holds on training samples; on 32 test samples the fraction computed stays near it.
  assert.ok(Math.abs(last.executionRate - 0.4) < 0.15, `positions computed on the test set ${last.executionRate}`);
  assert.ok(last.flopsRatio < 0.9, `FLOPs ratio ${last.flopsRatio}`);

  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--thresholds', '0,1', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  const [trained, open, closed] = s.points;
  assert.equal(s.dynamic, 'spatial');
  assert.equal(s.decisions, 'positions');
  assert.match(s.note, /computes only the output positions its gate selects/);
  assert.deepEqual(Object.keys(trained.skipRates), ['s0.b0', 's0.b1', 's1.b0', 's1.b1', 's2.b0', 's2.b1']);
  assert.ok(Math.abs(open.flopsRatio - (1 + open.gateShare)) < 1e-6, 'threshold 0: every position and gate');
  assert.ok(Object.values(closed.skipRates).every((r) => r === 1), 'threshold 1: no position computed');
  assert.ok(closed.flopsRatio < trained.flopsRatio && trained.flopsRatio < open.flopsRatio);
  // The masks of the first test images, drawn by the report over them; class names from the file are escaped.
  assert.deepEqual(s.masks.blocks.map((b: { name: string }) => b.name), Object.keys(trained.skipRates));
  assert.equal(s.masks.samples.length, 4);
  assert.deepEqual(s.masks.samples[0].masks.map((m: number[]) => m.length), [784, 784, 196, 196, 49, 49]);
  const runRef = { dir: run, model: 'resnet-d', mechanism: 'spatial' };
  const bad = structuredClone(s);
  bad.masks.samples[1].masks[2].pop();
  assert.throws(() => parseDynamicSweep(bad, 'sweep.json', runRef), /sweep\.json: not a threshold sweep of a dynamic run .*masks\.samples\[1\]\.masks\[2\]: 195 positions, s1\.b0 has 14 x 14/);
  const cells = maskCells((parseDynamicSweep(s, 'sweep.json', runRef) as { sweep: DynamicSweepData }).sweep);
  assert.equal(cells.length, 4 * (784 * 2 + 196 * 2 + 49 * 2));
  const computed = cells.filter((c) => c.block === 's0.b0').reduce((a, c) => a + c.computed, 0) / (4 * 784);
  assert.ok(Math.abs(computed - s.masks.samples.reduce((a: number, m: { masks: number[][] }) => a + m.masks[0].reduce((x, y) => x + y, 0), 0) / (4 * 784)) < 1e-12);
  s.classNames[s.masks.samples[0].label] = '<b>bold</b>';
  fs.writeFileSync(path.join(run, 'sweep.json'), JSON.stringify(s));
  const report = captureIo();
  const html = path.join(tmp, 'report.html');
  assert.equal(await runCli(['report', run, '--sections', 'dynamic', '--no-sweep', '--out', html], report), 0, report.stderr());
  const page = fs.readFileSync(html, 'utf8');
  assert.match(page, /data-chart="dynamic-spatial-masks-spatial"/);
  assert.match(page, /positions computed \(orange\) by each gated block over the first 4 test images/);
  assert.doesNotMatch(page, /<b>bold<\/b>/);
  fs.writeFileSync(path.join(run, 'sweep.json'), sweep.stdout());
  const info = captureIo();
  assert.equal(await runCli(['info', run], info), 0, info.stderr());
  assert.match(info.stdout(), /per-sample gates: spatial; spatial target \(positions computed per block\) 0\.4/);
  // Exported by segments, one graph per spatially gated block, and served with the positions TF.js computes.
  const dir = path.join(tmp, 'onnx');
  const ex = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', dir], ex), 0, ex.stderr());
  assert.match(ex.stdout(), /6 spatially gated blocks each one graph, threshold 0\.5/);
  const { model } = await loadRun(run);
  const ds = await loadDataset('synthetic', { trainLimit: 64, testLimit: 32, seed: 0 });
  await assertServedLikeGates(model, dir, ds.test);
});
