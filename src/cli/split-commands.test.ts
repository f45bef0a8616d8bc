import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-split-cli-'));
const run = path.join(tmp, 'run');
const data = ['--dataset', 'synthetic', '--train-limit', '192', '--test-limit', '64'];

test('dynn split: refuses bad options before training, writes head, tail and metadata, prints the JSON form', async () => {
  const io = captureIo();
  assert.equal(await runCli(['train', '--model', 'vgg-w', ...data, '--workers', '0', '--epochs', '1', '--batch-size', '64', '--out', run], io), 0, io.stderr());

  const out = path.join(tmp, 'split');
  const refused: [string[], RegExp][] = [
    [['--at', 'fc1'], /unknown split layer "fc1"; expected one of stem\.conv, .*pool2/],
    [['--at', 'pool1,fc1'], /unknown split layer "fc1"; expected one of stem\.conv, .*pool2/],
    [['--at', 'pool2,pool2'], /split point pool2 is given twice/],
    [['--at', 'pool1,pool2', '--channels', '33'], /channels must be integers from 1 to 32 \(the channels of pool1\), got 33/],
    [['--at', 'pool2', '--channels', '65'], /channels must be integers from 1 to 64 \(the channels of pool2\), got 65/],
    [['--at', 'pool2', '--bits', '17'], /bits must be an integer from 1 to 16, got 17/],
    [['--at', 'pool2', '--bits', '0'], /not a positive integer/],
    [['--at', 'pool2', '--channels', 'x'], /--channels: x is not a positive integer/],
  ];
  for (const [argv, pattern] of refused) {
    const bad = captureIo();
    assert.equal(await runCli(['split', run, ...argv, '--out', out], bad), 1, argv.join(' '));
    assert.match(bad.stderr(), pattern);
    assert.doesNotMatch(bad.stderr(), /\n\s+at /);
    assert.equal(fs.existsSync(out), false);
  }
  const missing = captureIo();
  assert.equal(await runCli(['split', run, '--out', out], missing), 1);
  assert.match(missing.stderr(), /needs --at LAYER/);

  const s = captureIo();
  assert.equal(await runCli(['split', run, '--at', 'pool1,pool2', '--channels', '1,4', '--bits', '2,8', ...data, '--png-samples', '16', '--out', out, '--json'], s), 0, s.stderr());
  const r = JSON.parse(s.stdout());
  assert.deepEqual(Object.keys(r), ['points', 'baseAccuracy', 'inputBytesPerSample', 'inputPngBytesPerSample']);
  // The shape, each point naming its split point (and its head's FLOPs).
  assert.deepEqual(r.points.map((p: Record<string, number>) => Object.keys(p)), Array(8).fill(['at', 'channels', 'bits', 'bytesPerSample', 'accuracy', 'headFlops']));
  assert.deepEqual(
    r.points.map((p: Record<string, number>) => [p.at, p.channels, p.bits, p.bytesPerSample]),
    [...[[1, 2, 8 + 49], [1, 8, 8 + 196], [4, 2, 8 + 196], [4, 8, 8 + 784]].map((x) => ['pool1', ...x]), ...[[1, 2, 8 + 13], [1, 8, 8 + 49], [4, 2, 8 + 49], [4, 8, 8 + 196]].map((x) => ['pool2', ...x])],
  );
  assert.equal(r.inputBytesPerSample, 784);
  assert.deepEqual(fs.readdirSync(out).sort(), ['head.pool1.onnx', 'head.pool2.onnx', 'split.json', 'tail.pool1.onnx', 'tail.pool2.onnx']);
  const meta = JSON.parse(fs.readFileSync(path.join(out, 'split.json'), 'utf8'));
  assert.equal(meta.format, 'dynn-split/2');
  assert.equal(meta.wire.version, 2);
  assert.deepEqual(meta.splits.map((x: { at: string }) => x.at), ['pool1', 'pool2']);

  const again = captureIo();
  assert.equal(await runCli(['split', run, '--at', 'pool2', '--out', out], again), 1);
  assert.match(again.stderr(), /is not empty; pass --force/);
});

test('dynn serve on a split directory and dynn head over a shaped loopback link', async () => {
  const out = path.join(tmp, 'split');
  // A served model's batching and policy options do not apply to a tail: refused, not silently ignored.
  const refused = captureIo();
  assert.equal(await runCli(['serve', out, '--port', '0', '--policy', 'fixed:1', '--max-batch', '8'], refused), 1);
  assert.match(refused.stderr(), /is a split folder: its tail serves each frame as it comes, so --policy, --max-batch do not apply/);
  const { serveCommand } = await import('./serve-commands.js');
  const sio = captureIo();
  let stop!: (s: string) => void;
  const stopped = new Promise<string>((r) => (stop = r));
  const serving = serveCommand(out, { port: '0', json: true }, sio, stopped);
  let url = '';
  for (let i = 0; i < 200 && !url; i++) {
    await new Promise((r) => setTimeout(r, 25));
    const line = sio.stdout().trim();
    if (line) url = JSON.parse(line).url;
  }
  try {
    assert.ok(url, sio.stderr());
    const h = captureIo();
    assert.equal(await runCli(['head', out, '--server', url, '--test-limit', '8', '--bandwidth-mbps', '10', '--delay-ms', '1', '--json'], h), 0, h.stderr());
    const r = JSON.parse(h.stdout());
    assert.equal(r.samples, 8);
    assert.ok(r.meanMs >= 1, `the delay is paid: ${r.meanMs}`);
    const budget = captureIo();
    assert.equal(await runCli(['head', out, '--server', url, '--test-limit', '8', '--latency-budget-ms', '1000', '--json'], budget), 0, budget.stderr());
    const used = JSON.parse(budget.stdout()).used as { at: string }[];
    // The first frames probe the smallest message (pool2's) and the largest (pool1's).
    assert.deepEqual([...new Set(used.map((u) => u.at))].sort(), ['pool1', 'pool2']);
    const fixed = captureIo();
    assert.equal(await runCli(['head', out, '--server', url, '--test-limit', '2', '--at', 'pool1', '--channels', '4', '--bits', '2', '--json'], fixed), 0, fixed.stderr());
    assert.deepEqual(JSON.parse(fixed.stdout()).used, [{ at: 'pool1', channels: 4, bits: 2, frames: 2 }]);
    const unknown = captureIo();
    assert.equal(await runCli(['head', out, '--server', url, '--at', 'pool3'], unknown), 1);
    assert.match(unknown.stderr(), /unknown split point "pool3"; this split has pool1, pool2/);
    const bad = captureIo();
    assert.equal(await runCli(['head', out, '--server', 'not a url'], bad), 1);
    assert.match(bad.stderr(), /is not a URL/);
  } finally {
    stop('SIGTERM');
    await serving;
  }
});
