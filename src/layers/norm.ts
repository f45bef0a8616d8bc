import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { take } from './select.js';
import { channelAffine, channelMean } from './channel.js';
import type { ChannelSel, LayerCost, Plan, RunContext, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

export interface BatchNormArgs {
  /** Rows of running statistics, one per operating level (`plan.level` picks the row). */
  levels: number;
  /** Added to the variance (default 1e-5). */
  epsilon?: number;
}

/**
 * BatchNorm with statistics per operating level (switchable BatchNorm, slimmable networks): the mean and
 * variance of a channel differ with the width that produced them, so each level keeps its own row,
 * filled by calibration after training. The affine scale and offset are shared and sliced like weights.
 */
export class BatchNorm extends Layer<BatchNormArgs> {
  readonly className = 'BatchNorm';
  private gamma!: tf.Variable;
  private beta!: tf.Variable;
  private mean!: tf.Variable;
  private variance!: tf.Variable;

  protected doBuild(inShape: Shape): Shape {
    const c = inShape[inShape.length - 1];
    const { levels } = this.args;
    if (!Number.isInteger(levels) || levels < 1) throw new DynnError(`${this.name}: levels must be a positive integer`);
    this.gamma = this.addWeight('gamma', tf.ones([c]));
    this.beta = this.addWeight('beta', tf.zeros([c]));
    this.mean = this.addWeight('running_mean', tf.zeros([levels, c]), false);
    this.variance = this.addWeight('running_var', tf.ones([levels, c]), false);
    return inShape;
  }

  /** The statistics row of a level. */
  row(level: number): number {
    return Math.min(Math.max(0, level), this.args.levels - 1);
  }

  outSel(sel: ChannelSel): ChannelSel {
    return sel;
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const eps = this.args.epsilon ?? 1e-5;
    const gamma = take(this.gamma, 0, sel) as tf.Tensor1D;
    const beta = take(this.beta, 0, sel) as tf.Tensor1D;
    if (ctx.moments) {
      const { y, mean, variance } = batchNormMoments(x, gamma, beta, eps);
      const n = x.size / sel.count;
      ctx.moments.add(this.name, this.row(ctx.plan.level), sel, n, mean, variance);
      return { y, sel };
    }
    if (ctx.training) return { y: batchNormTrain(x, gamma, beta, eps), sel };
    const { scale, shift } = this.affine(sel, ctx.plan.level);
    return { y: channelAffine(x, scale, shift), sel };
  }

  /** Inference at a level is an affine map per channel: scale = gamma / sqrt(var + eps), shift = beta - mean * scale. */
  private affine(sel: ChannelSel, level: number): { scale: tf.Tensor1D; shift: tf.Tensor1D } {
    const eps = this.args.epsilon ?? 1e-5;
    const c = this.inShape[this.inShape.length - 1];
    const r = this.row(level);
    const mean = take(tf.reshape(tf.slice(this.mean, [r, 0], [1, c]), [c]), 0, sel);
    const variance = take(tf.reshape(tf.slice(this.variance, [r, 0], [1, c]), [c]), 0, sel);
    const scale = tf.mul(take(this.gamma, 0, sel), tf.rsqrt(tf.add(variance, eps))) as tf.Tensor1D;
    return { scale, shift: tf.sub(take(this.beta, 0, sel), tf.mul(mean, scale)) as tf.Tensor1D };
  }

  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    return [{ op: 'affine', name: this.name, ...this.affine(sel, plan.level) }];
  }

  /** Replaces the statistics of one level for the channels marked in `observed`. */
  writeStats(level: number, mean: Float32Array, variance: Float32Array, observed: Uint8Array): void {
    const r = this.row(level);
    const c = this.inShape[this.inShape.length - 1];
    for (const [v, values] of [[this.mean, mean], [this.variance, variance]] as const) {
      const all = v.dataSync().slice() as Float32Array;
      for (let i = 0; i < c; i++) if (observed[i]) all[r * c + i] = values[i];
      tf.tidy(() => v.assign(tf.tensor2d(all, [this.args.levels, c])));
    }
  }

  /** The statistics of one level (full width). */
  readStats(level: number): { mean: Float32Array; variance: Float32Array } {
    const r = this.row(level);
    const c = this.inShape[this.inShape.length - 1];
    const m = this.mean.dataSync() as Float32Array;
    const v = this.variance.dataSync() as Float32Array;
    return { mean: m.slice(r * c, (r + 1) * c), variance: v.slice(r * c, (r + 1) * c) };
  }

  cost(sel: ChannelSel): LayerCost[] {
    // Folded into the preceding layer at inference: no MACs; its scale and offset are active parameters.
    return [{ name: this.name, kind: this.className, macs: 0, params: 2 * sel.count }];
  }
}

layerClasses.register('BatchNorm', BatchNorm);

/**
 * Batch mean, variance and reciprocal standard deviation per channel, as plain arrays: the per-channel
 * arithmetic of a BatchNorm is a few dozen numbers, and as TF.js ops on [C] vectors it was a dozen kernel
 * calls per layer each way (about 20 us apiece), which a gated block pays again for every part of its batch.
 */
function batchStats(x: tf.Tensor, eps: number): { mean: Float32Array; variance: Float32Array; rstd: Float32Array } {
  const [m, m2] = tf.tidy(() => [channelMean(x).dataSync() as Float32Array, channelMean(tf.square(x)).dataSync() as Float32Array]);
  // Rounded as float32 arithmetic rounds: one sample gives exactly 0, as before.
  const variance = m.map((v, i) => Math.max(0, m2[i] - Math.fround(v * v)));
  return { mean: m, variance, rstd: variance.map((v) => 1 / Math.sqrt(v + eps)) };
}

/** y = x * a + b per channel with a = gamma * rstd, b = beta - mean * a, from the batch statistics. */
function normalize(x: tf.Tensor, gamma: Float32Array, beta: Float32Array, mean: Float32Array, rstd: Float32Array): tf.Tensor {
  const a = gamma.map((g, i) => g * rstd[i]);
  return tf.tidy(() => channelAffine(x, tf.tensor1d(a), tf.tensor1d(beta.map((b, i) => b - mean[i] * a[i]))));
}

/**
 * Training-mode BatchNorm (batch statistics over every axis but the last) with a closed-form gradient:
 * y = x * a + b with a = gamma * rstd, b = beta - mean * a. TF.js's own moments + batchNorm gradients
 * tile and reduce over leading axes, which cost more than the convolutions on wasm.
 */
export function batchNormTrain(x: tf.Tensor, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xi, g, b] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const { mean, rstd } = batchStats(xi, eps);
    const gm = g.dataSync() as Float32Array;
    save([xi]);
    return {
      value: normalize(xi, gm, b.dataSync() as Float32Array, mean, rstd),
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => {
        const C = gm.length;
        const m = xs.size / C;
        // Per-channel sums as means times M: sum(dy), and sum(dy * xhat) = rstd * (sum(dy * x) - mean * sum(dy)).
        const [mdy, mdyxRaw] = tf.tidy(() => [channelMean(dy).dataSync(), channelMean(tf.mul(dy, xs)).dataSync()]);
        // dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) = A * dy + B * x + K per channel.
        const mdyx = new Float32Array(C);
        const [A, B, K] = [new Float32Array(C), new Float32Array(C), new Float32Array(C)];
        for (let i = 0; i < C; i++) {
          mdyx[i] = rstd[i] * Math.fround(mdyxRaw[i] - Math.fround(mean[i] * mdy[i]));
          A[i] = gm[i] * rstd[i];
          B[i] = -A[i] * rstd[i] * mdyx[i];
          K[i] = -A[i] * mdy[i] - B[i] * mean[i];
        }
        const dx = tf.add(channelAffine(dy, tf.tensor1d(A)), channelAffine(xs, tf.tensor1d(B), tf.tensor1d(K)));
        return [dx, tf.tensor1d(mdyx.map((v) => v * m)), tf.tensor1d(Float32Array.from(mdy, (v) => v * m))];
      },
    };
  });
  return f(x, gamma, beta);
}

/** BatchNorm with batch statistics and no gradient, returning the statistics too (calibration). */
export function batchNormMoments(x: tf.Tensor, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): { y: tf.Tensor; mean: Float32Array; variance: Float32Array } {
  const { mean, variance, rstd } = batchStats(x, eps);
  return { y: normalize(x, gamma.dataSync() as Float32Array, beta.dataSync() as Float32Array, mean, rstd), mean, variance };
}
