import * as tf from '@tensorflow/tfjs-core';
import type { Network, PlanOptions } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { Rng } from '../util/rng.js';
import type { GatingMode } from '../gating/gating.js';

/** Accuracy of a network at one utilization. */
export interface EvalResult {
  u: number;
  accuracy: number;
  /** Accuracy per class (NaN for a class with no sample). */
  perClassAccuracy: number[];
  count: number;
  /** Predicted class per sample, in input order. */
  predictions: Int32Array;
  /** Top softmax probability per sample. */
  confidence: Float32Array;
}

export interface EvalOptions {
  batchSize?: number;
  gating?: GatingMode;
  /** Seed of independent gating's choices, so an evaluation repeats (default 0). */
  seed?: number;
}

/** Test accuracy of `model` at utilization u over `data`. */
export function evaluate(model: Network, data: ImageSet, u: number, options: EvalOptions = {}): EvalResult {
  const batch = options.batchSize ?? model.batchFor(500);
  const planOptions: PlanOptions = { gating: options.gating, rng: new Rng(options.seed ?? 0) };
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  const predictions = new Int32Array(data.count);
  const confidence = new Float32Array(data.count);
  // Nested gating runs one plan throughout: freeze it once. Independent gating draws a plan per batch.
  const fixed = (options.gating ?? 'nested') === 'nested' ? model.subnet(u) : null;
  try {
    for (let start = 0; start < data.count; start += batch) {
      const n = Math.min(batch, data.count - start);
      const sub = fixed ?? model.subnet(u, planOptions);
      const x = toFloat(data, start, n, buf);
      const [idx, top] = tf.tidy(() => {
        const probs = tf.softmax(sub.predict(tf.tensor(x, [n, ...model.inputShape])));
        return [tf.argMax(probs, 1), tf.max(probs, 1)];
      });
      if (!fixed) sub.dispose();
      predictions.set(idx.dataSync() as Int32Array, start);
      confidence.set(top.dataSync() as Float32Array, start);
      tf.dispose([idx, top]);
    }
  } finally {
    fixed?.dispose();
  }
  return { u, ...tally(predictions, data.labels, model.numClasses), count: data.count, predictions, confidence };
}

/**
 * Accuracy of `predictions` against `labels`, overall and per class (NaN for a class with no sample), and per
 * class the mean of `perSample` when given (for example each sample's executed FLOPs).
 */
export function tally(
  predictions: ArrayLike<number>,
  labels: ArrayLike<number>,
  classes: number,
  perSample?: ArrayLike<number>,
): { accuracy: number; perClassAccuracy: number[]; perClassMean: number[] } {
  const right = new Float64Array(classes);
  const total = new Float64Array(classes);
  const sums = new Float64Array(classes);
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    total[y]++;
    if (perSample) sums[y] += perSample[i];
    if (predictions[i] === y) {
      right[y]++;
      correct++;
    }
  }
  const perClass = (s: Float64Array) => Array.from(s, (v, c) => (total[c] ? v / total[c] : NaN));
  return { accuracy: labels.length ? correct / labels.length : NaN, perClassAccuracy: perClass(right), perClassMean: perClass(sums) };
}
