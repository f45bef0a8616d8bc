import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { commandOf, runCli } from './cli.js';
import type { Io } from './io.js';
import { captureIo } from './capture.js';

const capture = captureIo;

const main = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-cli-'));
const run = path.join(tmp, 'run');
const base = ['--dataset', 'synthetic', '--train-limit', '256', '--test-limit', '128', '--workers', '0'];

test('train, info and sweep end to end on a small subset', async () => {
  const io = capture();
  const code = await runCli(['train', '--model', 'mlp-w', ...base, '--epochs', '1', '--batch-size', '64', '--out', run], io);
  assert.equal(code, 0, io.stderr());
  assert.match(io.stdout(), /saved .*run \(1 epoch, synthetic\)/);
  assert.match(io.stderr(), /epoch 1: loss \d/);
  assert.ok(fs.existsSync(path.join(run, 'checkpoint.json')));

  const info = capture();
  assert.equal(await runCli(['info', run, '--json'], info), 0, info.stderr());
  const i = JSON.parse(info.stdout());
  assert.equal(i.model, 'mlp-w');
  assert.equal(i.history.length, 1);
  assert.deepEqual(i.cost.map((c: { u: number }) => c.u), [0.125, 0.25, 0.5, 0.75, 1]);
  assert.equal(i.cost[4].flopsRatio, 1);
  assert.ok(i.cost[0].flops < i.cost[2].flops && i.cost[2].flops < i.cost[4].flops);

  const human = capture();
  assert.equal(await runCli(['info', run], human), 0);
  assert.match(human.stdout(), /FLOPs ratio/);
  assert.match(human.stdout(), /training history/);

  const sw = capture();
  assert.equal(await runCli(['sweep', run, '--dataset', 'synthetic', '--test-limit', '128', '--u', '0.25,1', '--json'], sw), 0, sw.stderr());
  const s = JSON.parse(sw.stdout());
  assert.equal(s.model, 'mlp-w');
  assert.equal(s.dataset, 'synthetic');
  assert.equal(s.testSamples, 128);
  assert.equal(s.points.length, 2);
  for (const p of s.points) {
    assert.ok(p.accuracy >= 0 && p.accuracy <= 1);
    assert.equal(p.perClassAccuracy.length, 10);
    assert.ok(p.flops > 0 && p.latencyMs.batch1 > 0 && p.latencyMs.batch128 > 0);
  }
  assert.ok(s.points[0].flopsRatio < 0.5 && s.points[1].flopsRatio === 1);

  const table = capture();
  assert.equal(await runCli(['sweep', run, '--dataset', 'synthetic', '--test-limit', '64', '--u', '0.5', '--no-latency'], table), 0);
  assert.match(table.stdout(), /FLOPs ratio/);
});

test('train leaves an existing run alone unless asked; --resume takes the run’s options and refuses others', async () => {
  const files = () => Object.fromEntries(fs.readdirSync(run).map((f) => [f, fs.readFileSync(path.join(run, f), 'latin1')]));
  const before = files();
  const cases: [string[], RegExp, number][] = [
    [['train', '--model', 'mlp-w', ...base, '--out', run], /already holds a training run \(mlp-w on synthetic, 1 epoch\); use --resume to continue it or --force to replace it/, 1],
    [['train', '--out', run, '--resume', '--dataset', 'fashion-mnist'], /--dataset fashion-mnist contradicts the run \(trained on synthetic\)/, 1],
    [['train', '--out', run, '--resume', '--force'], /--resume continues the run in --out and --force replaces it/, 1],
    [['train', '--out', path.join(run, 'checkpoint.json')], /checkpoint\.json is a file, not a run directory/, 1],
    [['train', '--out', run, '--resume', '--workers', '0'], /is already complete \(1 epochs, synthetic\); nothing to train/, 0],
  ];
  for (const [argv, pattern, code] of cases) {
    const io = capture();
    assert.equal(await runCli(argv, io), code, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(code === 0 ? io.stdout() : io.stderr(), pattern, argv.join(' '));
  }
  assert.deepEqual(files(), before, 'the run is byte for byte as it was');
});

test('the demo trains and reports every operating point (on a subset here)', async () => {
  const io = capture();
  const code = await runCli(['demo', '--train-limit', '256', '--test-limit', '100', '--epochs', '1', '--workers', '0', '--u', '0.25,1', '--json'], io);
  assert.equal(code, 0, io.stderr());
  const r = JSON.parse(io.stdout());
  assert.equal(r.model, 'vgg-w');
  assert.equal(r.dataset, 'mnist');
  assert.deepEqual(r.points.map((p: { u: number }) => p.u), [0.25, 1]);
  assert.ok(r.points[0].flopsRatio < 0.2 && r.points[0].latencyMs.batch128 > 0);
  assert.match(io.stderr(), /training a throttleable vgg-w/);
});

test('bad input: clear messages and exit codes, never a stack trace', async () => {
  const cases: [string[], RegExp, number][] = [
    [['train', '--model', 'vgg', ...base, '--out', path.join(tmp, 'x')], /unknown model "vgg"; expected one of densenet-dw, densenet-w, densenet41, densenet53, mlp-moe, mlp-w, multi-branch, resnet-condconv, resnet-d, resnet-exits, resnet-moe, resnet38, resnext-w, vgg-condconv, vgg-exits, vgg-moe, vgg-se, vgg-w/, 1],
    [['train', ...base], /train needs --out DIR/, 1],
    [['train', ...base, '--epochs', 'two', '--out', path.join(tmp, 'y')], /--epochs must be an integer >= 1, got "two"/, 1],
    [['train', ...base, '--gating', 'random', '--out', path.join(tmp, 'y')], /--gating must be one of nested, independent/, 1],
    [['train', '--vanilla', '--curriculum', ...base, '--out', path.join(tmp, 'y')], /exclude each other/, 1],
    [['train', '--dataset', 'fashion-mnist', '--data-dir', path.join(tmp, 'nowhere'), '--out', path.join(tmp, 'y')], /fashion-mnist.*nowhere/s, 1],
    [['sweep', run, '--u', '0,0.5'], /--u: 0 is not a utilization in \(0, 1\]/, 1],
    [['sweep', run, '--u', '1.5'], /--u: 1.5 is not a utilization in \(0, 1\]/, 1],
    [['sweep', run, '--u', 'NaN'], /--u: NaN is not a utilization/, 1],
    [['sweep', path.join(tmp, 'missing')], /no checkpoint\.json in/, 1],
    [['sweep', run, '--dataset', 'mnist', '--engine', 'gpu'], /--engine must be one of auto, tensorflow, wasm, cpu/, 1],
    [['info', run, '--bogus'], /Unknown option `--bogus`/, 2],
    [['frobnicate'], /unknown command "frobnicate"/, 2],
  ];
  for (const [argv, pattern, code] of cases) {
    const io = capture();
    assert.equal(await runCli(argv, io), code, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(io.stderr(), pattern, argv.join(' '));
    assert.doesNotMatch(io.stderr(), /\n\s+at /, 'no stack trace');
  }
});

test('corrupt or truncated checkpoints fail with a message naming the problem', async () => {
  const copy = (name: string) => {
    const dir = path.join(tmp, name);
    fs.cpSync(run, dir, { recursive: true });
    return dir;
  };
  const weightsFile = (dir: string) => path.join(dir, fs.readdirSync(dir).find((f) => f.startsWith('weights-'))!);

  const truncated = copy('truncated');
  const wf = weightsFile(truncated);
  fs.truncateSync(wf, fs.statSync(wf).size - 8);
  const corrupt = copy('corrupt');
  const cf = weightsFile(corrupt);
  const bytes = fs.readFileSync(cf);
  bytes[100] ^= 0xff;
  fs.writeFileSync(cf, bytes);
  const badJson = copy('badjson');
  fs.writeFileSync(path.join(badJson, 'checkpoint.json'), '{"format": "dynn-checkpoint", ');
  const otherModel = copy('other');
  const manifest = JSON.parse(fs.readFileSync(path.join(otherModel, 'checkpoint.json'), 'utf8'));
  manifest.config.args.hidden = [128, 128];
  fs.writeFileSync(path.join(otherModel, 'checkpoint.json'), JSON.stringify(manifest));
  const unbuildable = copy('unbuildable');
  manifest.config.model = 'resnet-v';
  fs.writeFileSync(path.join(unbuildable, 'checkpoint.json'), JSON.stringify(manifest));

  const cases: [string, RegExp][] = [
    [truncated, /truncated: expected \d+ bytes, found \d+/],
    [corrupt, /corrupt: checksum mismatch/],
    [badJson, /corrupt: not valid JSON/],
    [otherModel, /weights do not match the model: .*mis-shaped \d+: fc1\.kernel \(checkpoint \[784,256\], model \[784,128\]\)/],
    [unbuildable, /cannot rebuild its network: unknown model "resnet-v"; expected one of/],
  ];
  for (const [dir, pattern] of cases) {
    const io = capture();
    assert.equal(await runCli(['info', dir], io), 1, io.stderr());
    assert.match(io.stderr(), pattern);
  }
});

test('the dynn binary runs and exits with the command’s code', () => {
  const out = execFileSync(process.execPath, [main, 'models', '--json'], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out).map((m: { name: string }) => m.name), ['densenet-dw', 'densenet-w', 'densenet41', 'densenet53', 'mlp-moe', 'mlp-w', 'multi-branch', 'resnet-condconv', 'resnet-d', 'resnet-exits', 'resnet-moe', 'resnet38', 'resnext-w', 'vgg-condconv', 'vgg-exits', 'vgg-moe', 'vgg-se', 'vgg-w']);
  // Run as the bin is (through its shebang line, as `npx dynn` runs it); a plain one (`env -S` fails on BusyBox).
  assert.equal(fs.readFileSync(main, 'utf8').split('\n')[0], '#!/usr/bin/env node');
  assert.equal(JSON.parse(execFileSync(main, ['models', '--json'], { encoding: 'utf8' })).length, 18);
  const bad = spawnSync(process.execPath, [main, 'info', path.join(tmp, 'missing')], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /^dynn: no checkpoint\.json in/);
});

test('commandOf: the command a line runs as the parser matches it, options before its name included; nothing for help or a bad line', () => {
  assert.equal(commandOf(['serve', 'm.onnx']), 'serve');
  assert.equal(commandOf(['--port', '0', 'serve', 'm.onnx']), 'serve');
  assert.equal(commandOf(['train', '--u', '-1']), 'train');
  assert.equal(commandOf(['serve', 'm.onnx', '--help']), undefined);
  assert.equal(commandOf(['-h']), undefined);
  assert.equal(commandOf(['--version']), undefined);
  assert.equal(commandOf([]), undefined);
  assert.equal(commandOf(['nonsense']), undefined);
  assert.equal(commandOf(['train', '--lr', '']), undefined);
});

test('Ctrl-C during training stops it between steps, even in the main thread: exit 130, the last finished epoch kept, progress.json stopped', async () => {
  const out = path.join(tmp, 'interrupted');
  // Epochs of about a second in the main thread (--workers 0: steps never yield on their own).
  const child = spawn(process.execPath, [main, 'train', '--dataset', 'synthetic', '--train-limit', '4096', '--test-limit', '64', '--workers', '0', '--epochs', '200', '--batch-size', '32', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const checkpoint = path.join(out, 'checkpoint.json');
  const deadline = Date.now() + 120_000;
  while (!fs.existsSync(checkpoint) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(fs.existsSync(checkpoint), `no checkpoint: ${stderr}`);
  const t0 = Date.now();
  child.kill('SIGINT');
  assert.equal(await exited, 130, stderr);
  assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms to stop`);
  const m = /dynn: train: SIGINT: stopped; \S+interrupted keeps its checkpoint of epoch (\d+) \(`dynn train --out \S+ --resume` continues it\)/.exec(stderr);
  assert.ok(m, stderr);
  assert.equal(JSON.parse(fs.readFileSync(checkpoint, 'utf8')).meta.epoch, Number(m[1]), 'the checkpoint is the last epoch finished before the signal');
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'progress.json'), 'utf8')).state, 'stopped');
  const info = capture();
  assert.equal(await runCli(['info', out], info), 0, info.stderr());
});
