import * as tf from '@tensorflow/tfjs-core';
import type { MixedRunner } from './runner.js';
import type { Decision } from './types.js';
import { assemble, rowsOf } from '../route/dispatch.js';
import { tensorRows } from '../route/tensor.js';

/**
 * Decides which samples a stage settles: `probs` holds the softmax rows (row-major, `classes` wide) of the
 * samples `rows` (batch indices) at this stage's u; returns true for each sample to stop at.
 */
export type StageTest = (stage: number, rows: number[], probs: Float32Array, classes: number) => boolean[];

/**
 * Runs a batch through ascending stages, each on the samples no earlier stage settled (a cascade, the
 * oracle): every stage is one batched sliced pass. Samples still unsettled at the last stage stop there.
 * `countEarlier`: add the MACs of the stages a sample ran before its last to its overhead.
 */
export function runStages(runner: MixedRunner, x: tf.Tensor, stages: readonly number[], test: StageTest, countEarlier: boolean): Decision {
  const n = x.shape[0];
  const u = new Float64Array(n);
  const overheadMacs = new Float64Array(n);
  const scores = tf.tidy(() => {
    let rows = Int32Array.from({ length: n }, (_, i) => i);
    const parts: tf.Tensor[] = [];
    const partRows: Int32Array[] = [];
    for (let s = 0; s < stages.length && rows.length; s++) {
      const last = s === stages.length - 1;
      const logits = runner.subnet(stages[s]).predict(rowsOf(tensorRows, x, rows));
      const stop = last ? Array.from(rows, () => true) : test(s, Array.from(rows), tf.softmax(logits).dataSync() as Float32Array, logits.shape[1]);
      const settled: number[] = [];
      const next: number[] = [];
      rows.forEach((i, j) => {
        if (stop[j]) {
          settled.push(j);
          u[i] = stages[s];
        } else {
          next.push(i);
          if (countEarlier) overheadMacs[i] += runner.macs(stages[s]);
        }
      });
      if (settled.length) {
        const at = Int32Array.from(settled);
        parts.push(rowsOf(tensorRows, logits, at));
        partRows.push(at.map((j) => rows[j]));
      }
      rows = Int32Array.from(next);
    }
    return assemble(tensorRows, parts, partRows, n) as tf.Tensor2D;
  });
  return { u, overheadMacs, scores };
}
