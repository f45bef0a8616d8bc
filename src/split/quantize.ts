import * as tf from '@tensorflow/tfjs-core';
import { MIN_STEP, maxCode } from './bits.js';

// The bit-width rules live apart from TF.js, so the browser's split head (wire.ts, core.ts) can load them.
export { BITS_RANGE, MIN_STEP, checkBits, maxCode } from './bits.js';

/**
 * Per-sample, per-tensor min/max quantization of a [batch, H, W, C] tensor: one (min, step) pair per sample,
 * codes round((x - min) / step) in 0..2^bits - 1. Per sample because a wire frame carries one sample; per
 * tensor rather than per channel because its header is 8 bytes whatever the channel count, where per-channel
 * scales would cost 8 bytes a channel, as much as 64 one-bit 1x1 codes and more than a 2-bit 7x7 channel.
 * Returns the codes (as floats) and the [batch] min and step. Call inside `tf.tidy`.
 */
export function quantize(x: tf.Tensor4D, bits: number): { codes: tf.Tensor4D; min: tf.Tensor1D; step: tf.Tensor1D } {
  const levels = maxCode(bits);
  const lo = tf.min(x, [1, 2, 3], true);
  const hi = tf.max(x, [1, 2, 3], true);
  const step = tf.maximum(tf.div(tf.sub(hi, lo), levels), MIN_STEP);
  const codes = tf.clipByValue(tf.round(tf.div(tf.sub(x, lo), step)), 0, levels) as tf.Tensor4D;
  return { codes, min: tf.reshape(lo, [-1]) as tf.Tensor1D, step: tf.reshape(step, [-1]) as tf.Tensor1D };
}

/** Codes back to values: min + code * step, per sample. Call inside `tf.tidy`. */
export function dequantize(codes: tf.Tensor4D, min: tf.Tensor1D, step: tf.Tensor1D): tf.Tensor4D {
  const shape = [-1, 1, 1, 1];
  return tf.add(tf.mul(codes, tf.reshape(step, shape)), tf.reshape(min, shape)) as tf.Tensor4D;
}

/**
 * Quantize then dequantize with a straight-through gradient (the rounding's gradient taken as the identity,
 * as in BottleFit and QAT): what the tail sees in training. Call inside `tf.tidy`.
 */
export function fakeQuantize(x: tf.Tensor4D, bits: number): tf.Tensor4D {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor4D;
    const q = quantize(input, bits);
    return { value: dequantize(q.codes, q.min, q.step), gradFunc: (dy: tf.Tensor) => [dy] };
  });
  return f(x) as tf.Tensor4D;
}
