import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { flattenSel } from './select.js';
import type { ChannelSel, LayerCost, Shape } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

/** A layer that keeps the channel selection and has no MACs worth counting. */
abstract class Stateless<A extends object> extends Layer<A> {
  outSel(sel: ChannelSel): ChannelSel {
    return sel;
  }

  cost(): LayerCost[] {
    return [];
  }
}

/** max(x, 0). */
export class ReLU extends Stateless<Record<string, never>> {
  readonly className = 'ReLU';

  protected doBuild(inShape: Shape): Shape {
    return inShape;
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    return { y: tf.relu(x), sel };
  }

  freeze(): FrozenOp[] {
    return [{ op: 'relu' }];
  }
}

export interface MaxPoolArgs {
  /** Window and stride (default 2). */
  poolSize?: number;
}

/** Max pooling with a square window equal to its stride, 'valid' padding. */
export class MaxPool extends Stateless<MaxPoolArgs> {
  readonly className = 'MaxPool';

  protected doBuild(inShape: Shape): Shape {
    const p = this.args.poolSize ?? 2;
    if (inShape.length !== 3) throw new DynnError(`${this.name}: MaxPool needs an [H, W, C] input`);
    return [Math.floor(inShape[0] / p), Math.floor(inShape[1] / p), inShape[2]];
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    const p = this.args.poolSize ?? 2;
    return { y: tf.maxPool(x as tf.Tensor4D, p, p, 'valid'), sel };
  }

  freeze(): FrozenOp[] {
    return [{ op: 'maxpool', size: this.args.poolSize ?? 2 }];
  }
}

/** Mean over the spatial axes: [H, W, C] to [C]. */
export class GlobalAvgPool extends Stateless<Record<string, never>> {
  readonly className = 'GlobalAvgPool';

  protected doBuild(inShape: Shape): Shape {
    if (inShape.length !== 3) throw new DynnError(`${this.name}: GlobalAvgPool needs an [H, W, C] input`);
    return [inShape[2]];
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    return { y: tf.mean(x, [1, 2]), sel };
  }

  freeze(): FrozenOp[] {
    return [{ op: 'gap' }];
  }
}

/**
 * Flattens [H, W, C] in channel-major (NCHW) order, so the first c channels are the first c*H*W features:
 * a nested dense layer after it reads one contiguous block of rows, in TF.js and in the ONNX export alike.
 */
export class Flatten extends Layer<Record<string, never>> {
  readonly className = 'Flatten';

  protected doBuild(inShape: Shape): Shape {
    return [inShape.reduce((a, b) => a * b, 1)];
  }

  private hw(): number {
    return this.inShape.length === 3 ? this.inShape[0] * this.inShape[1] : 1;
  }

  outSel(sel: ChannelSel): ChannelSel {
    return flattenSel(sel, this.hw());
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    const y = x.rank === 4 ? tf.transpose(x, [0, 3, 1, 2]) : x;
    return { y: tf.reshape(y, [x.shape[0], -1]), sel: this.outSel(sel) };
  }

  freeze(): FrozenOp[] {
    return [{ op: 'flatten' }];
  }

  cost(): LayerCost[] {
    return [];
  }
}

layerClasses.register('ReLU', ReLU);
layerClasses.register('MaxPool', MaxPool);
layerClasses.register('GlobalAvgPool', GlobalAvgPool);
layerClasses.register('Flatten', Flatten);
