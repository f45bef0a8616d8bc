import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import { Rng } from '../util/rng.js';

/**
 * Test fixture: gives every BatchNorm distinct per-level statistics and a non-trivial affine map, and every
 * bias non-zero values, so a parity test fails if an export uses the wrong statistics row or folds wrongly.
 */
export function randomizeStatistics(model: Network, seed = 1): void {
  const rng = new Rng(seed);
  for (const w of model.weights()) {
    const kind = /\.(gamma|beta|running_mean|running_var|bias)$/.exec(w.name)?.[1];
    if (!kind) continue;
    const data = Float32Array.from({ length: w.variable.size }, () => {
      const r = rng.next();
      return kind === 'gamma' || kind === 'running_var' ? 0.5 + r : 0.6 * (r - 0.5);
    });
    tf.tidy(() => w.variable.assign(tf.tensor(data, w.variable.shape)));
  }
}
