import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import type { NamedArray } from '../models/network.js';

/** The optimizers training offers. */
export type OptimizerName = 'adam' | 'sgd';

export const OPTIMIZERS: readonly OptimizerName[] = ['adam', 'sgd'];

export function checkOptimizer(name: string): asserts name is OptimizerName {
  if (!OPTIMIZERS.includes(name as OptimizerName)) {
    throw new DynnError(`unknown optimizer "${name}"; expected one of ${OPTIMIZERS.join(', ')}`);
  }
}

/**
 * A TF.js optimizer with a settable learning rate and state that survives a checkpoint. TF.js matches
 * optimizer slots to gradients by position, so every step passes all trainable weights in one fixed order.
 */
export class Optimizer {
  private readonly opt: tf.Optimizer;

  constructor(
    readonly kind: OptimizerName,
    private lr: number,
    readonly momentum = 0.9,
  ) {
    this.opt = kind === 'adam' ? tf.train.adam(lr) : tf.train.momentum(lr, momentum);
  }

  setLearningRate(lr: number): void {
    this.lr = lr;
    if (this.kind === 'sgd') (this.opt as tf.MomentumOptimizer).setLearningRate(lr);
    // AdamOptimizer reads its (protected) learningRate field at every step and has no setter.
    else (this.opt as unknown as { learningRate: number }).learningRate = lr;
  }

  get learningRate(): number {
    return this.lr;
  }

  /** Applies one gradient per variable, in the fixed order of `variables`. */
  apply(variables: tf.Variable[], grads: Float32Array, offsets: number[]): void {
    tf.tidy(() => {
      this.opt.applyGradients(
        variables.map((v, i) => ({ name: v.name, tensor: tf.tensor(grads.subarray(offsets[i], offsets[i] + v.size), v.shape) })),
      );
    });
  }

  /** Optimizer slots as named arrays (positional names: slot order is what TF.js matches on). */
  async getState(): Promise<NamedArray[]> {
    const weights = await this.opt.getWeights();
    return weights.map((w, i) => ({ name: `slot.${i}`, shape: w.tensor.shape.slice(), data: Float32Array.from(w.tensor.dataSync()) }));
  }

  async setState(arrays: NamedArray[]): Promise<void> {
    const named = arrays.map((a) => ({ name: a.name, tensor: tf.tensor(a.data, a.shape) }));
    await this.opt.setWeights(named);
    tf.dispose(named.map((n) => n.tensor));
  }

  dispose(): void {
    this.opt.dispose();
  }
}
