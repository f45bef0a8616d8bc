import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { fullSel, take } from './select.js';
import type { ChannelSel, LayerCost, Plan, RunContext, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

/** Straight-through estimators of the binary gate g = [s >= 0]: the gradient passes unchanged, or only where |s| <= 1. */
export type GateEstimator = 'identity' | 'clipped';

export interface DGConv2DArgs {
  /** Output channels; must equal the input channels and be a power of two. */
  filters: number;
  /** Square kernel size (default 3). */
  kernelSize?: number;
  /** Stride (default 1). */
  strides?: number;
  /** Padding (default 'same'). */
  padding?: 'same' | 'valid';
  /** Straight-through gradient of the gates (default 'identity'). */
  estimator?: GateEstimator;
  /** Initial value of every gate parameter s_z (default 0: g = 1, a dense convolution). */
  gateInit?: number;
}

/** g = [s >= 0] forward; backward the straight-through gradient to s. */
export function binaryGate(s: tf.Tensor1D, estimator: GateEstimator = 'identity'): tf.Tensor1D {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const x = args[0] as tf.Tensor;
    const save = args[1] as tf.GradSaveFunc;
    save([x]);
    return {
      value: tf.cast(tf.greaterEqual(x, 0), 'float32'),
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => (estimator === 'clipped' ? tf.mul(dy, tf.cast(tf.lessEqual(tf.abs(xs), 1), 'float32')) : dy),
    };
  });
  return f(s) as tf.Tensor1D;
}

/**
 * The channel relation matrix U = M_1 (x) M_2 (x) ... (x) M_Z with M_z = g_z * ones(2, 2) + (1 - g_z) * I_2
 * (Zhang et al., groupable convolution, Eq. 4): U[i][j] = 1 exactly when every bit z in which i and j differ
 * has g_z = 1. Differentiable in g. Call inside `tf.tidy`.
 */
export function relationMatrix(g: tf.Tensor1D): tf.Tensor2D {
  const Z = g.shape[0];
  const eye = tf.eye(2);
  const ones = tf.ones([2, 2]);
  let u: tf.Tensor = tf.ones([1, 1]);
  for (let z = 0; z < Z; z++) {
    const gz = tf.slice(g, [z], [1]);
    const m = tf.add(tf.mul(gz, ones), tf.mul(tf.sub(1, gz), eye));
    const n = u.shape[0];
    u = tf.reshape(tf.mul(tf.reshape(u, [n, 1, n, 1]), tf.reshape(m, [1, 2, 1, 2])), [2 * n, 2 * n]);
  }
  return u as tf.Tensor2D;
}

/**
 * A dynamic group convolution (DGConv, Zhang et al. 2019, as used by ACS-DG): a k x k convolution whose
 * kernel is multiplied by a binary channel relation matrix U (C x C) built from Z = log2(C) learned binary
 * gates, so the network learns its own grouping (all gates 1: dense; all 0: depthwise). The gates are
 * binarized with a straight-through gradient to their real-valued parameters `<name>.gates`. The input
 * may hold a subset of channels (its kernel rows are sliced); the output is always full width.
 * `freeze` bakes U into a dense kernel: a block-diagonal U could run as a faster grouped convolution, which
 * this layer does not do.
 */
export class DGConv2D extends Layer<DGConv2DArgs> {
  readonly className = 'DGConv2D';
  private kernel!: tf.Variable;
  private gates!: tf.Variable;

  protected doBuild(inShape: Shape): Shape {
    const { filters, kernelSize: k = 3, strides = 1, padding = 'same', gateInit = 0 } = this.args;
    if (inShape.length !== 3) throw new DynnError(`${this.name}: DGConv2D needs an [H, W, C] input, got [${inShape}]`);
    const [h, w, c] = inShape;
    if (c !== filters) throw new DynnError(`${this.name}: DGConv2D needs as many input channels as filters (${filters}), got ${c}`);
    if (!Number.isInteger(c) || c < 2 || (c & (c - 1)) !== 0) {
      throw new DynnError(`${this.name}: DGConv2D needs a power-of-two channel count (>= 2), got ${c}`);
    }
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [k, k, c, c], k * k * c));
    this.gates = this.addWeight('gates', tf.fill([Math.log2(c)], gateInit));
    const out = (n: number) => (padding === 'same' ? Math.ceil(n / strides) : Math.floor((n - k) / strides) + 1);
    return [out(h), out(w), c];
  }

  /** The binary gates g_z as numbers. */
  gateValues(): number[] {
    return Array.from(this.gates.dataSync(), (s) => (s >= 0 ? 1 : 0));
  }

  /** U (C_out x C_in) from the current gates. Call inside `tf.tidy`. */
  relation(): tf.Tensor2D {
    return relationMatrix(binaryGate(this.gates as tf.Tensor1D, this.args.estimator));
  }

  /** The kernel times U (U is symmetric, so U's transpose [C_in, C_out] is U itself), rows sliced to `sel`. */
  private masked(sel: ChannelSel): tf.Tensor4D {
    return take(tf.mul(this.kernel, this.relation()), 2, sel) as tf.Tensor4D;
  }

  outSel(): ChannelSel {
    return fullSel(this.args.filters);
  }

  call(x: tf.Tensor, sel: ChannelSel, _ctx: RunContext) {
    const y = tf.conv2d(x as tf.Tensor4D, this.masked(sel), this.args.strides ?? 1, this.args.padding ?? 'same');
    return { y, sel: this.outSel() };
  }

  freeze(sel: ChannelSel, _plan: Plan): FrozenOp[] {
    return [
      { op: 'conv', name: this.name, kernel: this.masked(sel), bias: null, strides: this.args.strides ?? 1, padding: this.args.padding ?? 'same', relu: false },
    ];
  }

  /** Only the kernel entries U keeps: every column of U has 2^(gates on) ones, so nonzeros = active inputs x that. */
  cost(sel: ChannelSel): LayerCost[] {
    const k = this.args.kernelSize ?? 3;
    const [oh, ow] = this.outShape;
    const perInput = 2 ** this.gateValues().reduce((a, b) => a + b, 0);
    const params = k * k * sel.count * perInput;
    return [{ name: this.name, kind: this.className, macs: oh * ow * params, params: params + this.gates.size }];
  }
}

/** A dynamic group convolution. */
export function dgconv2d(name: string, args: DGConv2DArgs): DGConv2D {
  return new DGConv2D(name, args);
}

layerClasses.register('DGConv2D', DGConv2D);
