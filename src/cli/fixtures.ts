import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';
import * as tf from '@tensorflow/tfjs-core';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Network } from '../models/network.js';
import { RoutingState } from '../route/context.js';
import { DynnServer, type PredictResponse } from '../serve/server.js';

/** Test helper: `dynn args` in-process: its exit code, what it printed, and its stdout parsed as JSON on demand. */
export async function cli(args: string[]): Promise<{ code: number; out: string; err: string; json: () => any }> {
  const io = captureIo();
  const code = await runCli(args, io);
  return { code, out: io.stdout(), err: io.stderr(), json: () => JSON.parse(io.stdout()) };
}

/** Test helper: `dynn args` succeeds (exit code 0, else its stderr in the failure). */
export async function ok(args: string[]) {
  const r = await cli(args);
  assert.equal(r.code, 0, `dynn ${args.join(' ')}: ${r.err}`);
  return r;
}

/** Test helper: `dynn args` fails with exit code 1 and a message matching `pattern`, not a stack trace. */
export async function fails(args: string[], pattern: RegExp) {
  const r = await cli(args);
  assert.equal(r.code, 1, `dynn ${args.join(' ')} should fail: ${r.out}`);
  assert.match(r.err, pattern);
  assert.doesNotMatch(r.err, /\n\s+at /, 'a message, not a stack');
  return r;
}

/**
 * Test helper: each `dynn train` of `cases` (its options, with `extra` after them) fails with exit code 1 and
 * a message matching its pattern, without a stack trace and before writing a checkpoint into `dir`.
 */
export async function assertTrainRefused(cases: [string[], RegExp][], extra: string[], dir: string): Promise<void> {
  for (const [argv, pattern] of cases) {
    const io = captureIo();
    const out = path.join(dir, `bad-${argv.join('-')}`);
    assert.equal(await runCli(['train', ...argv, ...extra, '--out', out], io), 1, `${argv.join(' ')}: ${io.stderr()}`);
    assert.match(io.stderr(), pattern, argv.join(' '));
    assert.doesNotMatch(io.stderr(), /\n\s+at /);
    assert.equal(fs.existsSync(path.join(out, 'checkpoint.json')), false);
  }
}

/**
 * Test helper: `dynn serve` on the exported folder `dir` answers the first 8 images of `set` (28x28x1) with
 * the classes `model`'s deterministic gates give and each sample's executed FLOPs ratio. Disposes `model`.
 */
export async function assertServedLikeGates(model: Network, dir: string, set: ImageSet): Promise<void> {
  const n = 8;
  const images = toFloat(set, 0, n, new Float32Array(n * 784));
  const ref = RoutingState.start('hard', n);
  const classes = tf.tidy(() => Array.from(tf.argMax(model.forward(tf.tensor(images, [n, 28, 28, 1]), model.plan(1), { routing: ref }), 1).dataSync()));
  const { fixed, backbone } = model.routedMacs(1);
  model.dispose();
  const server = await DynnServer.create({ model: dir, threads: 1, maxBatch: 8, maxWaitMs: 1 });
  try {
    const res = await server.app.inject({ method: 'POST', url: '/v1/predict', payload: { inputs: Array.from(images), shape: [n, 1, 28, 28] } });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json() as PredictResponse;
    assert.deepEqual(body.predictions.map((q) => q.class), classes);
    body.predictions.forEach((q, i) => assert.ok(Math.abs(q.flopsRatio! - (fixed + ref.executedMacs[i]) / backbone) < 1e-9));
  } finally {
    await server.close();
  }
}
