/**
 * The count rule of nested gates, in one place: TF.js's `nestedDecision` and the ONNX Runtime dispatcher of
 * exported dynamic models both call it, so a sample takes the same route in both. This file loads no TF.js.
 */
import { DynnError } from '../util/errors.js';

/** log sigmoid(z) = -softplus(-z), without overflow for large |z|. */
function logSigmoid(z: number): number {
  return z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z));
}

/**
 * Groups each sample runs from a gate's logits `[rows, G]` (row-major): count = #{g : q_g > cut} with
 * q_g = prod_{j <= g} sigmoid(z_j). q is non-increasing along g, so the counted groups are a prefix.
 * `cut` is one threshold for all rows (inference) or one per row (training's random draws). Computed in
 * float64 from the logits, whatever engine produced them.
 */
export function nestedCounts(logits: ArrayLike<number>, groups: number, cut: number | ArrayLike<number>): Int32Array {
  const rows = logits.length / groups;
  if (!Number.isInteger(rows)) throw new DynnError(`${logits.length} logits do not split into rows of ${groups}`);
  const counts = new Int32Array(rows);
  for (let i = 0; i < rows; i++) {
    const c = typeof cut === 'number' ? cut : cut[i];
    let logQ = 0;
    let k = 0;
    while (k < groups) {
      logQ += logSigmoid(logits[i * groups + k]);
      if (!(Math.exp(logQ) > c)) break;
      k++;
    }
    counts[i] = k;
  }
  return counts;
}

/**
 * The logit a probability threshold cuts at: sigmoid(z) > t exactly when z > logitCut(t) (-Infinity at 0,
 * Infinity at 1). Independent decisions compare logits with it, in TF.js and in an exported graph alike, so
 * neither engine's sigmoid (ONNX Runtime's flushes to 0 far below the threshold's range) decides.
 */
export function logitCut(threshold: number): number {
  return threshold <= 0 ? -Infinity : threshold >= 1 ? Infinity : Math.log(threshold) - Math.log1p(-threshold);
}
