import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { runCli } from './cli.js';
import { intListOption } from './deploy-commands.js';
import type { Io } from './io.js';
import { captureIo } from './capture.js';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { saveRun, type TrainMeta } from '../train/run.js';
import { randomizeStatistics } from '../export/fixtures.js';
import { OnnxModel } from '../runtime/node.js';
import { checkProfileOptions, readLatencyTable } from '../runtime/profile.js';
import { ModelProto } from '../export/onnx-proto.js';
import { VERSION } from '../version.js';

const capture = captureIo;

await initEngine('wasm');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-deploy-'));
const run = path.join(tmp, 'run');
const model = createModel('vgg-w', { groups: 4, widths: [8, 8, 16, 16], hidden: 32 });
randomizeStatistics(model, 5);
const meta: TrainMeta = { dynnVersion: VERSION, dataset: 'synthetic', trainSamples: 0, testSamples: 0, options: { gating: 'nested' }, seed: 0, epoch: 1, history: [] };
await saveRun(run, model, meta);

test('dynn export then dynn profile: the ONNX model answers like the checkpoint, the table lands beside it', async () => {
  const onnx = path.join(tmp, 'out', 'vgg.onnx');
  const io = capture();
  assert.equal(await runCli(['export', run, '--onnx', onnx, '--levels', '0.25,0.5,1', '--engine', 'wasm'], io), 0, io.stderr());
  assert.match(io.stdout(), /wrote .*vgg\.onnx \(vgg-w, 3 levels; input images NCHW \[batch, 1, 28, 28\] and scalar u\)/);
  const m = await OnnxModel.load(onnx);
  assert.deepEqual(m.levels.map((l) => l.u), [0.25, 0.5, 1]);
  assert.deepEqual(m.metadata.classNames, Array.from({ length: 10 }, (_, k) => `pattern ${k}`));
  const x = tf.randomUniform([2, 28, 28, 1], 0, 1, 'float32', 1);
  for (const u of [0.25, 0.5, 1]) {
    const ref = tf.tidy(() => model.predict(x, u).dataSync() as Float32Array);
    const got = await m.run(x.dataSync() as Float32Array, u, { layout: 'NHWC' });
    const err = Math.max(...ref.map((v, i) => Math.abs(v - got.scores[i]))) / Math.max(1, ...ref.map(Math.abs));
    assert.ok(err < 1e-4, `u = ${u}: ${err}`);
  }
  x.dispose();
  await m.dispose();

  const prof = capture();
  assert.equal(await runCli(['profile', onnx, '--batches', '1,2', '--reps', '2', '--warmup', '0', '--threads', '1', '--json'], prof), 0, prof.stderr());
  const table = JSON.parse(prof.stdout());
  assert.deepEqual(table.levels.map((l: { u: number }) => l.u), [0.25, 0.5, 1]);
  for (const l of table.levels) {
    assert.equal(typeof l.flopsRatio, 'number');
    assert.deepEqual(Object.keys(l.latencyMs).sort(), ['1', '2']);
  }
  assert.deepEqual(await readLatencyTable(onnx), table);
  assert.deepEqual(fs.readdirSync(path.dirname(onnx)).sort(), ['vgg.onnx', 'vgg.onnx.profile.json']);

  const human = capture();
  assert.equal(await runCli(['profile', onnx, '--batches', '1', '--reps', '1', '--warmup', '0'], human), 0, human.stderr());
  assert.match(human.stdout(), /ms @1/);
});

test('deploy commands reject bad options and unknown models with clear messages, writing nothing', async () => {
  const onnx = path.join(tmp, 'never.onnx');
  const cases: [string[], RegExp][] = [
    [['export', run], /export needs --onnx FILE/],
    [['export', run, '--onnx', onnx, '--levels', '0,1'], /--levels: 0 is not a utilization in \(0, 1\]/],
    [['export', run, '--onnx', onnx, '--levels', '0.25,0.3'], /levels 0.25 and 0.3 both run level 1/],
    [['export', path.join(tmp, 'nope'), '--onnx', onnx], /nope/],
    [['profile', path.join(tmp, 'nope.onnx')], /nope\.onnx: no such file/],
    [['profile', onnx, '--reps', '0'], /--reps must be an integer >= 1/],
    [['profile', onnx, '--batches', '1,x'], /--batches: x is not a positive integer/],
  ];
  for (const [argv, pattern] of cases) {
    const io = capture();
    assert.equal(await runCli(argv, io), 1, argv.join(' '));
    assert.match(io.stderr(), pattern);
  }
  const renamed = path.join(tmp, 'renamed');
  fs.cpSync(run, renamed, { recursive: true });
  const manifest = path.join(renamed, 'checkpoint.json');
  fs.writeFileSync(manifest, fs.readFileSync(manifest, 'utf8').replace('"model": "vgg-w"', '"model": "vgg-x"'));
  const io = capture();
  assert.equal(await runCli(['export', renamed, '--onnx', onnx], io), 1);
  assert.match(io.stderr(), /unknown model "vgg-x"; expected one of .*vgg-w/);
  assert.equal(fs.existsSync(onnx), false);
});

/** Runs the CLI and expects exit code 1 with one `dynn: ...` line matching `pattern`, no stack trace. */
async function fails(argv: string[], pattern: RegExp): Promise<void> {
  const io = capture();
  assert.equal(await runCli(argv, io), 1, `${argv.join(' ')}: ${io.stderr()}`);
  assert.match(io.stderr(), /^dynn: /);
  assert.match(io.stderr(), pattern);
  assert.doesNotMatch(io.stderr(), /\n\s+at /, 'no stack trace');
}

test('dynn export refuses a folder as --onnx, and overwrites an existing file only with --force', async () => {
  const dir = path.join(tmp, 'models');
  fs.mkdirSync(dir);
  await fails(['export', run, '--onnx', dir], /--onnx .*models is a folder; give the file to write, e\.g\. .*models\/model\.onnx/);
  await fails(['export', run, '--onnx', dir + path.sep], /names a folder/);
  assert.deepEqual(fs.readdirSync(dir), []);
  const file = path.join(dir, 'm.onnx');
  const io = capture();
  assert.equal(await runCli(['export', run, '--onnx', file, '--levels', '1', '--engine', 'wasm'], io), 0, io.stderr());
  const before = fs.readFileSync(file);
  await fails(['export', run, '--onnx', file, '--levels', '0.5,1'], /m\.onnx exists; pass --force to overwrite it/);
  assert.deepEqual(fs.readFileSync(file), before);
  const forced = capture();
  assert.equal(await runCli(['export', run, '--onnx', file, '--levels', '0.5,1', '--force', '--json'], forced), 0, forced.stderr());
  assert.deepEqual(JSON.parse(forced.stdout()).metadata.levels.map((l: { u: number }) => l.u), [0.5, 1]);
  assert.deepEqual(fs.readdirSync(dir), ['m.onnx'], 'written atomically: no temporary file left');
  // A run's own files are never a target, --force or not.
  const manifest = path.join(run, 'checkpoint.json');
  const kept = fs.readFileSync(manifest);
  await fails(['export', run, '--onnx', manifest, '--force'], /checkpoint\.json is a file of the run in \S+; export to another file/);
  const weights = fs.readdirSync(run).find((f) => f.startsWith('weights-'))!;
  await fails(['export', run, '--onnx', path.join(run, weights), '--force'], /is a file of the run in/);
  assert.deepEqual(fs.readFileSync(manifest), kept);
});

test('dynn profile bounds batch sizes, reps and threads before allocating, and refuses a tampered model', async () => {
  const file = path.join(tmp, 'profiled.onnx');
  const io = capture();
  assert.equal(await runCli(['export', run, '--onnx', file, '--levels', '1', '--engine', 'wasm'], io), 0, io.stderr());
  await fails(['profile', file, '--batches', '1,100000000'], /batch size 100000000 is too large to profile; at most 4096/);
  await fails(['profile', file, '--reps', '1000000000'], /reps must be an integer from 1 to 100000, got 1000000000/);
  await fails(['profile', file, '--warmup', '1000000000'], /warmup must be an integer from 0 to 10000/);
  await fails(['profile', file, '--threads', '100000000'], /--threads must be at most 1024, got 100000000/);
  assert.throws(() => checkProfileOptions({ batches: [4096] }, [3, 224, 224]), /a batch of 4096 samples of \[3,224,224\] holds 616562688 input values; at most 67108864/);
  checkProfileOptions({ batches: [4096] }, [1, 28, 28]);
  // A weight changed on disk: refused at start-up with a clear message.
  const bytes = new Uint8Array(fs.readFileSync(file));
  const raw = (ModelProto.toObject(ModelProto.decode(bytes)) as { graph: { initializer: { name: string; raw_data: Uint8Array }[] } }).graph.initializer.find((t) => t.name === 'fc1.kernel')!.raw_data;
  const at = Buffer.from(bytes).indexOf(Buffer.from(raw.subarray(0, 32)));
  bytes[at + 3] ^= 0x7f;
  fs.writeFileSync(file, bytes);
  await fails(['profile', file, '--batches', '1', '--reps', '1'], /profiled\.onnx: weights digest mismatch: the file was modified or corrupted/);
  assert.equal(fs.existsSync(`${file}.profile.json`), false);
});

test('intListOption parses batch lists', () => {
  assert.deepEqual(intListOption('1, 64', 'batches'), [1, 64]);
  assert.equal(intListOption(undefined, 'batches'), undefined);
  assert.throws(() => intListOption('', 'batches'), /needs a comma-separated list/);
  assert.throws(() => intListOption('1.5', 'batches'), /1\.5 is not a positive integer/);
});
