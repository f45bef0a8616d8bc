import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SERVE_NODE_FLAGS, missingServeFlags } from './node-flags.js';

test('missingServeFlags: the serve flags node lacks, by name; values of the user\'s own are kept', () => {
  assert.deepEqual(missingServeFlags([]), SERVE_NODE_FLAGS.split(' '));
  assert.deepEqual(missingServeFlags(SERVE_NODE_FLAGS.split(' ')), []);
  assert.deepEqual(missingServeFlags(['--enable-source-maps', '--max-semi-space-size=64']), ['--initial-old-space-size=256']);
  // V8 reads underscores as dashes; NODE_OPTIONS counts too.
  assert.deepEqual(missingServeFlags(['--initial_old_space_size=512'], ' --max-semi-space-size=8 --trace-gc'), []);
  assert.deepEqual(missingServeFlags([], '--max-semi-space-size=8'), ['--initial-old-space-size=256']);
});
