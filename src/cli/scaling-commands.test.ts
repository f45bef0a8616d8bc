import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import type { Io } from './io.js';
import { captureIo } from './capture.js';
import { thresholdsOption } from './scaling-commands.js';

const capture = captureIo;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-scaling-cli-'));
const exitsRun = path.join(tmp, 'exits');
const slimRun = path.join(tmp, 'slim');
const base = ['--dataset', 'synthetic', '--train-limit', '192', '--test-limit', '128', '--workers', '0', '--epochs', '1', '--batch-size', '64'];

test('an early-exit run: train, info, threshold sweep (JSON and table) and budgeted thresholds', async () => {
  const io = capture();
  assert.equal(await runCli(['train', '--model', 'vgg-exits', ...base, '--val-samples', '64', '--exit-weights', '1,1,1,1', '--out', exitsRun], io), 0, io.stderr());

  const info = capture();
  assert.equal(await runCli(['info', exitsRun, '--json'], info), 0, info.stderr());
  const i = JSON.parse(info.stdout());
  assert.equal(i.exits.length, 4);
  assert.deepEqual(i.exits.map((e: { after: string }) => e.after), ['stem.relu', 'pool1', 'c3.relu', 'classifier']);
  assert.ok(i.exits[0].cumulativeRatio < 0.05 && i.exits[3].cumulativeRatio > 1);

  const sw = capture();
  assert.equal(await runCli(['sweep', exitsRun, '--thresholds', '0.5,2.5,1:2:2.2', '--test-limit', '64', '--json'], sw), 0, sw.stderr());
  const s = JSON.parse(sw.stdout());
  assert.equal(s.model, 'vgg-exits');
  assert.equal(s.points.length, 3);
  assert.deepEqual(s.points.map((p: { threshold: unknown }) => p.threshold), [0.5, 2.5, [1, 2, 2.2]]);
  for (const p of s.points) {
    assert.ok(p.accuracy >= 0 && p.accuracy <= 1);
    assert.ok(p.flopsRatio > 0);
    assert.equal(p.exitShares.length, 4);
    assert.ok(Math.abs(p.exitShares.reduce((a: number, b: number) => a + b, 0) - 1) < 1e-9);
    assert.ok(p.latencyMs.batch256 > 0);
  }
  assert.ok(s.points[1].flopsRatio <= s.points[0].flopsRatio, 'a laxer entropy threshold costs no more');
  assert.ok(s.baseline.latencyMs.batch256 > 0 && s.exitAccuracy.length === 4);

  const human = capture();
  assert.equal(await runCli(['sweep', exitsRun, '--thresholds', '0.9', '--rule', 'confidence', '--test-limit', '64', '--no-latency'], human), 0, human.stderr());
  assert.match(human.stdout(), /last exit alone/);
  assert.match(human.stdout(), /exit shares/);

  const fit = capture();
  assert.equal(await runCli(['fit-exits', exitsRun, '--budget', '0.5,0.8', '--json', '--save'], fit), 0, fit.stderr());
  const f = JSON.parse(fit.stdout());
  assert.equal(f.validationSamples, 64);
  assert.equal(f.fits.length, 2);
  for (const x of f.fits) assert.ok(x.validation.flopsRatio <= x.budget && x.validation.thresholds.length === 3);
  const saved = JSON.parse(fs.readFileSync(path.join(exitsRun, 'checkpoint.json'), 'utf8'));
  assert.deepEqual(saved.meta.exitPolicy.thresholds, f.fits[1].validation.thresholds);

  // Exit thresholds are operating points of `dynn select`, next to the fixed widths and cascades.
  const sel = capture();
  assert.equal(await runCli(['select', exitsRun, '--objective', 'min-error', '--budget-flops', '0.6', '--json'], sel), 0, sel.stderr());
  const chosen = JSON.parse(sel.stdout());
  assert.ok(chosen.front.some((c: { kind: string }) => c.kind === 'early-exit'), 'early-exit candidates take part');
  assert.ok(chosen.choice.flopsRatio <= 0.6);

  // The saved policy travels into the ONNX export as the runtime's default.
  const onnx = capture();
  assert.equal(await runCli(['export', exitsRun, '--onnx', path.join(tmp, 'exits.onnx'), '--json'], onnx), 0, onnx.stderr());
  const m = JSON.parse(onnx.stdout()).metadata;
  assert.equal(m.exits.count, 4);
  assert.deepEqual(m.exits.policy, { rule: 'entropy', thresholds: f.fits[1].validation.thresholds });
  assert.deepEqual(m.exits.inGraph, { rule: 'entropy' }, 'the stored rule goes into the graph');
  const said = capture();
  assert.equal(await runCli(['export', exitsRun, '--onnx', path.join(tmp, 'exits-2.onnx')], said), 0, said.stderr());
  assert.match(said.stdout(), /4 exits in one run, the entropy rule in the graph \(default policy: entropy /);
});

test('calibrate: the requested widths, stored in the run; sandwich and distillation options reach the trainer', async () => {
  const io = capture();
  const teacher = path.join(tmp, 'teacher');
  assert.equal(await runCli(['train', '--model', 'mlp-w', ...base, '--vanilla', '--out', teacher], io), 0, io.stderr());
  const args = ['--schedule', 'sandwich', '--sandwich-widths', '1', '--inplace-alpha', '0.5', '--teacher', teacher, '--distill-alpha', '0.4', '--distill-t', '2'];
  assert.equal(await runCli(['train', '--model', 'vgg-w', ...base, ...args, '--json', '--out', slimRun], io), 0, io.stderr());
  const meta = JSON.parse(io.stdout().slice(io.stdout().indexOf('{'))).meta;
  assert.equal(meta.options.schedule, 'sandwich');
  assert.equal(meta.options.sandwichWidths, 1);
  assert.equal(meta.options.inplaceDistill, true);
  assert.equal(meta.options.inplaceAlpha, 0.5);
  assert.equal(meta.options.distillAlpha, 0.4);
  assert.equal(meta.options.distillT, 2);

  const cal = capture();
  assert.equal(await runCli(['calibrate', slimRun, '--u', '0.3,0.7', '--samples', '64', '--json'], cal), 0, cal.stderr());
  const c = JSON.parse(cal.stdout());
  assert.deepEqual(c.levels, [2, 6]);
  assert.equal(c.dataset, 'synthetic');
  const saved = JSON.parse(fs.readFileSync(path.join(slimRun, 'checkpoint.json'), 'utf8'));
  assert.deepEqual(saved.meta.calibrations[0].levels, [2, 6]);
});

test('bad scaling input: clear messages, nothing changed', async () => {
  const cases: [string[], RegExp][] = [
    [['calibrate', slimRun], /calibrate needs --u LIST/],
    [['calibrate', slimRun, '--u', '0,1'], /--u: 0 is not a utilization in \(0, 1\]/],
    [['calibrate', path.join(tmp, 'missing'), '--u', '0.5'], /missing/],
    [['sweep', slimRun, '--thresholds', '0.1'], /model vgg-w has no early exits; thresholds need an exit model/],
    [['sweep', exitsRun, '--thresholds', 'low'], /--thresholds: low is not a number/],
    [['sweep', exitsRun, '--thresholds', '0.1', '--rule', 'margin'], /--rule must be one of entropy, confidence/],
    [['sweep', exitsRun, '--thresholds', '0.1', '--u', '0.5,1'], /--u takes one utilization/],
    [['sweep', exitsRun, '--thresholds', '0.1:0.2'], /expected 3 thresholds \(one per intermediate exit\), got 2/],
    [['fit-exits', exitsRun], /fit-exits needs --budget LIST/],
    [['fit-exits', exitsRun, '--budget', '0.001'], /budget 0.001 is below the cost of leaving every sample at the first exit/],
    [['fit-exits', slimRun, '--budget', '0.5'], /no early exits/],
    [['train', ...base, '--teacher', path.join(tmp, 'nowhere'), '--out', path.join(tmp, 'x')], /nowhere/],
    [['train', ...base, '--distill-alpha', '3', '--out', path.join(tmp, 'x')], /--distill-alpha must be a number in \[0, 1\], got 3/],
    [['train', ...base, '--exit-weights', '1,x', '--out', path.join(tmp, 'x')], /--exit-weights needs a comma-separated list of non-negative numbers/],
    [['train', ...base, '--no-inplace-distill', '--inplace-alpha', '2', '--out', path.join(tmp, 'x')], /--inplace-alpha must be a number in \[0, 1\], got 2/],
  ];
  const before = fs.readFileSync(path.join(exitsRun, 'checkpoint.json'), 'utf8');
  for (const [argv, message] of cases) {
    const io = capture();
    assert.equal(await runCli(argv, io), 1, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(io.stderr(), message, argv.join(' '));
    assert.doesNotMatch(io.stderr(), /\n\s+at /, 'no stack trace');
  }
  assert.equal(fs.readFileSync(path.join(exitsRun, 'checkpoint.json'), 'utf8'), before);
  assert.deepEqual(thresholdsOption('0.1, 0.2:0.3'), [0.1, [0.2, 0.3]]);
  fs.rmSync(tmp, { recursive: true });
});
