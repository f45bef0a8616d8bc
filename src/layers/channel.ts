import * as tf from '@tensorflow/tfjs-core';

/**
 * Per-channel ops on activations whose last axis is the channel (NHWC), in the forms wasm runs fast: its
 * broadcasting multiply and add are not vectorized (1.9 ms for a 128x28x28x16 tensor times a vector, against
 * 0.35 ms for two tensors of that shape), and its reductions over leading axes transpose the whole tensor.
 */

/** From this many elements a per-channel map runs as a depthwise convolution (its fixed cost loses below). */
const AS_CONV_MIN = 1 << 16;

/**
 * x * scale + shift per channel (no shift: x * scale). On wasm a large one runs as a 1x1 depthwise convolution
 * with a bias: one XNNPACK pass, 3-6x faster than the broadcasting multiply and add and than `tf.batchNorm`, with
 * the same result. No gradient of its own beyond TF.js's (callers that train wrap it in a custom gradient).
 * wasm keeps an XNNPACK operator per filter and bias tensor until they are disposed: pass a scale and a shift
 * that both end with the call (computed for it) or both live on (a frozen subnet's), never a lasting one with
 * a fresh one, or every call leaves an operator behind.
 */
export function channelAffine(x: tf.Tensor, scale: tf.Tensor1D, shift?: tf.Tensor1D): tf.Tensor {
  return tf.tidy(() => {
    const c = x.shape[x.rank - 1];
    if (x.size < AS_CONV_MIN || tf.getBackend() !== 'wasm') return shift ? tf.add(tf.mul(x, scale), shift) : tf.mul(x, scale);
    const x4 = (x.rank === 4 ? x : tf.reshape(x, [-1, 1, 1, c])) as tf.Tensor4D;
    const y = tf.fused.depthwiseConv2d({ x: x4, filter: tf.reshape(scale, [1, 1, c, 1]) as tf.Tensor4D, strides: 1, pad: 'valid', bias: shift });
    return x.rank === 4 ? y : tf.reshape(y, x.shape);
  });
}

/**
 * Per-channel mean over every axis but the last. For NHWC activations it is a global average pool
 * (one SIMD pass on wasm) then a mean over the batch; reducing the leading axes directly makes wasm
 * transpose the whole tensor first, and a ones-row matmul makes it pack the whole tensor.
 */
export function channelMean(t: tf.Tensor): tf.Tensor1D {
  if (t.rank === 4) {
    const [, h, w] = t.shape;
    return tf.reshape(tf.mean(tf.avgPool(t as tf.Tensor4D, [h, w], [h, w], 'valid'), [0, 1, 2]), [t.shape[3] as number]) as tf.Tensor1D;
  }
  const c = t.shape[t.rank - 1];
  return tf.mean(tf.reshape(t, [-1, c]), 0) as tf.Tensor1D;
}

/**
 * x + bias per channel, with its gradient: dy for x, dy's channel sums for the bias. An NHWC tensor on wasm
 * adds through `channelAffine` and sums through `channelMean` (the broadcasting add's gradient is a `Sum` over
 * the leading axes, which wasm transposes first: 0.28 ms for 64x4x4x16); elsewhere it is TF.js's own add.
 */
export function addChannelBias(x: tf.Tensor, bias: tf.Tensor1D): tf.Tensor {
  if (x.rank !== 4 || tf.getBackend() !== 'wasm') return tf.add(x, bias);
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xi, b] = args as tf.Tensor[];
    // The layer's bias lives on: a copy of it (no kernel) ends with the call, as the ones do (see channelAffine).
    const value = xi.size < AS_CONV_MIN ? tf.add(xi, b) : tf.tidy(() => channelAffine(xi, tf.onesLike(b) as tf.Tensor1D, tf.tensor1d(b.dataSync() as Float32Array)));
    return { value, gradFunc: (dy: tf.Tensor) => [dy, tf.mul(channelMean(dy), dy.size / dy.shape[3]!)] };
  });
  return f(x, bias);
}

/**
 * The straight-through factor of a nested decision's first `k` groups of `width` channels, for rows whose
 * probabilities are `q` ([rows, >= k], the decision's surrogate): 1 in value, so the executed computation is
 * the hard one, with q's gradient (ACS: the gate's probability as the surrogate of its binary decision).
 */
export interface StraightThrough {
  q: tf.Tensor2D;
  k: number;
  width: number;
}

/** What multiplies a gated unit's inner activations: a tensor ([rows, 1, 1, C]: a mask, per-channel factors) or a straight-through factor. */
export type ChannelFactor = tf.Tensor | StraightThrough;

/**
 * `h` ([rows, H, W, C]) times `factor`. A straight-through factor is ones in value: `h` itself going forward,
 * and backward q's gradient, per row and group the sum of dy * h (a same-shape product and an average pool),
 * where multiplying by the factor as a tensor cost a broadcasting product each way (wasm's is not vectorized:
 * 1 ms for 8x28x28x6) and a Sum over the leading axes.
 */
export function scaleChannels(h: tf.Tensor, factor?: ChannelFactor): tf.Tensor {
  if (factor == null) return h;
  if (factor instanceof tf.Tensor) return tf.mul(h, factor);
  const { q, k, width } = factor;
  const [rows, height, w, c] = h.shape;
  if (h.rank !== 4 || c !== k * width) throw new Error(`scaleChannels: ${k} groups of ${width} channels for activations of shape [${h.shape}]`);
  if (q.shape[0] !== rows || q.shape[1] < k) throw new Error(`scaleChannels: probabilities of shape [${q.shape}] for ${rows} rows and ${k} groups`);
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [hi] = args as tf.Tensor[];
    (args[2] as tf.GradSaveFunc)([hi]);
    return {
      value: tf.clone(hi),
      gradFunc: (dy: tf.Tensor, [hs]: tf.Tensor[]) => {
        const sums = tf.mul(tf.avgPool(tf.mul(dy, hs) as tf.Tensor4D, [height, w], [height, w], 'valid'), height * w);
        return [dy, tf.sum(tf.reshape(sums, [rows, k, width]), 2)];
      },
    };
  });
  return f(h, tf.slice(q, [0, 0], [rows, k]));
}
