import * as tf from '@tensorflow/tfjs-core';
import { Registry } from '../util/registry.js';

// The computation of a conditional convolution, apart from the layer: frozen ops (models/subnet.ts) run it too.

/**
 * How routing logits become the experts' mixing weights: `sigmoid`, independent per expert (CondConv, Yang et
 * al. 2019), or `softmax` over the experts at a temperature (dynamic convolution, Chen et al. 2020).
 */
export const condRoutings = new Registry<(logits: tf.Tensor2D, temperature: tf.Tensor | null) => tf.Tensor2D>('routing');
condRoutings.register('sigmoid', (z) => tf.sigmoid(z));
condRoutings.register('softmax', (z, t) => tf.softmax(t ? tf.div(z, t) : z));

/** What one conditional convolution runs with: the weights `freeze` copies out and `call` reads in place. */
export interface CondConvParams {
  /** Expert kernels [E, Cin*k*k, Cout], rows in (input channel, kernel row, kernel column) order: im2col's. */
  kernel: tf.Tensor3D;
  /** Expert biases [E, Cout], or null. */
  bias: tf.Tensor2D | null;
  /** A bias added after the mixing [Cout] (a folded BatchNorm's shift), or absent. */
  shift?: tf.Tensor1D | null;
  /** The router's FC from pooled input channels to expert logits: [Cin, E] and [E]. */
  routeKernel: tf.Tensor2D;
  routeBias: tf.Tensor1D;
  routing: string;
  /** The softmax temperature [1], or null (none: sigmoid routing). */
  temperature: tf.Tensor1D | null;
  kernelSize: number;
  strides: number;
  padding: 'same' | 'valid';
}

/** The mixing weights [n, E] of a batch: the router on the globally pooled input. */
export function condRouteWeights(x: tf.Tensor4D, p: CondConvParams): tf.Tensor2D {
  const pooled = tf.mean(x, [1, 2]) as tf.Tensor2D;
  const logits = tf.add(tf.matMul(pooled, p.routeKernel), p.routeBias) as tf.Tensor2D;
  return condRoutings.get(p.routing)(logits, p.temperature);
}

/**
 * im2col patches [n, OH, OW, Cin*k*k] of `x`, channel-major (channel c's k*k taps together): a depthwise
 * convolution with one-hot filters (one output per tap), which measured faster on wasm than k*k strided slices
 * joined (forward 158 against 213 ms, with its gradient 435 against 3350 ms, batch 64 of 28x28x32).
 */
export function im2col(x: tf.Tensor4D, k: number, strides: number, padding: 'same' | 'valid'): tf.Tensor4D {
  return tf.tidy(() => {
    const c = x.shape[3];
    const taps = tf.reshape(tf.eye(k * k), [k, k, 1, k * k]);
    return tf.depthwiseConv2d(x, tf.tile(taps, [1, 1, c, 1]) as tf.Tensor4D, strides, padding);
  });
}

/**
 * The conditional convolution of a batch, the efficient way: each sample's kernel mixed from the experts by one
 * matmul ([n, E] by [E, Cin*k*k*Cout]), then one batched matmul of every sample's patches by its own kernel (at
 * batch 1, one plain convolution). Never E convolutions, never a loop over samples. `weights` are the mixing weights when already computed.
 */
export function condConv(x: tf.Tensor4D, p: CondConvParams, weights: tf.Tensor2D = condRouteWeights(x, p)): tf.Tensor4D {
  const n = x.shape[0];
  const [e, rows, cout] = p.kernel.shape;
  const mixed = tf.reshape(tf.matMul(weights, tf.reshape(p.kernel, [e, rows * cout])), [n, rows, cout]) as tf.Tensor3D;
  if (n === 1) {
    // One sample, one kernel: the plain convolution (XNNPACK's), which beats im2col and a product at batch 1.
    const cin = x.shape[3];
    const k = p.kernelSize;
    const hwio = tf.transpose(tf.reshape(mixed, [cin, k, k, cout]), [1, 2, 0, 3]) as tf.Tensor4D;
    let y1: tf.Tensor = tf.conv2d(x, hwio, p.strides, p.padding);
    if (p.bias) y1 = tf.add(y1, tf.reshape(tf.matMul(weights, p.bias), [cout]));
    if (p.shift) y1 = tf.add(y1, p.shift);
    return y1 as tf.Tensor4D;
  }
  const patches = im2col(x, p.kernelSize, p.strides, p.padding);
  const [, oh, ow] = patches.shape;
  let y = tf.matMul(tf.reshape(patches, [n, oh * ow, rows]) as tf.Tensor3D, mixed) as tf.Tensor;
  if (p.bias) y = tf.add(y, tf.reshape(tf.matMul(weights, p.bias), [n, 1, cout]));
  if (p.shift) y = tf.add(y, p.shift);
  return tf.reshape(y, [n, oh, ow, cout]);
}
