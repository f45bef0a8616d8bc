import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import type { Subnet } from '../models/subnet.js';
import { checkActions, checkOperatingPoints } from './actions.js';
import type { MixedRunner } from './runner.js';

/**
 * The frozen network's answers on a sample set at each action u_k, computed once: what the bandit trains
 * on, what the oracle, the fixed-u curve, cascades and `dynn select` are evaluated from.
 */
export interface LevelTable {
  /** The actions, ascending. */
  us: number[];
  /** Each action's input resolution (height), when the actions are operating points (u, r) sorted by u then r. */
  resolutions?: number[];
  count: number;
  labels: Uint8Array;
  /** Per action: predicted class per sample. */
  predictions: Int32Array[];
  /** Per action: top softmax probability per sample. */
  confidence: Float32Array[];
  /** Per action: 1 where the prediction is right. */
  correct: Uint8Array[];
  /** Per action: MACs of one sample. */
  macs: number[];
  /** MACs of the full network at u = 1. */
  fullMacs: number;
  /** Per action, when asked for: every sample's class probabilities, row-major [count, classes]. */
  probabilities?: Float32Array[];
}

/** Predicted class and top softmax probability of every sample of a set under one subnet (and every probability, when asked). */
export function scoreSet(sub: Subnet, set: ImageSet, batchSize = 500, keep = false): { predictions: Int32Array; confidence: Float32Array; probabilities?: Float32Array } {
  const per = set.height * set.width * set.channels;
  const buf = new Float32Array(Math.min(batchSize, set.count) * per);
  const predictions = new Int32Array(set.count);
  const confidence = new Float32Array(set.count);
  let probabilities: Float32Array | undefined;
  for (let start = 0; start < set.count; start += batchSize) {
    const n = Math.min(batchSize, set.count - start);
    const x = toFloat(set, start, n, buf);
    const [idx, top, probs] = tf.tidy(() => {
      const probs = tf.softmax(sub.predict(tf.tensor(x, [n, set.height, set.width, set.channels])));
      return [tf.argMax(probs, 1), tf.max(probs, 1), probs];
    });
    predictions.set(idx.dataSync() as Int32Array, start);
    confidence.set(top.dataSync() as Float32Array, start);
    if (keep) {
      const C = probs.shape[1]!;
      probabilities ??= new Float32Array(set.count * C);
      probabilities.set(probs.dataSync() as Float32Array, start * C);
    }
    tf.dispose([idx, top, probs]);
  }
  return { predictions, confidence, ...(probabilities && { probabilities }) };
}

/**
 * Runs every distinct operating point of `us` over `set` once (actions sharing a level share the pass).
 * `probabilities` keeps every sample's class probabilities per action (what the temporal controller trains on);
 * `resolutions` gives each action's input resolution (operating points (u, r), `operatingPoints`).
 */
export function levelTable(runner: MixedRunner, set: ImageSet, us: readonly number[], options: { batchSize?: number; onLevel?: (u: number, resolution?: number) => void; probabilities?: boolean; resolutions?: readonly number[] } = {}): LevelTable {
  const res = options.resolutions;
  if (res) checkOperatingPoints(us, res);
  const actions = res ? [...us] : checkActions(us);
  const byKey = new Map<string, { predictions: Int32Array; confidence: Float32Array; correct: Uint8Array; probabilities?: Float32Array }>();
  const rows = actions.map((u, a) => {
    const k = `${runner.key(u)}@${res?.[a] ?? ''}`;
    let r = byKey.get(k);
    if (!r) {
      options.onLevel?.(u, res?.[a]);
      const s = scoreSet(runner.subnet(u, res?.[a]), set, options.batchSize ?? runner.model.batchFor(500), options.probabilities);
      const correct = new Uint8Array(set.count);
      for (let i = 0; i < set.count; i++) correct[i] = s.predictions[i] === set.labels[i] ? 1 : 0;
      r = { ...s, correct };
      byKey.set(k, r);
    }
    return r;
  });
  return {
    us: actions,
    ...(res && { resolutions: [...res] }),
    count: set.count,
    labels: set.labels.subarray(0, set.count),
    predictions: rows.map((r) => r.predictions),
    confidence: rows.map((r) => r.confidence),
    correct: rows.map((r) => r.correct),
    macs: actions.map((u, a) => runner.macs(u, res?.[a])),
    fullMacs: runner.fullMacs,
    ...(options.probabilities && { probabilities: rows.map((r) => r.probabilities!) }),
  };
}

/** Accuracy and FLOPs ratio of each action run for every sample (the fixed-u curve; with its resolution, each fixed (u, r)). */
export function fixedCurve(table: LevelTable): { u: number; resolution?: number; accuracy: number; flopsRatio: number }[] {
  return table.us.map((u, k) => ({
    u,
    ...(table.resolutions && { resolution: table.resolutions[k] }),
    accuracy: table.correct[k].reduce((a, b) => a + b, 0) / table.count,
    flopsRatio: table.macs[k] / table.fullMacs,
  }));
}
