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
  const batch = options.batchSize ?? 500;
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
  const k = model.numClasses;
  const right = new Float64Array(k);
  const total = new Float64Array(k);
  let correct = 0;
  for (let i = 0; i < data.count; i++) {
    const y = data.labels[i];
    total[y]++;
    if (predictions[i] === y) {
      right[y]++;
      correct++;
    }
  }
  return {
    u,
    accuracy: data.count ? correct / data.count : NaN,
    perClassAccuracy: Array.from(right, (r, c) => (total[c] ? r / total[c] : NaN)),
    count: data.count,
    predictions,
    confidence,
  };
}
