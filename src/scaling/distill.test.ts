import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { checkDistill, distillationLoss, softTargetKl } from './distill.js';

before(async () => {
  await initEngine('wasm');
});

const student = [[1, 2, 3], [0.5, -1, 2]];
const teacher = [[3, 1, 0], [0, 0, 4]];
const labels = [0, 2];

test('distillation loss equals the hand-computed (1 - a) CE + a T^2 KL', () => {
  // Row 1: CE = log(1 + e + e^2) = 2.407606; KL(softmax([1.5, .5, 0]) || softmax([.5, 1, 1.5])) = 0.518454.
  // Row 2: CE = 0.241311; KL = 0.102044. Mean of 0.7 CE + 0.3 * 4 * KL over the rows = 1.299420.
  const before = tf.memory().numTensors;
  const loss = tf.tidy(() =>
    distillationLoss(tf.tensor2d(student), tf.tensor2d(teacher), tf.oneHot(tf.tensor1d(labels, 'int32'), 3) as tf.Tensor2D, { alpha: 0.3, temperature: 2 }).dataSync()[0],
  );
  assert.ok(Math.abs(loss - 1.2994197) < 1e-5, `loss ${loss}`);
  const ceOnly = tf.tidy(() =>
    distillationLoss(tf.tensor2d(student), tf.tensor2d(teacher), tf.oneHot(tf.tensor1d(labels, 'int32'), 3) as tf.Tensor2D, { alpha: 0, temperature: 2 }).dataSync()[0],
  );
  assert.ok(Math.abs(ceOnly - (2.4076060 + 0.2413113) / 2) < 1e-5);
  assert.equal(tf.memory().numTensors, before);
});

test('the soft-target gradient is (q_T - p_T) / T per sample, and KL of a distribution with itself is 0', () => {
  const T = 3;
  const s = tf.tensor2d(student);
  const t = tf.tensor2d(teacher);
  const g = tf.grad((x: tf.Tensor) => softTargetKl(t, x as tf.Tensor2D, T))(s);
  const softmax = (row: number[]) => {
    const e = row.map((v) => Math.exp(v / T));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / z);
  };
  const got = g.arraySync() as number[][];
  student.forEach((row, r) => {
    const q = softmax(row);
    const p = softmax(teacher[r]);
    q.forEach((qi, j) => assert.ok(Math.abs(got[r][j] - (qi - p[j]) / T / student.length) < 1e-6, `gradient [${r}, ${j}]`));
  });
  assert.ok(Math.abs(tf.tidy(() => softTargetKl(s, s, 2).dataSync()[0])) < 1e-6);
  tf.dispose([s, t, g]);
});

test('distillation settings are checked', () => {
  assert.throws(() => checkDistill({ alpha: 1.5, temperature: 2 }), /alpha must be in \[0, 1\], got 1.5/);
  assert.throws(() => checkDistill({ alpha: 0.5, temperature: 0 }), /temperature must be a positive number, got 0/);
  assert.doesNotThrow(() => checkDistill({ alpha: 1, temperature: 0.5 }));
});
