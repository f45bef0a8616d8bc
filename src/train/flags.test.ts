import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MODEL_ARG_FLAGS, TRAIN_FLAGS, flagSpec, kebab } from './flags.js';

test('every model argument with a flag has its line in the train flag table (the help and the report read it there)', () => {
  const names = new Set(TRAIN_FLAGS.map(([flag]) => flagSpec(flag).name));
  for (const key of Object.keys(MODEL_ARG_FLAGS)) assert.ok(names.has(key), `--${kebab(key)} is missing from TRAIN_FLAGS`);
  // A switch is a flag without a value; the others take one.
  for (const [flag] of TRAIN_FLAGS) {
    const { name } = flagSpec(flag);
    if (name in MODEL_ARG_FLAGS) assert.equal(MODEL_ARG_FLAGS[name] === 'switch', !flag.includes('<'), flag);
  }
});
