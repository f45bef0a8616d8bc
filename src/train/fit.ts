import * as tf from '@tensorflow/tfjs-core';
import { Registry } from '../util/registry.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Network } from '../models/network.js';
import { fitSwitchTarget } from '../route/width.js';
import { fitGateRates } from './calibrate.js';

/** What a gate fit is given: the model, training samples and the mechanism's target at the deployed threshold. */
export interface FitContext {
  model: Network;
  data: ImageSet;
  target: number;
  /** Training samples the fit reads (the calibration's). */
  samples: number;
  threshold: number;
  /** Recomputes the per-route BatchNorm statistics (the routes follow the gates). */
  recalibrate: () => void;
}

/**
 * How a mechanism's gates are set so that its target holds with deterministic decisions at the deployed
 * threshold, not only under training's sampled ones (`EfficiencyTerm.fit` names one). The trainer calls
 * `start` before the first gated epoch and `epoch` after every gated epoch, then hands the weights back to
 * its executor.
 */
export interface GateFit {
  start?(c: FitContext): void;
  epoch(c: FitContext): void;
}

/** Gate fits by name. */
export const gateFits = new Registry<GateFit>('gate fit');

gateFits.register('gate-rates', {
  // Step 2 starts with every gate's sampled decisions at the target (gates start open otherwise, and Adam
  // moves a logit too slowly for a short fine-tuning to reach it).
  start: (c) => void fitGateRates(c.model, c.data, { target: c.target, samples: c.samples, threshold: c.threshold, sampled: true }),
  // Each gate's bias, so that it executes the target share; the per-route statistics following.
  epoch: (c) => void fitGateRates(c.model, c.data, { target: c.target, samples: c.samples, threshold: c.threshold, recalibrate: c.recalibrate }),
});

gateFits.register('switch-target', {
  // The switch gate's logits shifted so that the mean FLOPs ratio at the threshold meets the target.
  epoch(c) {
    const n = Math.min(c.data.count, c.samples);
    const shape = c.model.inputShape;
    const images = tf.tensor4d(toFloat(c.data, 0, n, new Float32Array(n * shape.reduce((a, b) => a * b, 1))), [n, shape[0], shape[1], shape[2]]);
    try {
      fitSwitchTarget(c.model, images, c.target, c.threshold);
    } finally {
      images.dispose();
    }
  },
});
