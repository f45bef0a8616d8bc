import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import { assertTrainRefused } from './fixtures.js';
import { buildReport, gatherRuns } from '../report/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-moe-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const run = path.join(tmp, 'moe');
const data = ['--dataset', 'synthetic', '--train-limit', '64', '--test-limit', '32', '--workers', '0', '--batch-size', '32'];

test('a mixture of experts trains from the CLI, logs its balance and overflow, and sweep and info show its expert load', async () => {
  const io = captureIo();
  const argv = ['train', '--model', 'vgg-moe', '--experts', '3', '--top-k', '2', '--capacity-factor', '1', '--load-weight', '0.1', '--importance-weight', '0.1', ...data, '--epochs', '1', '--out', run, '--json'];
  assert.equal(await runCli(argv, io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  const g = meta.history[0].gated;
  assert.ok(g.expertCv >= 0 && g.overflowRate >= 0 && g.overflowRate <= 1, JSON.stringify(g));
  assert.ok(g.trainOverflowRate >= 0 && g.trainOverflowRate <= 1, 'training overflow recorded');
  assert.match(io.stderr(), /expert load CV \d\.\d{3}, overflow \d+\.\d% \(training \d+\.\d%\)/);

  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  assert.equal(s.points.length, 1, 'a mixture has no threshold to sweep: one point');
  const e = s.points[0].experts.c4;
  assert.equal(e.load.length, 3);
  assert.ok(Math.abs(e.load.reduce((a: number, b: number) => a + b, 0) - 1) < 1e-9);
  assert.equal(e.classes.length, 10);
  assert.ok(s.points[0].overflowRate >= 0);
  assert.deepEqual(s.points[0].skipRates, {}, 'experts are choices, not skipped shares');
  fs.writeFileSync(path.join(run, 'sweep.json'), sweep.stdout());

  const info = captureIo();
  assert.equal(await runCli(['info', run], info), 0, info.stderr());
  assert.match(info.stdout(), /top-2 \(noisy in training\), capacity factor 1 in training and no limit at evaluation/);
  assert.match(info.stdout(), /expert load per block/);
  assert.match(info.stdout(), /experts each class ran at c4/);
  // The report (and the dashboard, which serves it) draws the load and the class-by-expert table.
  const report = await buildReport(await gatherRuns([run], { sweep: false }));
  const dyn = report.sections.find((x) => x.name === 'dynamic')!;
  assert.ok(dyn.charts.includes('dynamic-expert-load-moe-c4') && dyn.charts.includes('dynamic-class-experts-moe-c4'), dyn.charts.join());
  assert.ok(!dyn.charts.some((c) => c.startsWith('dynamic-skips') || c.startsWith('dynamic-routes')), 'experts are not drawn as skips or routes');
  assert.ok(report.html.includes(`<tr>${e.load.map((l: number) => `<td>${(100 * l).toFixed(2)}%</td>`).join('')}</tr>`), 'the load table holds the sweep\'s shares');
  const bad = captureIo();
  assert.equal(await runCli(['sweep', run, '--thresholds', '0.3', '--json'], bad), 1);
  assert.match(bad.stderr(), /--thresholds does not apply to a mixture of experts/);
});

test('bad mixtures: clear errors before any training', async () => {
  await assertTrainRefused(
    [
      [['--model', 'vgg-moe', '--experts', '2', '--top-k', '3'], /top-k \(3\) cannot exceed the number of experts \(2\)/],
      [['--model', 'vgg-moe', '--experts', '0'], /--experts must be an integer >= 1, got 0/],
      [['--model', 'vgg-moe', '--capacity-factor', '0'], /--capacity-factor must be a number > 0, got 0/],
      [['--model', 'resnet-moe', '--overflow', 'drop'], /unknown overflow policy "drop"; expected one of residual, next/],
      [['--model', 'mlp-moe', '--priority', 'first'], /unknown routing priority "first"; expected one of batch, score/],
      [['--model', 'vgg-w', '--priority', 'score'], /priority \(--priority\) needs a mixture of experts/],
      [['--model', 'vgg-w', '--top-k', '2'], /topK \(--top-k\) needs a mixture of experts \(--model vgg-moe, resnet-moe or mlp-moe\)/],
      [['--model', 'resnet38', '--dynamic', 'moe'], /--dynamic moe needs --model vgg-moe, resnet-moe or mlp-moe/],
      [['--model', 'vgg-moe', '--flops-target', '0.5'], /--flops-target does not apply to --dynamic moe: a mixture runs k experts per sample, so its cost is set by --top-k/],
    ],
    data,
    tmp,
  );
});
