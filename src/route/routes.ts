import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import type { Routing, RunContext } from '../layers/index.js';
import { dispatchTensor } from './tensor.js';
import { nestedDecision, type NestedDecision } from './gates.js';

// What every per-sample choice among ordered routes shares: a gated unit's inner groups (route k = k groups)
// and a switch's routes (./switch.ts) decide, record and dispatch here.

/**
 * Records a nested decision among K ordered routes (K - 1 logits, see `nestedDecision`): each sample's route,
 * what it costs (`costs[k]`, MACs per sample of route k, the gate's included, non-decreasing in k) and, in
 * `soft` mode, its expected cost as a tensor the efficiency loss differentiates. Shared by every per-sample
 * choice: a gated unit's inner groups (route k = k groups) and a switch's routes. Call inside `tf.tidy`.
 */
export function decideRoutes(name: string, logits: tf.Tensor2D, routing: Routing, costs: ArrayLike<number>): NestedDecision {
  const K = logits.shape[1] + 1;
  if (costs.length !== K) throw new DynnError(`${name}: ${costs.length} route costs for ${K} routes (${K - 1} logits)`);
  const d = nestedDecision(name, logits, routing);
  routing.decide(name, d.counts, K - 1);
  routing.spend(Array.from(d.counts, (k) => costs[k]));
  routing.executes(name, d.counts, K - 1, d.surrogate);
  routing.observe(name, logits);
  if (routing.mode === 'soft') {
    // E[cost] = c_0 + sum_g q_g (c_g - c_{g-1}): q_g is the probability of taking route g or a later one.
    const steps = Float32Array.from({ length: K - 1 }, (_, g) => costs[g + 1] - costs[g]);
    routing.expect(tf.add(costs[0], tf.sum(tf.mul(d.q, tf.tensor1d(steps)), 1)) as tf.Tensor1D);
  }
  return d;
}

/** One route's work: its rows of the input, the context narrowed to them and, in `soft` mode, their rows of the decision's surrogate. */
export type RouteRun = (route: number, part: tf.Tensor, ctx: RunContext, surrogate?: tf.Tensor2D) => tf.Tensor;

/**
 * Runs each route's rows of `input` once, as one smaller batch (`dispatchTensor`), and returns the outputs
 * in input order. Every route's routing records go to the samples they belong to. Call inside `tf.tidy`.
 */
export function runRoutes(input: tf.Tensor, decision: NestedDecision, ctx: RunContext, run: RouteRun): tf.Tensor {
  const routing = ctx.routing;
  if (!routing) throw new DynnError('runRoutes needs a routing');
  const soft = routing.mode === 'soft';
  return dispatchTensor(input, decision.counts, (k, part, rows) => {
    const child = { ...ctx, routing: routing.child(rows) };
    return run(k, part, child, soft ? (tf.gather(decision.surrogate, rows) as tf.Tensor2D) : undefined);
  });
}
