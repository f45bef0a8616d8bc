import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import type { Plan } from '../layers/types.js';

/** Loss and accuracy of one gradient computation. */
export interface StepResult {
  /** Mean cross-entropy over the batch. */
  loss: number;
  /** Correct top-1 predictions. */
  correct: number;
  /** Samples in the batch. */
  count: number;
}

/** Offsets of each trainable weight in one flat float32 buffer, in `trainableWeights()` order. */
export interface FlatLayout {
  names: string[];
  shapes: number[][];
  offsets: number[];
  sizes: number[];
  total: number;
}

export function flatLayout(model: Network): FlatLayout {
  const ws = model.trainableWeights();
  const sizes = ws.map((w) => w.variable.size);
  const offsets: number[] = [];
  let total = 0;
  for (const s of sizes) {
    offsets.push(total);
    total += s;
  }
  return { names: ws.map((w) => w.name), shapes: ws.map((w) => w.variable.shape.slice()), offsets, sizes, total };
}

/** Copies the trainable weights into a flat buffer. */
export function readFlat(model: Network, layout: FlatLayout, out: Float32Array): void {
  model.trainableWeights().forEach((w, i) => out.set(w.variable.dataSync() as Float32Array, layout.offsets[i]));
}

/** Loads the trainable weights from a flat buffer. */
export function writeFlat(model: Network, layout: FlatLayout, src: Float32Array): void {
  tf.tidy(() => {
    model.trainableWeights().forEach((w, i) => {
      const o = layout.offsets[i];
      w.variable.assign(tf.tensor(src.subarray(o, o + layout.sizes[i]), layout.shapes[i]));
    });
  });
}

/**
 * Forward and backward pass of one batch at one plan (sliced: only active weights take part); writes the
 * mean-loss gradient of every trainable weight into `grads` (zeros for weights the plan does not use).
 */
export function gradientStep(
  model: Network,
  layout: FlatLayout,
  images: Float32Array,
  labels: ArrayLike<number>,
  plan: Plan,
  grads: Float32Array,
): StepResult {
  const count = labels.length;
  const weights = model.trainableWeights();
  let predicted: tf.Tensor | null = null;
  const { loss, gradients } = tf.tidy(() => {
    const xs = tf.tensor(images.subarray(0, count * model.inputShape.reduce((a, b) => a * b, 1)), [count, ...model.inputShape]);
    const ys = tf.oneHot(tf.tensor1d(Int32Array.from(labels), 'int32'), model.numClasses);
    const { value, grads: g } = tf.variableGrads(() => {
      const logits = model.forward(xs, plan, { training: true });
      predicted = tf.keep(tf.argMax(logits, 1));
      return tf.losses.softmaxCrossEntropy(ys, logits) as tf.Scalar;
    }, weights.map((w) => w.variable));
    return { loss: value, gradients: g };
  });
  weights.forEach((w, i) => {
    const g = gradients[w.variable.name];
    const o = layout.offsets[i];
    if (g) grads.set(g.dataSync() as Float32Array, o);
    else grads.fill(0, o, o + layout.sizes[i]);
  });
  const pred = (predicted as unknown as tf.Tensor).dataSync();
  let correct = 0;
  for (let i = 0; i < count; i++) if (pred[i] === labels[i]) correct++;
  const lossValue = loss.dataSync()[0];
  tf.dispose([loss, predicted as unknown as tf.Tensor, ...Object.values(gradients)]);
  return { loss: lossValue, correct, count };
}
