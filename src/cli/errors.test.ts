import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { normalizeArgv, reportFailure, runCli } from './cli.js';
import { captureIo } from './capture.js';
import { createModel, models } from '../models/index.js';
import { DynnError } from '../util/errors.js';
import * as tf from '@tensorflow/tfjs-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const main = path.join(here, 'main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-errors-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Writes the four Fashion-MNIST IDX files of `count` images of `h` x `w` pixels into `dir`. */
function writeIdxSet(dir: string, count: number, h: number, w: number): void {
  fs.mkdirSync(dir, { recursive: true });
  const file = (magic: number, dims: number[], payload: number) => {
    const b = Buffer.alloc(4 + 4 * dims.length + payload);
    b.writeUInt32BE(magic, 0);
    dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
    for (let i = 4 + 4 * dims.length; i < b.length; i++) b[i] = i % 10;
    return b;
  };
  for (const split of ['train', 't10k']) {
    fs.writeFileSync(path.join(dir, `${split}-images-idx3-ubyte`), file(0x803, [count, h, w], count * h * w));
    fs.writeFileSync(path.join(dir, `${split}-labels-idx1-ubyte`), file(0x801, [count], count));
  }
}

test('usage errors: exit code 2 and a message that names the option or command', async () => {
  const cases: [string[], RegExp][] = [
    [['frobnicate'], /unknown command "frobnicate"; expected one of demo, train/],
    [['info', 'run', '--u', ''], /--u needs a value, got an empty one/],
    [['info', 'run', '--u='], /--u needs a value, got an empty one/],
    [['info', 'run', '--bogus'], /Unknown option `--bogus`/],
  ];
  for (const [argv, pattern] of cases) {
    const io = captureIo();
    assert.equal(await runCli(argv, io), 2, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(io.stderr(), pattern);
    assert.match(io.stderr(), /see dynn --help/);
  }
});

test('a negative number after a value option is its value, so the message speaks of the value', async () => {
  const io = captureIo();
  assert.equal(await runCli(['sweep', path.join(tmp, 'run'), '--u', '-1'], io), 1, io.stderr());
  assert.match(io.stderr(), /--u: -1 is not a utilization in \(0, 1\]/);
  const flags = new Set(['--u', '--lr']);
  assert.deepEqual(normalizeArgv(['info', 'r', '--u', '-0.5', '--lr', '-.1', '--json', '-1'], flags), ['info', 'r', '--u=-0.5', '--lr=-.1', '--json', '-1']);
  assert.deepEqual(normalizeArgv(['--u=0.5', '--u', '0.5'], flags), ['--u=0.5', '--u', '0.5']);
  assert.deepEqual(normalizeArgv(['x', '--', '--u', '-1'], flags), ['x', '--', '--u', '-1'], 'nothing after --');
});

test('failures are reported by kind: a user’s error without a stack, a bug with one', () => {
  const io = captureIo();
  assert.equal(reportFailure(new DynnError('bad input'), io), 1);
  const enoent = Object.assign(new Error("ENOENT: no such file or directory, open 'x'"), { code: 'ENOENT', syscall: 'open' });
  assert.equal(reportFailure(enoent, io), 1);
  assert.equal(io.stderr(), "dynn: bad input\ndynn: ENOENT: no such file or directory, open 'x'\n");
  const bug = captureIo();
  assert.equal(reportFailure(new TypeError('x is undefined'), bug), 70);
  assert.match(bug.stderr(), /^dynn: internal error \(a bug in dynn; please report it with the command that caused it\):\nTypeError: x is undefined\n\s+at /);
});

test('a stray error after the wasm backend loaded is reported by dynn, not after tf-backend-wasm’s `throw ex`', () => {
  const script = (install: boolean) => `
    import { installFailureHandlers } from ${JSON.stringify(path.join(here, 'cli.js'))};
    import { initEngine } from ${JSON.stringify(path.join(here, '../engine/backend.js'))};
    ${install ? 'installFailureHandlers();' : ''}
    await initEngine('wasm');
    setTimeout(() => { throw new TypeError('stray'); }, 0);`;
  const run = (install: boolean) => spawnSync(process.execPath, ['--input-type=module', '-e', script(install)], { encoding: 'utf8', timeout: 60_000 });
  const bare = run(false);
  assert.match(bare.stderr, /throw ex;/, 'without the handlers the wasm module rethrows (what users saw)');
  const handled = run(true);
  assert.equal(handled.status, 70, handled.stderr);
  assert.match(handled.stderr, /^dynn: internal error .*\nTypeError: stray/);
  assert.doesNotMatch(handled.stderr, /throw ex/);
});

test('every model builds on 1x1 inputs and runs them, or refuses them when built, naming the layer', () => {
  const refused: string[] = [];
  for (const name of models.list()) {
    let model;
    try {
      model = createModel(name, { inputShape: [1, 1, 1] });
    } catch (err) {
      assert.ok(err instanceof DynnError, `${name}: ${err}`);
      assert.match(err.message, new RegExp(`^(model ${name} on 1x1x1 inputs: )?\\w`));
      refused.push(`${name}: ${err.message}`);
      continue;
    }
    const before = tf.memory().numTensors;
    const y = tf.tidy(() => model.predict(tf.ones([2, 1, 1, 1]), 1));
    assert.deepEqual(y.shape, [2, 10], name);
    assert.ok(Array.from(y.dataSync()).every(Number.isFinite), name);
    y.dispose();
    model.dispose();
    assert.ok(tf.memory().numTensors <= before, `${name} leaks tensors`);
  }
  const tooSmall = /layer pool1: an input of 1x1x32 leaves an output of 0x0x32; the input is too small for this model$/;
  assert.match(refused.find((r) => r.startsWith('vgg-w:')) ?? '', tooSmall);
  assert.ok(refused.some((r) => r.startsWith('vgg-exits:')));
});

for (const workers of ['0', '2']) {
  test(`training on 1x1-pixel images fails at once with a message (--workers ${workers}), never hangs`, { timeout: 60_000 }, () => {
    const data = path.join(tmp, 'tiny');
    if (!fs.existsSync(data)) writeIdxSet(data, 20, 1, 1);
    const out = path.join(tmp, `tiny-run-${workers}`);
    const r = spawnSync(process.execPath, [main, 'train', '--dataset', 'fashion-mnist', '--data-dir', data, '--workers', workers, '--epochs', '1', '--out', out], {
      encoding: 'utf8',
      timeout: 50_000,
    });
    assert.equal(r.signal, null, 'the process ended by itself');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^dynn: model vgg-w on 1x1x1 inputs: layer pool1: .* the input is too small for this model\n$/);
    assert.equal(fs.existsSync(path.join(out, 'checkpoint.json')), false);
  });
}
