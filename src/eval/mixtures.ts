import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import type { MixtureSink } from '../layers/types.js';

/** How one conditional convolution mixes its experts over a test set. */
export interface MixtureLayerStats {
  layer: string;
  experts: number;
  /**
   * Mean entropy (nats) of each sample's mixing weights normalised to sum 1: log(E) when every sample mixes the
   * experts equally, 0 when each picks one. `maxEntropy` is log(E).
   */
  meanEntropy: number;
  maxEntropy: number;
  /** Mean mixing weight of each expert over all samples. */
  meanWeights: number[];
  /** Class by expert: the mean mixing weights of the samples of each class (NaN rows for an absent class). */
  perClass: number[][];
}

/** Routing statistics of every conditional convolution of a network, in network order. */
export interface MixtureStats {
  count: number;
  layers: MixtureLayerStats[];
}

/** Whether a network has conditional convolutions (dynamic parameters) whose routing can be reported. */
export function hasMixtures(model: Network): boolean {
  return model.cost(1).layers.some((c) => c.kind === 'CondConvRouting');
}

/**
 * The mixing weights of every conditional convolution over `data` (a forward pass at the full plan, batch by
 * batch): the mean entropy per layer and the per-class mean weights, the class-by-expert table.
 */
export function mixtureStats(model: Network, data: ImageSet, options: { batchSize?: number } = {}): MixtureStats {
  const batch = options.batchSize ?? model.batchFor(256);
  const classes = model.numClasses;
  const acc = new Map<string, { experts: number; entropy: number; sums: Float64Array; total: Float64Array }>();
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  const plan = model.plan(1);
  let labels: ArrayLike<number> = [];
  const sink: MixtureSink = {
    add(layer, weights) {
      const [n, e] = weights.shape;
      const w = weights.dataSync();
      let a = acc.get(layer);
      if (!a) acc.set(layer, (a = { experts: e, entropy: 0, sums: new Float64Array(classes * e), total: new Float64Array(classes) }));
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let j = 0; j < e; j++) s += w[i * e + j];
        let h = 0;
        for (let j = 0; j < e; j++) {
          const p = w[i * e + j] / s;
          if (p > 0) h -= p * Math.log(p);
        }
        a.entropy += h;
        const y = labels[i];
        a.total[y]++;
        for (let j = 0; j < e; j++) a.sums[y * e + j] += w[i * e + j];
      }
    },
  };
  for (let start = 0; start < data.count; start += batch) {
    const n = Math.min(batch, data.count - start);
    labels = data.labels.subarray(start, start + n);
    const x = toFloat(data, start, n, buf);
    tf.tidy(() => {
      model.forward(tf.tensor(x, [n, ...model.inputShape]), plan, { mixtures: sink });
    });
  }
  const layers = [...acc.entries()].map(([layer, a]) => {
    const e = a.experts;
    const count = a.total.reduce((x, y) => x + y, 0);
    const meanWeights = Array.from({ length: e }, (_, j) => {
      let s = 0;
      for (let c = 0; c < classes; c++) s += a.sums[c * e + j];
      return s / count;
    });
    const perClass = Array.from({ length: classes }, (_, c) => Array.from({ length: e }, (_, j) => (a.total[c] ? a.sums[c * e + j] / a.total[c] : NaN)));
    return { layer, experts: e, meanEntropy: a.entropy / count, maxEntropy: Math.log(e), meanWeights, perClass };
  });
  return { count: data.count, layers };
}
