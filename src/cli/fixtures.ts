import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { runCli } from './cli.js';
import { captureIo } from './capture.js';

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
