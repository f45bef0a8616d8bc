import * as tf from '@tensorflow/tfjs-core';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Network } from '../models/network.js';
import { VERSION } from '../version.js';
import { Bottleneck, checkBottleneck, headFeatures, findSplitPoint, SplitNetwork, type SplitPoint } from './bottleneck.js';
import { exportHead, exportTail } from './export.js';
import { pcaInit } from './pca.js';
import { inputBytes } from './input-size.js';
import { SPLIT_FORMAT, wireSpec, type SplitMeta } from './store.js';
import { accuracyOf, distill, predictSet, type DistillEpoch, type DistillOptions } from './train.js';
import { bytesPerSample } from './wire.js';

/** Channel counts trained when none are given (those above the layer's channels dropped). */
export const DEFAULT_CHANNELS = [1, 2, 4, 8];
/** Bit widths trained when none are given. */
export const DEFAULT_BITS = [2, 4, 8];

/** Options of `splitNetwork`. */
export interface SplitOptions extends Partial<Omit<DistillOptions, 'channels' | 'bits'>> {
  /** The layer to split after. */
  at: string;
  channels?: number[];
  bits?: number[];
  /** Samples whose PNG size is averaged (default 1000). */
  pngSamples?: number;
}

/** The split point and the bottleneck sizes `options` ask for, checked; throws before any training. */
export function planSplit(model: Network, options: Pick<SplitOptions, 'at' | 'channels' | 'bits'>): { point: SplitPoint; channels: number[]; bits: number[] } {
  const point = findSplitPoint(model, options.at);
  const channels = options.channels ?? DEFAULT_CHANNELS.filter((c) => c <= point.shape[2]);
  return { point, ...checkBottleneck(point, channels.length ? channels : [point.shape[2]], options.bits ?? DEFAULT_BITS) };
}

/** A trained split: the network with its bottleneck, the ONNX halves and the metadata. Dispose `split.bottleneck`. */
export interface TrainedSplit {
  split: SplitNetwork;
  head: Uint8Array;
  tail: Uint8Array;
  meta: SplitMeta;
  log: DistillEpoch[];
}

/**
 * Splits a trained network after `options.at`, trains one slimmable bottleneck there by head distillation on
 * `train`, and measures every (channels, bits) point on `test` against the unsplit network and the input's own
 * size (raw and PNG).
 */
export function splitNetwork(model: Network, train: ImageSet, test: ImageSet, options: SplitOptions, classNames?: string[]): TrainedSplit {
  const { point, channels, bits } = planSplit(model, options);
  const [fh, fw, fc] = point.shape;
  // The decoder ends in a ReLU when the split point's features are never negative (it follows one).
  const probe = Math.min(train.count, 64);
  const relu = tf.tidy(() => {
    const x = tf.tensor4d(toFloat(train, 0, probe), [probe, train.height, train.width, train.channels]);
    return tf.min(headFeatures(model, point, x)).dataSync()[0] >= 0;
  });
  const bottleneck = new Bottleneck(fc, Math.max(...channels), relu, options.seed ?? 0);
  try {
    const split = new SplitNetwork(model, options.at, bottleneck);
    pcaInit(split, train);
    const log = distill(split, train, { ...options, channels, bits });
    const base = accuracyOf(test, predictSet(test, (x) => model.forward(x, model.plan(1))));
    const points = channels.flatMap((c) =>
      bits.map((b) => ({
        channels: c,
        bits: b,
        bytesPerSample: bytesPerSample(c, fh, fw, b),
        accuracy: accuracyOf(test, predictSet(test, (x) => split.tail(split.reconstruct(split.head(x), c, b)))),
      })),
    );
    const input = inputBytes(test, options.pngSamples);
    const [h, w, c] = model.inputShape;
    const meta: SplitMeta = {
      format: SPLIT_FORMAT,
      dynnVersion: VERSION,
      model: model.config,
      at: point.name,
      input: { layout: 'NCHW', shape: [c, h, w] },
      features: { shape: [fc, fh, fw] },
      bottleneck: { maxChannels: bottleneck.maxChannels, relu },
      numClasses: model.numClasses,
      classNames: classNames ?? Array.from({ length: model.numClasses }, (_, i) => String(i)),
      points,
      baseAccuracy: base,
      inputBytesPerSample: input.raw,
      inputPngBytesPerSample: input.png,
      wire: wireSpec(),
      training: { method: 'PCA start, then head distillation (feature MSE + taskWeight x cross-entropy), network frozen', channels, bits, epochs: options.epochs ?? 1, batchSize: options.batchSize ?? 64, lr: options.lr ?? 3e-3, taskWeight: options.taskWeight ?? 1, seed: options.seed ?? 0, trainSamples: train.count, testSamples: test.count, log },
    };
    return { split, head: exportHead(split), tail: exportTail(split), meta, log };
  } catch (err) {
    bottleneck.dispose();
    throw err;
  }
}
