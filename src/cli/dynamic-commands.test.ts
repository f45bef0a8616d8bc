import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import { assertTrainRefused } from './fixtures.js';
import { loadRun } from '../train/run.js';

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
    [['--model', 'resnet38', '--dynamic', 'nope'], /unknown mechanism "nope"; expected one of acs-dg, acs-gn, branch, moe, resolution, skip, skip-ff, spatial, width/],
    [['--model', 'resnet38', '--dynamic', 'acs-dg', '--gate-width', '6'], /s0\.b0\.gate: an acs-dg gate's width \(gateWidth\) must be a power of two >= 2, as its DGConv layers need, got 6/],
    [['--model', 'vgg-w', '--dynamic', 'acs-gn'], /--dynamic acs-gn needs a model with a gated form; vgg-w has none \(expected one of densenet41, densenet53, resnet-d, resnet38\)/],
    [['--model', 'densenet-w', '--dynamic', 'acs-dg'], /--dynamic acs-dg needs a model with a gated form; densenet-w has none \(expected one of densenet41, densenet53, resnet-d, resnet38\)/],
    [['--model', 'densenet41', '--dynamic', 'acs-dg', '--gate-width', '6'], /d0\.u0\.gate: an acs-dg gate's width \(gateWidth\) must be a power of two >= 2, as its DGConv layers need, got 6/],
    [['--model', 'densenet41', '--dynamic', 'acs-gn', '--groups', '5'], /d0\.u0: 128 inner channels do not split into 5 groups/],
    [['--model', 'resnet38', '--gate-scale', '2'], /gateScale \(--gate-scale\) needs a dynamic model \(--dynamic NAME\)/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--gate-scale', '0'], /--gate-scale must be a number > 0, got 0/],
    [['--model', 'densenet41', '--decisions', 'channel'], /decisions \(--decisions channel\) needs a dynamic model \(--dynamic NAME\)/],
    [['--model', 'densenet41', '--dynamic', 'acs-gn', '--decisions', 'each'], /unknown decision form "each"; expected one of channel, nested/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--flops-target', '0'], /--flops-target must be a number in \(0, 1\], got 0/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--flops-target', '1.5'], /--flops-target must be a number in \(0, 1\], got 1.5/],
    [['--model', 'vgg-w', '--pretrain-epochs', '1'], /pretrainEpochs \(--pretrain-epochs\) needs a dynamic model \(--dynamic NAME\); vgg-w has no gates/],
    [['--model', 'vgg-w', '--gate-estimator', 'gumbel'], /gateEstimator \(--gate-estimator\) needs a dynamic model \(--dynamic NAME\); vgg-w has no gates/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--gate-estimator', 'reinforce'], /--gate-estimator must be one of sigmoid, gumbel, got "?reinforce"?/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--schedule', 'sandwich'], /a dynamic model trains at u = 1 .* the sandwich schedule cannot be combined/],
    [['--model', 'vgg-w', '--dynamic', 'width', '--width-target', '0'], /--width-target must be a number in \(0, 1\], got 0/],
    [['--model', 'vgg-w', '--dynamic', 'width', '--width-target', '1.5'], /--width-target must be a number in \(0, 1\], got 1.5/],
    [['--model', 'mlp-w', '--dynamic', 'width'], /--dynamic width chooses a width per sample; mlp-w is not throttleable after its first stage \(expected one of resnet38, vgg-w\)/],
    [['--model', 'resnet-d', '--dynamic', 'width'], /resnet-d is not throttleable after its first stage/],
    [['--model', 'resnet38', '--dynamic', 'acs-gn', '--width-target', '0.5'], /--width-target does not apply to --dynamic acs-gn, whose target is --flops-target/],
    [['--model', 'vgg-w', '--width-target', '0.5'], /widthTarget \(--width-target\) needs a dynamic model \(--dynamic NAME\); vgg-w has no gates/],
    [['--model', 'vgg-w', '--dynamic', 'width', '--width-routes', '9'], /switch: routes must be an integer in 2..8 \(the tail's groups\), got 9/],
    [['--model', 'vgg-w', '--dynamic', 'width'], /--dynamic width trains its gate with the routes frozen: train the routes first \(--pretrain-epochs N\) or start from a run that did \(--init RUN\)/],
    [['--model', 'resnet-d', '--dynamic', 'skip', '--gate-threshold', '1'], /--dynamic skip fits its gates to the target at the threshold: --gate-threshold must be in \(0, 1\), got 1/],
    [['--model', 'vgg-w', '--dynamic', 'width', '--pretrain-epochs', '1', '--gate-threshold', '0'], /--dynamic width fits its gates to the target at the threshold: --gate-threshold must be in \(0, 1\), got 0/],
    [['--model', 'resnet-d', '--dynamic', 'skip', '--decisions', 'channel'], /--dynamic skip decides whole blocks: it takes --decisions nested only, got channel/],
  ];
  await assertTrainRefused(cases, data, tmp);
});

test('info shows a dynamic run’s gated accuracy and FLOPs; export writes it by segments to a folder that dynn serve loads', async () => {
  const io = captureIo();
  assert.equal(await runCli(['info', run], io), 0, io.stderr());
  assert.match(io.stdout(), /│ gated\s+│ FLOPs ratio │/);
  const out = path.join(tmp, 'acs-onnx');
  const ex = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', out, '--json'], ex), 0, ex.stderr());
  const { manifest } = JSON.parse(ex.stdout());
  assert.equal(manifest.segments.filter((s: { kind: string }) => s.kind === 'gated').length, 18);
  assert.equal(manifest.threshold, 0.5, 'the run\'s trained threshold');
  assert.ok(fs.existsSync(path.join(out, 'manifest.json')));
  const again = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', out], again), 1);
  assert.match(again.stderr(), /acs-onnx exists; pass --force to overwrite it/);
  const levels = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', path.join(tmp, 'other'), '--levels', '0.5,1'], levels), 1);
  assert.match(levels.stderr(), /--levels and --controller do not apply to a dynamic run/);
  const forced = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', out, '--force'], forced), 0, forced.stderr());
  assert.match(forced.stdout(), /18 gated blocks each a gate and a body graph, threshold 0\.5; serve it with `dynn serve/);
  const file = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', path.join(tmp, 'acs.onnx')], file), 1);
  assert.match(file.stderr(), /exports by segments to a folder; --onnx .*acs\.onnx names a file: give a folder name, e.g\. .*acs\b/);
  const itself = captureIo();
  assert.equal(await runCli(['export', run, '--onnx', run, '--force'], itself), 1, 'the run is not an earlier export: --force does not replace it');
  assert.match(itself.stderr(), /is not an export by segments/);
  assert.ok(fs.existsSync(path.join(run, 'checkpoint.json')));
});

test('dynamic width: a static throttleable run is the supernet, the gate trains on it frozen; sweep, info, export by segments and serving', async () => {
  const supernet = path.join(tmp, 'vgg-supernet');
  const first = captureIo();
  assert.equal(await runCli(['train', '--model', 'vgg-w', ...data, '--epochs', '1', '--schedule', 'sandwich', '--out', supernet], first), 0, first.stderr());
  const gated = path.join(tmp, 'vgg-width');
  const io = captureIo();
  assert.equal(await runCli(['train', '--model', 'vgg-w', '--dynamic', 'width', ...data, '--epochs', '1', '--width-target', '0.4', '--init', supernet, '--out', gated, '--json'], io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.equal(meta.options.widthTarget, 0.4);
  // The gate was fitted to the target on training samples; the test set lands near it.
  assert.ok(Math.abs(meta.history[0].gated.flopsRatio - 0.4) < 0.25, `gated FLOPs ratio ${meta.history[0].gated.flopsRatio}`);
  const [a, b] = await Promise.all([loadRun(supernet), loadRun(gated)]);
  try {
    const source = new Map(a.model.getWeights().map((w) => [w.name, w.data]));
    for (const w of b.model.getWeights().filter((w) => !w.name.includes('.gate.'))) assert.deepEqual(w.data, source.get(w.name), `${w.name}: the supernet is frozen`);
  } finally {
    a.model.dispose();
    b.model.dispose();
  }
  const info = captureIo();
  assert.equal(await runCli(['info', gated], info), 0, info.stderr());
  assert.match(info.stdout(), /per-sample gates \(width\): a width switch after stem\.relu: each sample takes one of 4 widths \(2, 4, 6, 8 of the groups\)/);
  const sweep = captureIo();
  assert.equal(await runCli(['sweep', gated, '--test-limit', '32', '--thresholds', '0,1', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  assert.equal(s.dynamic, 'width');
  const [, open, closed] = s.points;
  assert.ok(open.flopsRatio > closed.flopsRatio && Object.keys(open.skipRates).join() === 'switch');
  const out = path.join(tmp, 'width-onnx');
  const ex = captureIo();
  assert.equal(await runCli(['export', gated, '--onnx', out], ex), 0, ex.stderr());
  assert.match(ex.stdout(), /2 segments, a switch \(switch\) of a gate and 4 route graphs, threshold 0\.5/);
});

test('--init starts a dynamic model from a static backbone’s run: its weights, gates open; a foreign run is refused', async () => {
  const backbone = path.join(tmp, 'backbone');
  const first = captureIo();
  assert.equal(await runCli(['train', '--model', 'resnet38', ...data, '--epochs', '1', '--out', backbone], first), 0, first.stderr());
  const fine = path.join(tmp, 'fine');
  const io = captureIo();
  // A learning rate too small to move a weight: what the run holds is what --init loaded.
  const argv = ['train', '--model', 'resnet38', '--dynamic', 'acs-gn', ...data, '--epochs', '1', '--lr', '1e-30', '--init', backbone, '--out', fine];
  assert.equal(await runCli(argv, io), 0, io.stderr());
  const [a, b] = await Promise.all([loadRun(backbone), loadRun(fine)]);
  try {
    const source = new Map(a.model.getWeights().map((w) => [w.name, w.data]));
    const kernels = b.model.getWeights().filter((w) => w.name.endsWith('.kernel'));
    const backboneKernels = kernels.filter((w) => !w.name.includes('.gate.'));
    assert.equal(backboneKernels.length, [...source.keys()].filter((n) => n.endsWith('.kernel')).length);
    for (const w of backboneKernels) assert.deepEqual(w.data, source.get(w.name), w.name);
    const fc = b.model.getWeights().find((w) => w.name === 's0.b0.gate.fc.bias')!;
    assert.ok(fc.data.every((v) => v > 4), 'gates the backbone run lacks start open');
    assert.equal(b.meta.options.init, backbone);
  } finally {
    a.model.dispose();
    b.model.dispose();
  }
  // Gates of another logit scale start open rather than copied (their logits would be scaled).
  const rescaled = path.join(tmp, 'rescaled');
  const r2 = captureIo();
  const again = ['train', '--model', 'resnet38', '--dynamic', 'acs-gn', ...data, '--epochs', '1', '--lr', '1e-30', '--init', fine, '--gate-scale', '2', '--out', rescaled];
  assert.equal(await runCli(again, r2), 0, r2.stderr());
  const c = await loadRun(rescaled);
  try {
    const bias = c.model.getWeights().find((w) => w.name === 's0.b0.gate.fc.bias')!;
    assert.ok(bias.data.every((v) => Math.abs(v - 2.5) < 1e-3), `open logit 5 at scale 2: bias 2.5, got ${bias.data[0]}`);
  } finally {
    c.model.dispose();
  }
  // A spatial network keeps fewer BatchNorm rows than the throttleable backbone: each starts from its full-width row.
  const spatial = path.join(tmp, 'spatial-init');
  const sp = captureIo();
  assert.equal(await runCli(['train', '--model', 'resnet38', '--dynamic', 'spatial', ...data, '--epochs', '1', '--lr', '1e-30', '--init', backbone, '--out', spatial], sp), 0, sp.stderr());
  const [d, e] = await Promise.all([loadRun(backbone), loadRun(spatial)]);
  try {
    const kernel = (m: typeof d.model) => m.getWeights().find((w) => w.name === 's0.b0.conv1.kernel')!;
    assert.deepEqual(kernel(e.model).data, kernel(d.model).data);
    const rows = (m: typeof d.model) => m.getWeights().find((w) => w.name === 's0.b0.bn1.running_mean')!.shape[0];
    assert.ok(rows(e.model) < rows(d.model), `the spatial run keeps ${rows(e.model)} rows, the backbone ${rows(d.model)}`);
  } finally {
    d.model.dispose();
    e.model.dispose();
  }
  const vgg = path.join(tmp, 'vgg');
  const v = captureIo();
  assert.equal(await runCli(['train', '--model', 'vgg-w', ...data, '--epochs', '1', '--out', vgg], v), 0, v.stderr());
  const bad = captureIo();
  assert.equal(await runCli(['train', '--model', 'resnet38', ...data, '--init', vgg, '--out', path.join(tmp, 'bad-init')], bad), 1);
  assert.match(bad.stderr(), /--init .*vgg: that run \(vgg-w\) has no s0\.b0\.conv1\.kernel, .* and \d+ more; start from a run of the same backbone as resnet38/);
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
  assert.match(io.stdout(), /per-sample mechanisms \(dynn train --dynamic NAME\)[\s\S]*acs-dg[\s\S]*acs-gn[\s\S]*skip[\s\S]*skip-ff/);
  const json = captureIo();
  assert.equal(await runCli(['models', '--json'], json), 0);
  assert.deepEqual(JSON.parse(json.stdout()).filter((m: { dynamic: boolean }) => m.dynamic).map((m: { name: string }) => m.name), ['densenet41', 'densenet53', 'mlp-moe', 'multi-branch', 'resnet-d', 'resnet-moe', 'resnet38', 'vgg-moe']);
  assert.match(io.stdout(), /densenet41 \(--dynamic\)[\s\S]*densenet53 \(--dynamic\)/);
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
  assert.match(io.stdout(), /Per-sample compute of dynamic runs: 6 charts/, 'the threshold sweep drawn');
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
  assert.match(io.stderr(), /edited: the checkpoint holds the per-sample gates of a dynamic model \(s0\.b0\.gate\.[a-z0-9.]+ and \d+ more\) but its config builds a static resnet38 \(no dynamic mechanism\): a dynamic model's checkpoint cannot load as a static one/);
  assert.doesNotMatch(io.stderr(), /\n\s+at /);
});

test('a static checkpoint whose config says dynamic fails on load and on resume, saying it has no gates; calibrate refuses a dynamic run', async () => {
  const stripped = path.join(tmp, 'stripped');
  fs.cpSync(run, stripped, { recursive: true });
  const file = path.join(stripped, 'checkpoint.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  manifest.weights.arrays = manifest.weights.arrays.filter((a: { name: string }) => !a.name.includes('.gate.'));
  delete manifest.optimizer;
  fs.writeFileSync(file, JSON.stringify(manifest));
  const message = /stripped: its config builds resnet38 with acs-gn gates, but the checkpoint holds no gate weights: a static model's checkpoint cannot load as a dynamic one/;
  for (const argv of [['info', stripped], ['train', '--resume', '--out', stripped, '--epochs', '3', '--workers', '0']]) {
    const io = captureIo();
    assert.equal(await runCli(argv, io), 1, argv.join(' '));
    assert.match(io.stderr(), message, argv.join(' '));
  }
  const cal = captureIo();
  assert.equal(await runCli(['calibrate', run, '--u', '0.5', '--samples', '16'], cal), 1);
  assert.match(cal.stderr(), /acs is a dynamic model \(acs-gn gates\): its BatchNorm rows hold statistics per route, which calibrating at fixed widths would overwrite/);
});

test('a static run resumed with --dynamic is refused before any training, naming the option and that the run is static', async () => {
  const plain = path.join(tmp, 'plain');
  const io = captureIo();
  assert.equal(await runCli(['train', '--model', 'mlp-w', ...data, '--epochs', '1', '--out', plain], io), 0, io.stderr());
  const again = captureIo();
  assert.equal(await runCli(['train', '--resume', '--out', plain, '--dynamic', 'acs-gn', '--epochs', '2', '--workers', '0'], again), 1);
  assert.match(again.stderr(), /cannot resume .*plain: --dynamic acs-gn contradicts the run \(trained without it: a static model\)/);
});

test('densenet41 with acs-gn gates trains through the CLI, its sweep reports every unit’s gate and says how it runs, and it exports by segments', async () => {
  const dense = path.join(tmp, 'dense');
  const tiny = ['--dataset', 'synthetic', '--train-limit', '8', '--test-limit', '8', '--workers', '0', '--batch-size', '8'];
  const io = captureIo();
  assert.equal(await runCli(['train', '--model', 'densenet41', '--dynamic', 'acs-gn', ...tiny, '--epochs', '1', '--out', dense, '--json'], io), 0, io.stderr());
  const { meta } = JSON.parse(io.stdout());
  assert.ok(meta.history[0].gated.flopsRatio > 0);
  const sweep = captureIo();
  assert.equal(await runCli(['sweep', dense, '--test-limit', '8', '--thresholds', '0,1', '--no-latency', '--json'], sweep), 0, sweep.stderr());
  const s = JSON.parse(sweep.stdout());
  assert.equal(s.decisions, 'nested');
  assert.equal(s.execution, 'sliced');
  const [, open, closed] = s.points;
  assert.equal(Object.keys(open.skipRates).length, 18, 'one gate per 3x3 convolution of densenet41');
  assert.ok(Math.abs(open.flopsRatio - (1 + open.gateShare)) < 1e-6, 'threshold 0 runs every group: the backbone plus the gates');
  assert.ok(Object.values(closed.skipRates).every((r) => r === 1));
  assert.ok(closed.flopsRatio < 0.5, `threshold 1 leaves the transitions, the stem, the head and the gates (${closed.flopsRatio})`);
  const info = captureIo();
  assert.equal(await runCli(['info', dense], info), 0, info.stderr());
  assert.match(info.stdout(), /per-sample gates \(acs-gn\): nested decisions: skipped channels are not computed/);
  const ex = captureIo();
  const out = path.join(tmp, 'dense-onnx');
  assert.equal(await runCli(['export', dense, '--onnx', out], ex), 0, ex.stderr());
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8')) as { segments: { kind: string; name: string }[] };
  assert.equal(manifest.segments.filter((s) => s.kind === 'gated').length, 18, 'exported by segments: a gate and a body per dense unit');
  assert.equal(manifest.segments[1].name, 'd0.u0');
});
