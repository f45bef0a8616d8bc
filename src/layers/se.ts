import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { take } from './select.js';
import type { ChannelSel, LayerCost, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

export interface SqueezeExciteArgs {
  /** Reduction ratio r: the hidden layer has max(1, floor(C / r)) units (default 4). */
  ratio?: number;
}

/**
 * Squeeze-and-excitation (Hu et al. 2018): global average pool, FC to C/r, ReLU, FC to C, sigmoid, and the
 * input scaled per channel. The FCs are sliced to the channels the input holds (rows of the reduce, columns
 * of the expand); the hidden layer always runs in full.
 */
export class SqueezeExcite extends Layer<SqueezeExciteArgs> {
  readonly className = 'SqueezeExcite';
  private w1!: tf.Variable;
  private b1!: tf.Variable;
  private w2!: tf.Variable;
  private b2!: tf.Variable;

  /** Units of the hidden layer. */
  get hidden(): number {
    return Math.max(1, Math.floor(this.inShape[2] / (this.args.ratio ?? 4)));
  }

  protected doBuild(inShape: Shape): Shape {
    const r = this.args.ratio ?? 4;
    if (inShape.length !== 3) throw new DynnError(`${this.name}: SqueezeExcite needs an [H, W, C] input, got [${inShape}]`);
    if (!(r >= 1)) throw new DynnError(`${this.name}: the reduction ratio must be >= 1, got ${r}`);
    const c = inShape[2];
    const h = Math.max(1, Math.floor(c / r));
    this.w1 = this.addWeight('reduce.kernel', this.initKernel('reduce.kernel', [c, h], c));
    this.b1 = this.addWeight('reduce.bias', tf.zeros([h]));
    this.w2 = this.addWeight('expand.kernel', this.initKernel('expand.kernel', [h, c], h));
    this.b2 = this.addWeight('expand.bias', tf.zeros([c]));
    return inShape;
  }

  outSel(sel: ChannelSel): ChannelSel {
    return sel;
  }

  private sliced(sel: ChannelSel) {
    return {
      w1: take(this.w1, 0, sel) as tf.Tensor2D,
      w2: take(this.w2, 1, sel) as tf.Tensor2D,
      b2: take(this.b2, 0, sel) as tf.Tensor1D,
    };
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    const { w1, w2, b2 } = this.sliced(sel);
    const s = tf.mean(x, [1, 2]) as tf.Tensor2D;
    const h = tf.relu(tf.add(tf.matMul(s, w1), this.b1)) as tf.Tensor2D;
    const gate = tf.sigmoid(tf.add(tf.matMul(h, w2), b2));
    return { y: tf.mul(x, tf.reshape(gate, [x.shape[0], 1, 1, sel.count])), sel };
  }

  freeze(sel: ChannelSel): FrozenOp[] {
    const { w1, w2, b2 } = this.sliced(sel);
    return [
      {
        op: 'scale',
        branch: [
          { op: 'gap' },
          { op: 'dense', name: `${this.name}.reduce`, kernel: tf.clone(w1), bias: tf.clone(this.b1) as tf.Tensor1D, relu: true },
          { op: 'dense', name: `${this.name}.expand`, kernel: tf.clone(w2), bias: tf.clone(b2), relu: false },
        ],
      },
    ];
  }

  /** The two FCs plus one multiply per scaled element (the pooling's additions are not counted). */
  cost(sel: ChannelSel): LayerCost[] {
    const [h, w] = this.inShape;
    const hid = this.hidden;
    return [{ name: this.name, kind: this.className, macs: 2 * sel.count * hid + h * w * sel.count, params: 2 * sel.count * hid + hid + sel.count }];
  }
}

/** A squeeze-and-excitation layer. */
export function se(name: string, args: SqueezeExciteArgs = {}): SqueezeExcite {
  return new SqueezeExcite(name, args);
}

layerClasses.register('SqueezeExcite', SqueezeExcite);
