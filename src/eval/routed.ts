import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import type { GateMode } from '../layers/types.js';
import { toFloat } from '../data/imageset.js';
import { RoutingState } from '../route/context.js';

/** How a dynamic network did at one inference threshold of its gates. */
export interface RoutedEval {
  threshold: number;
  accuracy: number;
  count: number;
  /** Mean executed FLOPs per sample, gates included, over the backbone's with nothing skipped and no gate. */
  flopsRatio: number;
  /** The least and the most a sample executed, as the same ratio. */
  flopsMin: number;
  flopsMax: number;
  /** Each sample's ratio, in input order (for the histogram). */
  sampleRatios: Float64Array;
  /** The gates' own MACs over the backbone's (what deciding costs each sample). */
  gateShare: number;
  /** Per gated block: the mean fraction of its groups skipped. */
  skipRates: Record<string, number>;
  /** Per class: the mean ratio of its samples (NaN for a class with none), and the accuracy. */
  classFlops: number[];
  perClassAccuracy: number[];
  /** Predicted class per sample. */
  predictions: Int32Array;
}

/** Evaluation options of a dynamic network. */
export interface RoutedEvalOptions {
  /** Inference threshold on the gates' probabilities (default 0.5). */
  threshold?: number;
  batchSize?: number;
  /** `hard` (default) or `masked` (the field's baseline: same decisions, every channel computed). */
  mode?: Extract<GateMode, 'hard' | 'masked'>;
}

/**
 * Accuracy and per-sample executed FLOPs of a network whose gates decide per input, at u = 1 and one
 * inference threshold. Decisions are deterministic and skipped work is not done.
 */
export function evaluateRouted(model: Network, data: ImageSet, options: RoutedEvalOptions = {}): RoutedEval {
  const threshold = options.threshold ?? 0.5;
  const batch = options.batchSize ?? 256;
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  const plan = model.plan(1);
  const { fixed, backbone } = model.routedMacs(plan);
  const groups = new Map(model.blocks().flatMap((b) => (b.kind === 'width' ? [[b.name, b.groups] as const] : [])));
  const predictions = new Int32Array(data.count);
  const sampleRatios = new Float64Array(data.count);
  const skipped = new Map<string, number>();
  for (let start = 0; start < data.count; start += batch) {
    const n = Math.min(batch, data.count - start);
    const x = toFloat(data, start, n, buf);
    const routing = RoutingState.start(options.mode ?? 'hard', n, { threshold });
    const idx = tf.tidy(() => tf.argMax(model.forward(tf.tensor(x, [n, ...model.inputShape]), plan, { routing }), 1));
    predictions.set(idx.dataSync() as Int32Array, start);
    idx.dispose();
    routing.executedMacs.forEach((m, i) => (sampleRatios[start + i] = (fixed + m) / backbone));
    for (const [gate, counts] of routing.decisions) {
      const G = groups.get(gate) ?? 1;
      skipped.set(gate, (skipped.get(gate) ?? 0) + counts.reduce((a, k) => a + (G - k) / G, 0));
    }
  }
  const k = model.numClasses;
  const right = new Float64Array(k);
  const total = new Float64Array(k);
  const flops = new Float64Array(k);
  let correct = 0;
  for (let i = 0; i < data.count; i++) {
    const y = data.labels[i];
    total[y]++;
    flops[y] += sampleRatios[i];
    if (predictions[i] === y) {
      right[y]++;
      correct++;
    }
  }
  const gateMacs = model.cost(plan).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  return {
    threshold,
    accuracy: data.count ? correct / data.count : NaN,
    count: data.count,
    flopsRatio: sampleRatios.reduce((a, b) => a + b, 0) / Math.max(1, data.count),
    flopsMin: data.count ? Math.min(...sampleRatios) : NaN,
    flopsMax: data.count ? Math.max(...sampleRatios) : NaN,
    sampleRatios,
    gateShare: gateMacs / backbone,
    skipRates: Object.fromEntries([...skipped].map(([g, s]) => [g, s / Math.max(1, data.count)])),
    classFlops: Array.from(flops, (f, c) => (total[c] ? f / total[c] : NaN)),
    perClassAccuracy: Array.from(right, (r, c) => (total[c] ? r / total[c] : NaN)),
    predictions,
  };
}
