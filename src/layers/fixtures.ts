import assert from 'node:assert/strict';
import type * as tf from '@tensorflow/tfjs-core';

/** Test fixture: every element of `a` within `tol` of `b`'s, relative to 1 + |b| (values near 0 compare absolutely). */
export function assertClose(a: tf.Tensor, b: tf.Tensor, tol = 1e-4): void {
  const da = a.dataSync();
  const db = b.dataSync();
  assert.equal(da.length, db.length);
  let worst = 0;
  for (let i = 0; i < da.length; i++) worst = Math.max(worst, Math.abs(da[i] - db[i]) / (1 + Math.abs(db[i])));
  assert.ok(worst < tol, `max relative error ${worst}`);
}
