import { attr, type GraphBuilder } from './graph.js';

/**
 * Adds to `g` the temporal controller's features of a batch (`TEMPORAL_FEATURES`, as `control/temporal.ts`
 * computes them in TF.js) from the network's `scores` [batch, C] and the `action` index each sample ran at
 * (float32 [batch]); returns the name of the [batch, C + 3 + K] features. In the graph, not in the runtime's
 * JavaScript, so the node and web runtimes share one computation.
 */
export function lowerTemporalFeatures(g: GraphBuilder, scores: string, action: string, C: number, K: number): string {
  const p = g.node('Softmax', [scores], 'temporal/probabilities', { axis: attr.int(-1) });
  const [top2] = g.nodeOutputs('TopK', [p, g.int64Const('temporal/two', [2])], ['temporal/top2', 'temporal/top2_index'], { axis: attr.int(-1), largest: attr.int(1), sorted: attr.int(1) });
  const axis1 = g.int64Const('temporal/axis1', [1]);
  const column = (j: number, base: string) => g.node('Slice', [top2, g.int64Const(`${base}/start`, [j]), g.int64Const(`${base}/end`, [j + 1]), axis1], base);
  const top = column(0, 'temporal/top');
  const margin = g.node('Sub', [top, column(1, 'temporal/second')], 'temporal/margin');
  // p log p with 0 log 0 = 0: a probability that underflowed to 0 must not give 0 x -inf = NaN.
  const logp = g.node('Log', [g.node('Max', [p, g.floatConst('temporal/tiny', [], [1e-30])], 'temporal/p_floor')], 'temporal/log_p');
  const plogp = g.node('ReduceSum', [g.node('Mul', [p, logp], 'temporal/p_log_p'), axis1], 'temporal/sum_p_log_p', { keepdims: attr.int(1) });
  const entropy = g.node('Mul', [plogp, g.floatConst('temporal/minus_inv_log_c', [], [C > 1 ? -1 / Math.log(C) : 0])], 'temporal/entropy');
  const ran = g.node('Unsqueeze', [action, axis1], 'temporal/action_column');
  const indices = g.floatConst('temporal/action_indices', [1, K], Array.from({ length: K }, (_, k) => k));
  const oneHot = g.node('Cast', [g.node('Equal', [ran, indices], 'temporal/action_is')], 'temporal/action_one_hot', { to: attr.int(1) });
  return g.node('Concat', [p, top, margin, entropy, oneHot], 'temporal/features', { axis: attr.int(1) });
}
