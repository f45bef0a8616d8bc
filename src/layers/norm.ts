import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { take } from './select.js';
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
      ctx.moments.add(this.name, this.row(ctx.plan.level), sel, n, mean.dataSync() as Float32Array, variance.dataSync() as Float32Array);
      return { y, sel };
    }
    if (ctx.training) return { y: batchNormTrain(x, gamma, beta, eps), sel };
    const c = this.inShape[this.inShape.length - 1];
    const r = this.row(ctx.plan.level);
    const mean = take(tf.reshape(tf.slice(this.mean, [r, 0], [1, c]), [c]), 0, sel) as tf.Tensor1D;
    const variance = take(tf.reshape(tf.slice(this.variance, [r, 0], [1, c]), [c]), 0, sel) as tf.Tensor1D;
    return { y: tf.batchNorm(x, mean, variance, beta, gamma, eps), sel };
  }

  /** Inference at a plan is an affine map per channel: scale = gamma / sqrt(var + eps), shift = beta - mean * scale. */
  freeze(sel: ChannelSel, plan: Plan): FrozenOp[] {
    const eps = this.args.epsilon ?? 1e-5;
    const c = this.inShape[this.inShape.length - 1];
    const r = this.row(plan.level);
    const mean = take(tf.reshape(tf.slice(this.mean, [r, 0], [1, c]), [c]), 0, sel);
    const variance = take(tf.reshape(tf.slice(this.variance, [r, 0], [1, c]), [c]), 0, sel);
    const scale = tf.mul(take(this.gamma, 0, sel), tf.rsqrt(tf.add(variance, eps))) as tf.Tensor1D;
    const shift = tf.sub(take(this.beta, 0, sel), tf.mul(mean, scale)) as tf.Tensor1D;
    return [{ op: 'affine', name: this.name, scale, shift }];
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

/** Per-channel mean and (biased) variance of [M, C] rows; sums are [1, M] x [M, C] matmuls (fast on wasm). */
function rowMoments(x2: tf.Tensor2D): { mean: tf.Tensor2D; variance: tf.Tensor2D; centered: tf.Tensor2D } {
  const m = x2.shape[0];
  const ones = tf.ones([1, m]) as tf.Tensor2D;
  const mean = tf.div(tf.matMul(ones, x2), m) as tf.Tensor2D;
  const centered = tf.sub(x2, mean) as tf.Tensor2D;
  const variance = tf.div(tf.matMul(ones, tf.square(centered) as tf.Tensor2D), m) as tf.Tensor2D;
  return { mean, variance, centered };
}

/**
 * Training-mode BatchNorm (batch statistics over all axes but the last) with a closed-form gradient.
 * TF.js's generic moments + batchNorm gradients tile and reduce over leading axes, which costs more than
 * the convolutions on the wasm backend; here every per-channel sum is a matmul with a ones row.
 */
export function batchNormTrain(x: tf.Tensor, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor {
  const c = x.shape[x.rank - 1];
  const m = x.size / c;
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xi, g, b] = args as tf.Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    const { variance, centered } = rowMoments(tf.reshape(xi, [m, c]) as tf.Tensor2D);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(centered, rstd) as tf.Tensor2D;
    save([xhat, rstd, g]);
    return {
      value: tf.reshape(tf.add(tf.mul(xhat, g), b), xi.shape),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, rs, gm] = saved as [tf.Tensor2D, tf.Tensor, tf.Tensor];
        const ones = tf.ones([1, m]) as tf.Tensor2D;
        const dy2 = tf.reshape(dy, [m, c]) as tf.Tensor2D;
        const dbeta = tf.matMul(ones, dy2);
        const dgamma = tf.matMul(ones, tf.mul(dy2, xh) as tf.Tensor2D);
        // dx = gamma * rstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
        const inner = tf.sub(tf.sub(tf.mul(dy2, m), dbeta), tf.mul(xh, dgamma));
        const dx = tf.mul(inner, tf.div(tf.mul(gm, rs), m));
        return [tf.reshape(dx, xi.shape), tf.reshape(dgamma, [c]), tf.reshape(dbeta, [c])];
      },
    };
  });
  return f(x, gamma, beta);
}

/** BatchNorm with batch statistics and no gradient, returning the statistics too (calibration). */
export function batchNormMoments(x: tf.Tensor, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number) {
  const c = x.shape[x.rank - 1];
  const { mean, variance, centered } = rowMoments(tf.reshape(x, [x.size / c, c]) as tf.Tensor2D);
  const y = tf.reshape(tf.add(tf.mul(tf.mul(centered, tf.rsqrt(tf.add(variance, eps))), gamma), beta), x.shape);
  return { y, mean: tf.reshape(mean, [c]) as tf.Tensor1D, variance: tf.reshape(variance, [c]) as tf.Tensor1D };
}
