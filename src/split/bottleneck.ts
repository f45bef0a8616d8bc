import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { DynnError } from '../util/errors.js';
import { seedFor } from '../layers/layer.js';
import { fullSel } from '../layers/select.js';
import type { NamedArray, Network } from '../models/network.js';
import type { Layer } from '../layers/layer.js';
import type { RunContext, Shape } from '../layers/types.js';
import { checkBits, fakeQuantize, quantize, dequantize } from './quantize.js';

/** Where a network can be split: a top-level layer with an image-shaped output ([H, W, C]) that is not the last. */
export interface SplitPoint {
  /** The layer's name (`--at`). */
  name: string;
  /** Its index among the network's top-level layers. */
  index: number;
  /** Its output [H, W, C]. */
  shape: Shape;
}

/** Every split point of a network, in order. */
export function splitPoints(model: Network): SplitPoint[] {
  return model.layers
    .map((l, index) => ({ name: l.name, index, shape: l.outShape }))
    .filter((p) => p.shape.length === 3 && p.index < model.layers.length - 1);
}

/** The split point named `at`, or a DynnError that lists the valid ones. */
export function findSplitPoint(model: Network, at: string): SplitPoint {
  if (model.gated) throw new DynnError(`${model.config.model} with ${String(model.config.args.dynamic)} gates decides per sample inside the network; split computing needs a static network`);
  const points = splitPoints(model);
  const p = points.find((q) => q.name === at);
  if (!p) throw new DynnError(`unknown split layer "${at}"; expected one of ${points.map((q) => q.name).join(', ')}`);
  return p;
}

/**
 * Checks a bottleneck's channel counts (1..the layer's channels) and bit widths (1..16) before any training;
 * returns them sorted and without repeats.
 */
export function checkBottleneck(point: SplitPoint, channels: number[], bits: number[]): { channels: number[]; bits: number[] } {
  const c = point.shape[2];
  if (channels.length === 0 || bits.length === 0) throw new DynnError('a bottleneck needs at least one channel count and one bit width');
  for (const n of channels) {
    if (!Number.isInteger(n) || n < 1 || n > c) throw new DynnError(`channels must be integers from 1 to ${c} (the channels of ${point.name}), got ${n}`);
  }
  bits.forEach(checkBits);
  const uniq = (xs: number[]) => [...new Set(xs)].sort((a, b) => a - b);
  return { channels: uniq(channels), bits: uniq(bits) };
}

/**
 * A slimmable bottleneck at a split point: an encoder (1x1 convolution, C to K channels) on the head's side
 * and a decoder (1x1 convolution, K back to C) on the tail's. A bottleneck of c channels uses the first c
 * encoder outputs and the first c decoder inputs (the weights sliced, as dynn's nested groups), so one trained
 * bottleneck serves every c up to K. No BatchNorm: the quantizer rescales each sample to its own min/max anyway.
 */
export class Bottleneck {
  readonly encKernel: tf.Variable;
  readonly encBias: tf.Variable;
  readonly decKernel: tf.Variable;
  readonly decBias: tf.Variable;

  constructor(
    /** Channels of the features at the split point. */
    readonly featureChannels: number,
    /** Widest bottleneck K. */
    readonly maxChannels: number,
    /** A ReLU after the decoder: the split point's features are never negative (it follows a ReLU). */
    readonly relu: boolean,
    seed = 0,
  ) {
    const [c, k] = [featureChannels, maxChannels];
    const init = (name: string, shape: number[], fanIn: number) => {
      const b = 1 / Math.sqrt(fanIn);
      return tf.tidy(() => tf.variable(tf.randomUniform(shape, -b, b, 'float32', seedFor(name, seed)), true));
    };
    this.encKernel = init('bottleneck.encoder.kernel', [1, 1, c, k], c);
    this.encBias = tf.tidy(() => tf.variable(tf.zeros([k]), true));
    this.decKernel = init('bottleneck.decoder.kernel', [1, 1, k, c], k);
    this.decBias = tf.tidy(() => tf.variable(tf.zeros([c]), true));
  }

  /** The first `c` encoder outputs of the split point's features. Call inside `tf.tidy`. */
  encode(f: tf.Tensor4D, c: number): tf.Tensor4D {
    const k = tf.slice(this.encKernel, [0, 0, 0, 0], [1, 1, this.featureChannels, c]) as tf.Tensor4D;
    return tf.add(tf.conv2d(f, k, 1, 'same'), tf.slice(this.encBias, [0], [c])) as tf.Tensor4D;
  }

  /** The split point's features again from `c` bottleneck channels. Call inside `tf.tidy`. */
  decode(z: tf.Tensor4D): tf.Tensor4D {
    const c = z.shape[3];
    const k = tf.slice(this.decKernel, [0, 0, 0, 0], [1, 1, c, this.featureChannels]) as tf.Tensor4D;
    const y = tf.add(tf.conv2d(z, k, 1, 'same'), this.decBias) as tf.Tensor4D;
    return this.relu ? tf.relu(y) : y;
  }

  variables(): tf.Variable[] {
    return [this.encKernel, this.encBias, this.decKernel, this.decBias];
  }

  /** The weights as named arrays, TF.js layouts (kernels HWIO). */
  getWeights(): NamedArray[] {
    const names = ['bottleneck.encoder.kernel', 'bottleneck.encoder.bias', 'bottleneck.decoder.kernel', 'bottleneck.decoder.bias'];
    return this.variables().map((v, i) => ({ name: names[i], shape: v.shape.slice(), data: (v.dataSync() as Float32Array).slice() }));
  }

  setWeights(arrays: NamedArray[]): void {
    const vars = this.variables();
    if (arrays.length !== vars.length) throw new DynnError(`a bottleneck has ${vars.length} weights, got ${arrays.length}`);
    arrays.forEach((a, i) => {
      if (a.shape.join() !== vars[i].shape.join()) throw new DynnError(`bottleneck weight ${a.name} has shape [${a.shape}], expected [${vars[i].shape}]`);
      tf.tidy(() => vars[i].assign(tf.tensor(a.data, a.shape)));
    });
  }

  dispose(): void {
    for (const v of this.variables()) v.dispose();
  }
}

function runLayers(layers: Layer[], x: tf.Tensor, channels: number, ctx: RunContext): tf.Tensor {
  let sel = fullSel(channels);
  let y = x;
  for (const l of layers) ({ y, sel } = l.call(y, sel, ctx));
  return y;
}

/** The network's features at a split point, at u = 1 (the teacher's). Call inside `tf.tidy`. */
export function headFeatures(model: Network, point: SplitPoint, x: tf.Tensor4D): tf.Tensor4D {
  model.checkInput(x);
  return runLayers(model.layers.slice(0, point.index + 1), x, model.inputShape[2], { plan: model.plan(1), training: false }) as tf.Tensor4D;
}

/**
 * A trained network cut at a split point with a bottleneck between its halves. The network runs at u = 1
 * and stays frozen; only the bottleneck trains.
 */
export class SplitNetwork {
  readonly point: SplitPoint;

  constructor(
    readonly model: Network,
    at: string,
    readonly bottleneck: Bottleneck,
  ) {
    this.point = findSplitPoint(model, at);
    if (bottleneck.featureChannels !== this.point.shape[2]) {
      throw new DynnError(`the bottleneck takes ${bottleneck.featureChannels} channels; ${at} has ${this.point.shape[2]}`);
    }
  }

  /** The network's features at the split point (the teacher's). Call inside `tf.tidy`. */
  head(x: tf.Tensor4D): tf.Tensor4D {
    return headFeatures(this.model, this.point, x);
  }

  /** Class scores from features at the split point. Call inside `tf.tidy`. */
  tail(f: tf.Tensor4D): tf.Tensor2D {
    return runLayers(this.model.layers.slice(this.point.index + 1), f, this.point.shape[2], { plan: this.model.plan(1), training: false }) as tf.Tensor2D;
  }

  /**
   * The tail's input through a bottleneck of `channels` at `bits`: with `train`, quantized with a
   * straight-through gradient; without, quantized to codes and dequantized as the wire does. Call inside `tf.tidy`.
   */
  reconstruct(features: tf.Tensor4D, channels: number, bits: number, train = false): tf.Tensor4D {
    const z = this.bottleneck.encode(features, channels);
    if (train) return this.bottleneck.decode(fakeQuantize(z, bits));
    const q = quantize(z, bits);
    return this.bottleneck.decode(dequantize(q.codes, q.min, q.step));
  }

  /** Class scores of a batch through the bottleneck (a new tensor). */
  predict(x: tf.Tensor4D, channels: number, bits: number): tf.Tensor2D {
    return tf.tidy(() => this.tail(this.reconstruct(this.head(x), channels, bits)));
  }
}
