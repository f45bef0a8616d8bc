import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { fullSel } from '../layers/select.js';
import { fuseOps, opTensors, runOps, type FrozenOp } from '../models/subnet.js';
import { exitCosts, exitSegments, type ExitCost } from '../models/exits.js';
import type { Network, PlanOptions } from '../models/network.js';
import type { Plan } from '../layers/types.js';
import { exitRules, perExitThresholds, settleExit, type ExitRule } from './rules.js';
import { rowsOf } from '../route/dispatch.js';
import { tensorRows } from '../route/tensor.js';

/** The outcome of an early-exit run, in input order. */
export interface ExitRun {
  /** Class scores of the exit each sample left at, [count, classes] row-major. */
  logits: Float32Array;
  /** The exit (0-based) each sample left at. */
  exits: Int32Array;
  /** Predicted class per sample. */
  predictions: Int32Array;
  /** Samples in the batch. */
  count: number;
  classes: number;
}

/**
 * The early-exit form of a network at one plan, frozen for inference: each backbone segment and each exit
 * classifier is a fixed-size op list (weights sliced, BatchNorm folded). `run` really terminates early: after
 * each exit, the samples that leave are not computed further and the rest continue as a smaller batch
 * (`tf.gather` of the survivors); results come back in input order. Holds its own tensors: `dispose` it.
 */
export class EarlyExitRunner {
  private disposed = false;

  private constructor(
    readonly plan: Plan,
    readonly inputShape: number[],
    readonly classes: number,
    private readonly segments: FrozenOp[][],
    private readonly heads: FrozenOp[][],
    /** What leaving at each exit costs. */
    readonly costs: ExitCost[],
    /** FLOPs of the last exit alone (the network without its exit classifiers). */
    readonly baselineFlops: number,
  ) {}

  /** Freezes the exits of `model` at utilization u (or a plan). */
  static freeze(model: Network, at: number | Plan, options: PlanOptions = {}): EarlyExitRunner {
    const plan = typeof at === 'number' ? model.plan(at, options) : at;
    const { segments, heads } = exitSegments(model);
    const segOps: FrozenOp[][] = [];
    const headOps: FrozenOp[][] = [];
    tf.tidy(() => {
      let sel = fullSel(model.inputShape[model.inputShape.length - 1]);
      segments.forEach((seg, k) => {
        const raw: FrozenOp[] = [];
        for (const l of seg) {
          raw.push(...l.freeze(sel, plan));
          sel = l.outSel(sel, plan);
        }
        segOps.push(fuseOps(raw));
        if (k < heads.length) headOps.push(fuseOps(heads[k].headOps(sel, plan)));
      });
      return [...segOps, ...headOps].flatMap(opTensors);
    });
    return new EarlyExitRunner(plan, model.inputShape, model.numClasses, segOps, headOps, exitCosts(model, plan), model.cost(plan).flops);
  }

  /** Number of exits, the final classifier included. */
  get exitCount(): number {
    return this.segments.length;
  }

  private check(x: tf.Tensor): void {
    if (this.disposed) throw new DynnError('this early-exit runner was disposed');
    const want = this.inputShape;
    if (x.rank !== want.length + 1 || want.some((n, i) => x.shape[i + 1] !== n)) {
      throw new DynnError(`input shape [${x.shape}] does not match the model's [batch, ${want.join(', ')}]`);
    }
  }

  /**
   * Runs a batch with early termination: at intermediate exit k a sample leaves when the rule's score of
   * its softmax passes `thresholds[k]` (one number: the same at every exit); the last exit takes the rest.
   */
  run(x: tf.Tensor, rule: string | ExitRule, thresholds: number | number[]): ExitRun {
    this.check(x);
    const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
    const t = perExitThresholds(thresholds, this.exitCount - 1);
    const n = x.shape[0];
    const C = this.classes;
    const logits = new Float32Array(n * C);
    const exits = new Int32Array(n);
    const probs = new Float64Array(C);
    let alive = Int32Array.from({ length: n }, (_, i) => i);
    let y: tf.Tensor = x;
    for (let k = 0; k < this.exitCount && alive.length > 0; k++) {
      const input = y;
      const last = k === this.exitCount - 1;
      const h = tf.tidy(() => runOps(this.segments[k], input));
      if (input !== x) input.dispose();
      const out = last ? h : tf.tidy(() => runOps(this.heads[k], h));
      const scores = out.dataSync() as Float32Array;
      if (out !== h) out.dispose();
      const stay = settleExit(scores, C, alive, { rule: r, threshold: t[k], k, last }, logits, exits, probs);
      if (last || stay.length === 0) {
        h.dispose();
        break;
      }
      if (stay.length === alive.length) {
        y = h;
        continue;
      }
      y = tf.tidy(() => rowsOf(tensorRows, h, Int32Array.from(stay)));
      h.dispose();
      alive = Int32Array.from(stay, (i) => alive[i]);
    }
    return { logits, exits, predictions: argmaxRows(logits, C), count: n, classes: C };
  }

  /**
   * Class scores of every exit for a batch, without termination (for fitting thresholds): one [count,
   * classes] matrix per exit.
   */
  allExits(x: tf.Tensor): Float32Array[] {
    this.check(x);
    const out: Float32Array[] = [];
    let y: tf.Tensor = x;
    for (let k = 0; k < this.exitCount; k++) {
      const input = y;
      y = tf.tidy(() => runOps(this.segments[k], input));
      if (input !== x) input.dispose();
      if (k < this.heads.length) {
        const h = y;
        const l = tf.tidy(() => runOps(this.heads[k], h));
        out.push(l.dataSync() as Float32Array);
        l.dispose();
      } else {
        out.push(y.dataSync() as Float32Array);
      }
    }
    y.dispose();
    return out;
  }

  /** The mean FLOPs of samples leaving at `exits` (relative to `baselineFlops` for a ratio). */
  meanFlops(exits: ArrayLike<number>): number {
    let s = 0;
    for (let i = 0; i < exits.length; i++) s += this.costs[exits[i]].cumulativeFlops;
    return exits.length ? s / exits.length : 0;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    tf.dispose([...this.segments, ...this.heads].flatMap(opTensors));
  }
}

/** The index of the largest entry of each row of a [rows, classes] matrix. */
export function argmaxRows(m: ArrayLike<number>, classes: number): Int32Array {
  const rows = m.length / classes;
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let j = 1; j < classes; j++) if (m[r * classes + j] > m[r * classes + best]) best = j;
    out[r] = best;
  }
  return out;
}
