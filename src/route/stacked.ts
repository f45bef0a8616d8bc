import * as tf from '@tensorflow/tfjs-core';
import { Dense, ReLU } from '../layers/index.js';
import type { ChannelSel, Layer, Plan } from '../layers/index.js';

/** One step of a stacked expert chain: a dense layer of every expert (their kernels and biases), or a ReLU. */
export type StackedStep = { kind: 'dense'; kernels: tf.Variable[]; biases: tf.Variable[] | null; units: number } | { kind: 'relu' };

const weightOf = (l: Layer, suffix: string): tf.Variable | undefined => l.weights().find((w) => w.name === `${l.name}.${suffix}`)?.variable;

/**
 * A mixture's experts run as one batched call (GShard, Switch: the experts' weights stacked [E, in, out], the
 * rows gathered into [E, C, in] by `dispatchPadded`). Experts stack when they are alike: the same chain of
 * dense layers (same shapes) and ReLUs. Convolutional experts (their BatchNorms' batch statistics per expert,
 * convolutions that TF.js cannot group) keep one call per expert.
 */
export class StackedExperts {
  private cache: { ids: object[]; stacked: tf.Tensor[] } | null = null;

  private constructor(
    /** The chains' steps, in order. */
    readonly steps: StackedStep[],
    private readonly chains: readonly Layer[][],
  ) {}

  /** The experts stacked, or null when they are not alike (different layer classes or shapes, a layer that does not stack). */
  static of(chains: readonly Layer[][]): StackedExperts | null {
    if (chains.length === 0 || chains.some((c) => c.length !== chains[0].length || c.length === 0)) return null;
    const steps: StackedStep[] = [];
    for (let i = 0; i < chains[0].length; i++) {
      const col = chains.map((c) => c[i]);
      if (col.every((l) => l instanceof ReLU)) steps.push({ kind: 'relu' });
      else if (col.every((l) => l instanceof Dense)) {
        const kernels = col.map((l) => weightOf(l, 'kernel'));
        const biases = col.map((l) => weightOf(l, 'bias'));
        const shape = kernels[0]?.shape.join();
        if (kernels.some((k) => !k || k.shape.join() !== shape)) return null;
        if (biases.some((b) => !b !== !biases[0])) return null;
        steps.push({ kind: 'dense', kernels: kernels as tf.Variable[], biases: biases[0] ? (biases as tf.Variable[]) : null, units: kernels[0]!.shape[1] as number });
      } else return null;
    }
    return new StackedExperts(steps, chains);
  }

  /** Whether the stack computes what the chains do at `plan` on input channels `sel`: every channel in and out (a throttled width does not stack). */
  fits(sel: ChannelSel, plan: Plan): boolean {
    if (sel.index !== null || sel.count !== sel.full) return false;
    return this.chains.every((chain) => {
      let s = sel;
      for (const l of chain) {
        s = l.outSel(s, plan);
        if (s.index !== null || s.count !== s.full) return false;
      }
      return true;
    });
  }

  /**
   * Every expert on its block of `part` ([E * C, in], block e for expert e): one batched product per dense
   * layer. `training`: the weights are stacked in the pass (gradients reach each expert's variables); else the
   * stack is kept until a variable changes. Call inside `tf.tidy`.
   */
  run(part: tf.Tensor, C: number, training: boolean): tf.Tensor {
    const E = this.chains.length;
    const w = this.weights(training);
    let h: tf.Tensor = tf.reshape(part, [E, C, part.shape[1]!]);
    let j = 0;
    for (const s of this.steps) {
      if (s.kind === 'relu') h = tf.relu(h);
      else {
        h = tf.matMul(h as tf.Tensor3D, w[j++] as tf.Tensor3D);
        if (s.biases) h = tf.add(h, w[j++]);
      }
    }
    return tf.reshape(h, [E * C, h.shape[2]!]);
  }

  /** Each dense step's kernels [E, in, out] and biases [E, 1, out], in order. */
  private weights(training: boolean): tf.Tensor[] {
    const stack = () =>
      this.steps.flatMap((s) => (s.kind === 'relu' ? [] : [tf.stack(s.kernels), ...(s.biases ? [tf.reshape(tf.stack(s.biases), [s.biases.length, 1, s.units])] : [])]));
    if (training) return stack();
    // A variable's assign gives it a new dataId: the stack is stale exactly when one of them changed.
    const ids = this.steps.flatMap((s) => (s.kind === 'relu' ? [] : [...s.kernels, ...(s.biases ?? [])].map((v) => v.dataId)));
    const c = this.cache;
    if (c && c.ids.length === ids.length && c.ids.every((id, i) => id === ids[i])) return c.stacked;
    this.release();
    this.cache = { ids, stacked: tf.tidy(() => stack().map((t) => tf.keep(t))) };
    return this.cache.stacked;
  }

  /** Frees the kept stack (the network's `dispose` calls it). */
  release(): void {
    if (this.cache) tf.dispose(this.cache.stacked);
    this.cache = null;
  }
}
