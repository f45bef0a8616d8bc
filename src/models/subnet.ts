import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import type { Plan } from '../layers/types.js';
import { condConv, type CondConvParams } from '../layers/condconv-ops.js';
import { channelAffine } from '../layers/channel.js';

/** One operation of a frozen sub-network, with its weights already sliced to the plan. */
export type FrozenOp =
  | { op: 'conv'; name: string; kernel: tf.Tensor4D; bias: tf.Tensor1D | null; strides: number; padding: 'same' | 'valid'; relu: boolean }
  | { op: 'dense'; name: string; kernel: tf.Tensor2D; bias: tf.Tensor1D | null; relu: boolean }
  | { op: 'affine'; name: string; scale: tf.Tensor1D; shift: tf.Tensor1D }
  | { op: 'relu' }
  | { op: 'maxpool'; size: number }
  | { op: 'gap' }
  | { op: 'flatten' }
  | { op: 'groupconv'; name: string; kernels: tf.Tensor4D[]; width: number }
  | { op: 'residual'; main: FrozenOp[]; shortcut: FrozenOp[] }
  /** Dense connectivity: the branch's output appended to its input along the channels. */
  | { op: 'concat'; branch: FrozenOp[] }
  | { op: 'avgpool'; size: number }
  /** Channel attention (squeeze-and-excitation): the input times sigmoid(branch(input)), per sample and channel. */
  | { op: 'scale'; branch: FrozenOp[] }
  /** Bilinear resizing to `height` x `width` (half-pixel centres): adaptive resolution's route. */
  | { op: 'resize'; height: number; width: number }
  /** A conditional convolution (CondConv): per sample, a kernel mixed from experts by a router on the pooled input. */
  | ({ op: 'condconv'; name: string; relu: boolean } & CondConvParams);

/** Every tensor an op list holds. */
export function opTensors(ops: FrozenOp[]): tf.Tensor[] {
  return ops.flatMap((o): tf.Tensor[] => {
    switch (o.op) {
      case 'conv':
      case 'dense':
        return o.bias ? [o.kernel, o.bias] : [o.kernel];
      case 'affine':
        return [o.scale, o.shift];
      case 'groupconv':
        return o.kernels;
      case 'condconv':
        return [o.kernel, o.routeKernel, o.routeBias, ...([o.bias, o.shift, o.temperature] as (tf.Tensor | null | undefined)[]).filter((t): t is tf.Tensor => t != null)];
      case 'residual':
        return [...opTensors(o.main), ...opTensors(o.shortcut)];
      case 'concat':
      case 'scale':
        return opTensors(o.branch);
      default:
        return [];
    }
  });
}

/**
 * Folds a BatchNorm (`affine`) into the convolution or dense layer before it and a ReLU into the op before
 * it, so inference runs one fused op per layer. Call inside `tf.tidy`.
 */
export function fuseOps(ops: FrozenOp[]): FrozenOp[] {
  const out: FrozenOp[] = [];
  for (const o of ops) {
    const prev = out[out.length - 1];
    if (o.op === 'residual') {
      out.push({ op: 'residual', main: fuseOps(o.main), shortcut: fuseOps(o.shortcut) });
    } else if (o.op === 'concat' || o.op === 'scale') {
      out.push({ ...o, branch: fuseOps(o.branch) });
    } else if (o.op === 'affine' && prev && (prev.op === 'conv' || prev.op === 'dense') && !prev.relu) {
      const kernel = tf.mul(prev.kernel, o.scale);
      const bias = prev.bias ? tf.add(tf.mul(prev.bias, o.scale), o.shift) : o.shift;
      out[out.length - 1] = prev.op === 'conv'
        ? { ...prev, kernel: kernel as tf.Tensor4D, bias: bias as tf.Tensor1D }
        : { ...prev, kernel: kernel as tf.Tensor2D, bias: bias as tf.Tensor1D };
    } else if (o.op === 'affine' && prev && prev.op === 'condconv' && !prev.relu) {
      // BatchNorm after a mixture: every expert's output channels scaled; the shift is added after the mixing
      // (sigmoid weights need not sum to 1, so it cannot go into the experts' biases).
      out[out.length - 1] = { ...prev, kernel: tf.mul(prev.kernel, o.scale) as tf.Tensor3D, bias: prev.bias ? (tf.mul(prev.bias, o.scale) as tf.Tensor2D) : null, shift: prev.shift ? (tf.add(tf.mul(prev.shift, o.scale), o.shift) as tf.Tensor1D) : o.shift };
    } else if (o.op === 'relu' && prev && (prev.op === 'conv' || prev.op === 'dense' || prev.op === 'condconv') && !prev.relu) {
      out[out.length - 1] = { ...prev, relu: true };
    } else {
      out.push(o);
    }
  }
  return out;
}

/** Runs an op list. Call inside `tf.tidy`. */
export function runOps(ops: FrozenOp[], x: tf.Tensor): tf.Tensor {
  let y = x;
  for (const o of ops) {
    switch (o.op) {
      case 'conv':
        y = tf.fused.conv2d({
          x: y as tf.Tensor4D,
          filter: o.kernel,
          strides: o.strides,
          pad: o.padding,
          bias: o.bias ?? undefined,
          activation: o.relu ? 'relu' : 'linear',
        });
        break;
      case 'dense':
        y = tf.matMul(y as tf.Tensor2D, o.kernel);
        if (o.bias) y = tf.add(y, o.bias);
        if (o.relu) y = tf.relu(y);
        break;
      case 'affine':
        y = channelAffine(y, o.scale, o.shift);
        break;
      case 'relu':
        y = tf.relu(y);
        break;
      case 'maxpool':
        y = tf.maxPool(y as tf.Tensor4D, o.size, o.size, 'valid');
        break;
      case 'gap':
        y = tf.mean(y, [1, 2]);
        break;
      case 'flatten':
        y = tf.reshape(y.rank === 4 ? tf.transpose(y, [0, 3, 1, 2]) : y, [y.shape[0], -1]);
        break;
      case 'groupconv': {
        const [b, h, w] = y.shape;
        const input = y;
        const parts = o.kernels.map((k, i) => tf.conv2d(tf.slice(input, [0, 0, 0, i * o.width], [b, h, w, o.width]) as tf.Tensor4D, k, 1, 'same'));
        y = parts.length === 1 ? parts[0] : tf.concat(parts, 3);
        break;
      }
      case 'condconv':
        y = condConv(y as tf.Tensor4D, o);
        if (o.relu) y = tf.relu(y);
        break;
      case 'residual': {
        const main = runOps(o.main, y);
        const short = o.shortcut.length ? runOps(o.shortcut, y) : y;
        y = tf.relu(tf.add(main, short));
        break;
      }
      case 'concat':
        y = tf.concat([y, runOps(o.branch, y)], 3);
        break;
      case 'avgpool':
        y = tf.avgPool(y as tf.Tensor4D, o.size, o.size, 'valid');
        break;
      case 'resize':
        y = tf.image.resizeBilinear(y as tf.Tensor4D, [o.height, o.width], false, true);
        break;
      case 'scale': {
        const s = tf.sigmoid(runOps(o.branch, y));
        y = tf.mul(y, tf.reshape(s, [s.shape[0], 1, 1, -1]));
        break;
      }
    }
  }
  return y;
}

/**
 * A fixed-size copy of the sub-network one plan runs (once-for-all's "active subnet"): weights sliced once,
 * BatchNorm folded into the preceding convolution, bias and ReLU fused, so inference at that operating
 * point does no slicing and no normalization work per call. Holds its own tensors: `dispose` it.
 */
export class Subnet {
  private disposed = false;

  constructor(
    readonly plan: Plan,
    readonly inputShape: number[],
    /** The fused ops, in order. */
    readonly ops: FrozenOp[],
  ) {}

  /** Class scores for a batch, as a new tensor the caller disposes. */
  predict(x: tf.Tensor): tf.Tensor2D {
    if (this.disposed) throw new DynnError('this subnet was disposed');
    const want = this.inputShape;
    if (x.rank !== want.length + 1 || want.some((n, i) => x.shape[i + 1] !== n)) {
      throw new DynnError(`input shape [${x.shape}] does not match the model's [batch, ${want.join(', ')}]`);
    }
    return tf.tidy(() => runOps(this.ops, x) as tf.Tensor2D);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    tf.dispose(opTensors(this.ops));
  }
}
