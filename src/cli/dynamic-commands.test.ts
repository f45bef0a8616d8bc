import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-dynamic-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const run = path.join(tmp, 'acs');
const data = ['--dataset', 'synthetic', '--train-limit', '64', '--test-limit', '32', '--workers', '0', '--batch-size', '32'];

test('a dynamic run trains in two steps, records its gated accuracy and FLOPs, and sweeps its thresholds', async () => {
  const io = captureIo();
  const code = await runCli(['train', '--model', 'resnet38', '--dynamic', 'acs-gn', ...data, '--epochs', '2', '--pretrain-epochs', '1', '--flops-target', '0.5', '--out', run, '--json'], io);
  assert.equal(code, 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.equal(meta.history.length, 2);
  for (const e of meta.history) {
    assert.ok(e.gated.accuracy >= 0 && e.gated.accuracy <= 1);
    assert.ok(e.gated.flopsRatio > 0, 'the executed FLOPs ratio is recorded every epoch');
  }
  assert.equal(meta.options.pretrainEpochs, 1);
  assert.equal(meta.options.flopsTarget, 0.5);
  assert.match(io.stderr(), /gated: \d+\.\d+% at FLOPs ratio \d\.\d{3}/);

  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--thresholds', '0,1', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  assert.deepEqual(s.points.map((p: { threshold: number }) => p.threshold), [0.5, 0, 1], 'the trained threshold first, then the asked ones');
  for (const p of s.points) {
    assert.ok(p.flopsMin <= p.flopsRatio + 1e-9 && p.flopsRatio <= p.flopsMax + 1e-9);
    assert.ok(p.latencyMs.batch1 > 0 && p.latencyMs.batch64 > 0);
    assert.equal(p.histogram.reduce((a: number, b: number) => a + b, 0), 32);
  }
  const [, open, closed] = s.points;
  assert.ok(Math.abs(open.flopsRatio - (1 + open.gateShare)) < 1e-6, 'threshold 0 runs every group: the backbone plus the gates');
  assert.ok(closed.flopsRatio < 0.5 * open.flopsRatio, 'threshold 1 skips every inner group');
  assert.ok(Object.values(closed.skipRates).every((r) => r === 1));
  assert.ok(Object.values(open.skipRates).every((r) => r === 0), 'threshold 0 skips nothing');
  assert.equal(Object.keys(open.skipRates).length, 18, 'one rate per gated block of resnet38');
  assert.ok(s.full.accuracy >= 0 && s.full.latencyMs.batch64 > 0 && s.masked.latencyMs.batch64 > 0);
});

test('dynamic options: clear errors before any training', async () => {
  const cases: [string[], RegExp][] = [
    [['--model', 'resnet38', '--dynamic', 'nope'], /unknown mechanism "nope"; expected one of acs-dg, acs-gn/],
    [['--model', 'resnet38', '--dynamic', 'acs-dg', '--gate-width', '6'], /s0\.b0\.gate: an acs-dg gate's width \(gateWidth\) must be a power of two >= 2, as its DGConv layers need, got 6/],
    [['--model', 'vgg-w', '--dynamic', 'acs-gn'], /--dynamic acs-gn needs a model with gated blocks; vgg-w has none \(expected one of resnet38\)/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--flops-target', '0'], /--flops-target must be a number in \(0, 1\], got 0/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--flops-target', '1.5'], /--flops-target must be a number in \(0, 1\], got 1.5/],
    [['--model', 'vgg-w', '--pretrain-epochs', '1'], /pretrainEpochs needs a dynamic model \(--dynamic NAME\); vgg-w has no gates/],
    [['--model', 'vgg-w', '--gate-estimator', 'gumbel'], /gateEstimator needs a dynamic model \(--dynamic NAME\); vgg-w has no gates/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--gate-estimator', 'reinforce'], /--gate-estimator must be one of sigmoid, gumbel, got "?reinforce"?/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--schedule', 'sandwich'], /a dynamic model trains at u = 1 .* the sandwich schedule cannot be combined/],
  ];
  for (const [argv, pattern] of cases) {
    const io = captureIo();
    const out = path.join(tmp, `bad-${argv.join('-')}`);
    assert.equal(await runCli(['train', ...argv, ...data, '--out', out], io), 1, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(io.stderr(), pattern, argv.join(' '));
    assert.doesNotMatch(io.stderr(), /\n\s+at /);
    assert.equal(fs.existsSync(path.join(out, 'checkpoint.json')), false);
  }
});

test('info shows a dynamic run’s gated accuracy and FLOPs; export says such models do not export yet', async () => {
  const io = captureIo();
  assert.equal(await runCli(['info', run], io), 0, io.stderr());
  assert.match(io.stdout(), /│ gated\s+│ FLOPs ratio │/);
  const ex = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', path.join(tmp, 'acs.onnx')], ex), 1);
  assert.match(ex.stderr(), /resnet38 with acs-gn gates decides per sample inside the network; such models do not export to ONNX yet/);
});

test('info on a dynamic run: mechanism, target and the gates’ share; with its sweep file, skip rates per block and compute per class', async () => {
  const bare = captureIo();
  assert.equal(await runCli(['info', run], bare), 0, bare.stderr());
  assert.match(bare.stdout(), /per-sample gates: acs-gn; FLOPs target 0\.5 \(efficiency weight 4\), trained threshold 0\.5; the gates cost \d+\.\d% of the backbone's FLOPs/);
  assert.match(bare.stdout(), /no threshold sweep beside the run: `dynn sweep \S+acs --json > \S+acs\/sweep\.json` makes one/);

  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--thresholds', '1', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const file = path.join(run, 'sweep.json');
  fs.writeFileSync(file, sweep.stdout());
  const s = JSON.parse(sweep.stdout());
  try {
    const io = captureIo();
    assert.equal(await runCli(['info', run], io), 0, io.stderr());
    const out = io.stdout();
    const trained = s.points[0];
    assert.equal(trained.threshold, 0.5);
    assert.ok(out.includes(`at threshold 0.5 on 32 synthetic test samples (${file}): accuracy ${(100 * trained.accuracy).toFixed(2)}%, FLOPs ratio ${trained.flopsRatio.toFixed(3)}`));
    // One row per stage, one column per block: 3 x 6 for resnet38.
    const grid = out.slice(out.indexOf('groups skipped per gated block'));
    assert.match(grid, /│\s+│ b0\s+│ b1\s+│ b2\s+│ b3\s+│ b4\s+│ b5\s+│/);
    for (const stage of ['s0', 's1', 's2']) {
      const cells = [0, 1, 2, 3, 4, 5].map((b) => `${(100 * trained.skipRates[`${stage}.b${b}`]).toFixed(2)}%`);
      assert.match(grid, new RegExp(`│ ${stage} +│ ${cells.map((c) => c.replace('.', '\\.')).join(' +│ ')} +│`), stage);
    }
    const classes = out.slice(out.indexOf('compute per class (most first)'));
    const ratios = Array.from(classes.matchAll(/│ pattern (\d) +│ ([\d.]+) +│/g), (m) => [Number(m[1]), Number(m[2])]);
    assert.equal(ratios.length, 10);
    for (let i = 1; i < ratios.length; i++) assert.ok(ratios[i - 1][1] >= ratios[i][1], 'most compute first');
    for (const [c, r] of ratios) assert.equal(r, Number(trained.classFlops[c].toFixed(3)));
    const json = captureIo();
    assert.equal(await runCli(['info', run, '--json'], json), 0);
    const d = JSON.parse(json.stdout()).dynamic;
    assert.equal(d.mechanism, 'acs-gn');
    assert.ok(Math.abs(d.gateShare - trained.gateShare) < 1e-12, 'the gates’ share of the model equals the sweep’s');
    assert.deepEqual(d.sweep.skipRates, trained.skipRates);

    // A corrupt or foreign sweep file: the info stands, the problem is named, with the command that remakes it.
    const cases: [string, RegExp][] = [
      ['{"points": ', /sweep\.json: not valid JSON/],
      [JSON.stringify({ ...s, points: [{ ...trained, skipRates: { 's0.b0': 2 } }] }), /sweep\.json: not a threshold sweep of a dynamic run .*points\[0\]\.skipRates\.s0\.b0: .*remake it with `dynn sweep/],
      [JSON.stringify({ ...s, model: 'resnet-d' }), /a threshold sweep of resnet-d with acs-gn gates, but the run is resnet38 with acs-gn gates/],
    ];
    for (const [text, pattern] of cases) {
      fs.writeFileSync(file, text);
      const bad = captureIo();
      assert.equal(await runCli(['info', run], bad), 0, bad.stderr());
      assert.match(bad.stdout(), /training history/);
      assert.match(bad.stdout(), pattern);
      assert.doesNotMatch(bad.stdout() + bad.stderr(), /\n\s+at /);
    }
    // Text from the file reaches the terminal without its control characters.
    fs.writeFileSync(file, JSON.stringify({ ...s, classNames: s.classNames.map((n: string, i: number) => (i ? n : 'cat\u001b[2J\u0007')) }));
    const esc = captureIo();
    assert.equal(await runCli(['info', run], esc), 0);
    assert.match(esc.stdout(), /│ cat\?\[2J\? +│/);
    assert.doesNotMatch(esc.stdout(), /\u001b|\u0007/);
  } finally {
    fs.rmSync(file, { force: true });
  }
});

test('dynn models lists the per-sample mechanisms and marks the models that take them', async () => {
  const io = captureIo();
  assert.equal(await runCli(['models'], io), 0);
  assert.match(io.stdout(), /resnet38 \(--dynamic\)/);
  assert.match(io.stdout(), /per-sample mechanisms \(dynn train --dynamic NAME\)[\s\S]*acs-dg[\s\S]*acs-gn/);
  const json = captureIo();
  assert.equal(await runCli(['models', '--json'], json), 0);
  assert.deepEqual(JSON.parse(json.stdout()).filter((m: { dynamic: boolean }) => m.dynamic).map((m: { name: string }) => m.name), ['resnet38']);
});

test('dynn report on a dynamic run with its threshold sweep saved beside it draws the sweep and the backbone’s u-curve', async () => {
  const sweep = captureIo();
  assert.equal(await runCli(['sweep', run, '--test-limit', '32', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  fs.writeFileSync(path.join(run, 'sweep.json'), sweep.stdout());
  const out = path.join(tmp, 'report.html');
  const io = captureIo();
  assert.equal(await runCli(['report', run, '--out', out, '--test-limit', '32'], io), 0, io.stderr());
  assert.match(fs.readFileSync(out, 'utf8'), /<svg/);
  assert.match(io.stdout(), /Accuracy against utilization: 1 chart/, 'the backbone measured at fixed u');
  assert.match(io.stdout(), /Per-sample compute of dynamic runs: 5 charts/, 'the threshold sweep drawn');
  fs.rmSync(path.join(run, 'sweep.json'));
});

test('a dynamic checkpoint edited into a static one fails on load, naming the gate weights', async () => {
  const edited = path.join(tmp, 'edited');
  fs.cpSync(run, edited, { recursive: true });
  const file = path.join(edited, 'checkpoint.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  delete manifest.config.args.dynamic;
  fs.writeFileSync(file, JSON.stringify(manifest));
  const io = captureIo();
  assert.equal(await runCli(['info', edited], io), 1);
  assert.match(io.stderr(), /weights do not match the model: .*gate/);
});
