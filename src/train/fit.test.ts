import test from 'node:test';
import assert from 'node:assert/strict';
import { mechanisms } from '../route/mechanisms.js';
import { gateFits } from './fit.js';

test('every mechanism that fits its gates names a registered gate fit; rate and width targets are fitted, FLOPs targets of ACS are not', () => {
  for (const name of mechanisms.list()) {
    const fit = mechanisms.get(name).efficiency.fit;
    if (fit !== undefined) assert.ok(gateFits.has(fit), `${name}: gate fit ${fit}`);
  }
  assert.equal(mechanisms.get('skip').efficiency.fit, 'gate-rates');
  assert.equal(mechanisms.get('width').efficiency.fit, 'switch-target');
  assert.equal(mechanisms.get('acs-gn').efficiency.fit, undefined);
  assert.throws(() => gateFits.get('nope'), /unknown gate fit "nope"; expected one of gate-rates, switch-target/);
});
