import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { fullSel } from '../layers/index.js';
import { RoutingState } from '../route/context.js';
import { logitCut } from '../route/count.js';
import { SpatialResidualBlock } from '../route/spatial.js';

/** Which positions each spatially gated block computed for a few test images: what the report draws over them. */
export interface SpatialMasks {
  /** The gates' inference threshold. */
  threshold: number;
  /** The images' size (the first channel is drawn). */
  height: number;
  width: number;
  /** The gated blocks in network order, each with its grid of output positions. */
  blocks: { name: string; height: number; width: number }[];
  samples: {
    /** Index in the test set. */
    index: number;
    label: number;
    predicted: number;
    /** The first channel, row-major, 0..255. */
    image: number[];
    /** Per block: 1 where the position was computed, row-major over its grid. */
    masks: number[][];
  }[];
}

/**
 * The masks of the first `count` test images at `threshold`, from a pass that routes as inference does (each
 * block's gate reads the input the block really gets); null for a network without spatially gated blocks.
 */
export function spatialMasks(model: Network, data: ImageSet, options: { count?: number; threshold?: number } = {}): SpatialMasks | null {
  const blocks = model.layers.filter((l): l is SpatialResidualBlock => l instanceof SpatialResidualBlock);
  if (!blocks.length) return null;
  const threshold = options.threshold ?? 0.5;
  const n = Math.min(options.count ?? 4, data.count);
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const plan = model.plan(1);
  const routing = RoutingState.start('hard', n, { threshold });
  const ctx = { plan, training: false, routing };
  const cut = logitCut(threshold);
  const masks = blocks.map(() => [] as number[][]);
  const predicted = tf.tidy(() => {
    let y: tf.Tensor = tf.tensor(toFloat(data, 0, n, new Float32Array(n * per)), [n, ...model.inputShape]);
    let sel = fullSel(model.inputShape[2]);
    for (const l of model.layers) {
      const b = blocks.indexOf(l as SpatialResidualBlock);
      if (b >= 0) {
        const z = blocks[b].gate.call(y, sel, ctx).y.dataSync();
        const P = z.length / n;
        for (let i = 0; i < n; i++) masks[b].push(Array.from(z.subarray(i * P, (i + 1) * P), (v) => (v > cut ? 1 : 0)));
      }
      ({ y, sel } = l.call(y, sel, ctx));
    }
    return Array.from(tf.argMax(y, 1).dataSync());
  });
  const [h, w, c] = [data.height, data.width, data.channels];
  return {
    threshold,
    height: h,
    width: w,
    blocks: blocks.map((b) => ({ name: b.name, height: b.outShape[0], width: b.outShape[1] })),
    samples: Array.from({ length: n }, (_, i) => ({
      index: i,
      label: data.labels[i],
      predicted: predicted[i],
      image: Array.from({ length: h * w }, (_, p) => data.images[(i * h * w + p) * c]),
      masks: masks.map((m) => m[i]),
    })),
  };
}
