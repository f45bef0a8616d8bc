import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';

/** Knowledge distillation settings (Hinton et al.): the weight of the soft targets and their temperature. */
export interface DistillSettings {
  /** a in [0, 1]: the share of the soft-target term in the loss. */
  alpha: number;
  /** T > 0: the softmax temperature of both teacher and student in the soft term. */
  temperature: number;
}

/** Throws a DynnError unless a is in [0, 1] and T is a positive finite number. */
export function checkDistill(s: DistillSettings): void {
  if (!(s.alpha >= 0 && s.alpha <= 1)) throw new DynnError(`distillation alpha must be in [0, 1], got ${s.alpha}`);
  if (!(s.temperature > 0 && Number.isFinite(s.temperature))) throw new DynnError(`distillation temperature must be a positive number, got ${s.temperature}`);
}

/**
 * Mean over the batch of KL(softmax(teacher / T) || softmax(student / T)). The teacher's logits are a
 * constant here: pass values computed outside the gradient tape (they get no gradient). Call inside `tf.tidy`.
 */
export function softTargetKl(teacherLogits: tf.Tensor2D, studentLogits: tf.Tensor2D, temperature = 1): tf.Scalar {
  const logP = tf.logSoftmax(tf.div(teacherLogits, temperature));
  const logQ = tf.logSoftmax(tf.div(studentLogits, temperature));
  return tf.mean(tf.sum(tf.mul(tf.exp(logP), tf.sub(logP, logQ)), 1)) as tf.Scalar;
}

/**
 * The distillation loss `(1 - a) * CE(y) + a * T^2 * KL(teacher_T || student_T)`, mean over the batch:
 * the hard targets `oneHot` and the teacher's soft targets at temperature T (the T^2 keeps the soft
 * term's gradient scale independent of T). Call inside `tf.tidy`.
 */
export function distillationLoss(studentLogits: tf.Tensor2D, teacherLogits: tf.Tensor2D, oneHot: tf.Tensor2D, s: DistillSettings): tf.Scalar {
  const hard = tf.losses.softmaxCrossEntropy(oneHot, studentLogits);
  const soft = softTargetKl(teacherLogits, studentLogits, s.temperature);
  return tf.add(tf.mul(1 - s.alpha, hard), tf.mul(s.alpha * s.temperature * s.temperature, soft)) as tf.Scalar;
}
