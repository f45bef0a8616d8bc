import * as tf from '@tensorflow/tfjs-core';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import type { Network } from '../models/network.js';
import { VERSION } from '../version.js';
import { Bottleneck, checkBottleneck, headFeatures, findSplitPoint, SplitNetwork, type SplitPoint } from './bottleneck.js';
import { fullSel } from '../layers/select.js';
import { DynnError } from '../util/errors.js';
import { exportHead, exportTail } from './export.js';
import { pcaInit } from './pca.js';
import { inputBytes } from './input-size.js';
import { graphFiles, SPLIT_FORMAT, wireSpec, type SplitFigure, type SplitMeta, type SplitPointMeta } from './store.js';
import { accuracyOf, distill, predictSet, type DistillEpoch, type DistillOptions } from './train.js';
import { bytesPerSample } from './wire.js';

/** Channel counts trained when none are given (those above the layer's channels dropped). */
export const DEFAULT_CHANNELS = [1, 2, 4, 8];
/** Bit widths trained when none are given. */
export const DEFAULT_BITS = [2, 4, 8];

/** Options of `splitNetwork`. */
export interface SplitOptions extends Partial<Omit<DistillOptions, 'channels' | 'bits' | 'onEpoch'>> {
  /** Called after each epoch of each split point's distillation. */
  onEpoch?: (e: DistillEpoch & { at: string }) => void;
  /** The layer, or layers, to split after: one bottleneck is trained at each. */
  at: string | string[];
  channels?: number[];
  bits?: number[];
  /** Samples whose PNG size is averaged (default 1000). */
  pngSamples?: number;
}

/** One split point and the bottleneck sizes trained there. */
export interface PlannedSplit {
  point: SplitPoint;
  channels: number[];
  bits: number[];
}

/**
 * The split points and the bottleneck sizes `options` ask for, checked for every point (default channels above a
 * layer's are dropped there); throws before any training.
 */
export function planSplit(model: Network, options: Pick<SplitOptions, 'at' | 'channels' | 'bits'>): PlannedSplit[] {
  const ats = typeof options.at === 'string' ? [options.at] : options.at;
  if (ats.length === 0) throw new DynnError('give at least one split point');
  const twice = ats.find((a, i) => ats.indexOf(a) !== i);
  if (twice !== undefined) throw new DynnError(`split point ${twice} is given twice`);
  return ats.map((at) => {
    const point = findSplitPoint(model, at);
    const channels = options.channels ?? DEFAULT_CHANNELS.filter((c) => c <= point.shape[2]);
    return { point, ...checkBottleneck(point, channels.length ? channels : [point.shape[2]], options.bits ?? DEFAULT_BITS) };
  });
}

/** One split point of a trained split: the network with its bottleneck and the ONNX halves. */
export interface TrainedSplitPoint {
  split: SplitNetwork;
  head: Uint8Array;
  tail: Uint8Array;
  log: DistillEpoch[];
}

/** A trained split: every split point's network and graphs, and the metadata. `dispose` frees the bottlenecks. */
export interface TrainedSplit {
  splits: TrainedSplitPoint[];
  meta: SplitMeta;
  dispose(): void;
}

/** MACs per sample of `layers` run in order from `channels` input channels at u = 1. */
function layersMacs(model: Network, layers: Network['layers'], channels: number): number {
  const plan = model.plan(1);
  let sel = fullSel(channels);
  let macs = 0;
  for (const l of layers) {
    macs += l.cost(sel, plan).reduce((a, c) => a + c.macs, 0);
    sel = l.outSel(sel, plan);
  }
  return macs;
}

/** Trains one split point's bottleneck and measures its points on `test`. */
function trainPoint(model: Network, plan: PlannedSplit, train: ImageSet, test: ImageSet, options: SplitOptions): { trained: TrainedSplitPoint; meta: SplitPointMeta; points: SplitFigure[] } {
  const { point, channels, bits } = plan;
  const [fh, fw, fc] = point.shape;
  // The decoder ends in a ReLU when the split point's features are never negative (it follows one).
  const probe = Math.min(train.count, 64);
  const relu = tf.tidy(() => {
    const x = tf.tensor4d(toFloat(train, 0, probe), [probe, train.height, train.width, train.channels]);
    return tf.min(headFeatures(model, point, x)).dataSync()[0] >= 0;
  });
  const bottleneck = new Bottleneck(fc, Math.max(...channels), relu, options.seed ?? 0);
  try {
    const split = new SplitNetwork(model, point.name, bottleneck);
    pcaInit(split, train);
    const log = distill(split, train, { ...options, channels, bits, onEpoch: (e) => options.onEpoch?.({ ...e, at: point.name }) });
    const headMacs = layersMacs(model, model.layers.slice(0, point.index + 1), model.inputShape[2]);
    const tailMacs = fh * fw * bottleneck.maxChannels * fc + layersMacs(model, model.layers.slice(point.index + 1), fc);
    const points = channels.flatMap((c) =>
      bits.map((b) => ({
        at: point.name,
        channels: c,
        bits: b,
        bytesPerSample: bytesPerSample(c, fh, fw, b),
        accuracy: accuracyOf(test, predictSet(test, (x) => split.tail(split.reconstruct(split.head(x), c, b)))),
        headFlops: 2 * (headMacs + fh * fw * fc * c),
      })),
    );
    const meta: SplitPointMeta = { at: point.name, features: { shape: [fc, fh, fw] }, bottleneck: { maxChannels: bottleneck.maxChannels, relu }, ...graphFiles(point.name), tailFlops: 2 * tailMacs };
    return { trained: { split, head: exportHead(split), tail: exportTail(split), log }, meta, points };
  } catch (err) {
    bottleneck.dispose();
    throw err;
  }
}

/**
 * Splits a trained network after each layer of `options.at`, trains one slimmable bottleneck at each by head
 * distillation on `train`, and measures every (split point, channels, bits) point on `test` against the unsplit
 * network and the input's own size (raw and PNG).
 */
export function splitNetwork(model: Network, train: ImageSet, test: ImageSet, options: SplitOptions, classNames?: string[]): TrainedSplit {
  const plans = planSplit(model, options);
  const done: ReturnType<typeof trainPoint>[] = [];
  const dispose = () => done.forEach((d) => d.trained.split.bottleneck.dispose());
  try {
    for (const plan of plans) done.push(trainPoint(model, plan, train, test, options));
    const base = accuracyOf(test, predictSet(test, (x) => model.forward(x, model.plan(1))));
    const input = inputBytes(test, options.pngSamples);
    const [h, w, c] = model.inputShape;
    const meta: SplitMeta = {
      format: SPLIT_FORMAT,
      dynnVersion: VERSION,
      model: model.config,
      input: { layout: 'NCHW', shape: [c, h, w] },
      numClasses: model.numClasses,
      classNames: classNames ?? Array.from({ length: model.numClasses }, (_, i) => String(i)),
      splits: done.map((d) => d.meta),
      points: done.flatMap((d) => d.points),
      baseAccuracy: base,
      inputBytesPerSample: input.raw,
      inputPngBytesPerSample: input.png,
      wire: wireSpec(),
      training: {
        method: 'PCA start, then head distillation (feature MSE + taskWeight x cross-entropy), network frozen; one bottleneck per split point',
        channels: plans.map((p) => ({ at: p.point.name, channels: p.channels, bits: p.bits })),
        epochs: options.epochs ?? 1,
        batchSize: options.batchSize ?? 64,
        lr: options.lr ?? 3e-3,
        taskWeight: options.taskWeight ?? 1,
        seed: options.seed ?? 0,
        trainSamples: train.count,
        testSamples: test.count,
        log: Object.fromEntries(done.map((d) => [d.meta.at, d.trained.log])),
      },
    };
    return { splits: done.map((d) => d.trained), meta, dispose };
  } catch (err) {
    dispose();
    throw err;
  }
}
