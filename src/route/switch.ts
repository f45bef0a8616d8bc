import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import type { ChannelSel, Layer, Plan, Routing, RunContext } from '../layers/index.js';
import { onesWithGradient } from './gates.js';
import { gateMacsOf } from './unit.js';
import { decideRoutes, runRoutes } from './routes.js';

/**
 * Probability of route k under a nested decision's surrogate q ([rows, K - 1], q_g = P(route >= g + 1)):
 * P(route = k) = q_k - q_{k+1}, with q_0 = 1 and q_K = 0. Shape [rows].
 */
export function routeProbability(q: tf.Tensor2D, k: number): tf.Tensor1D {
  const [rows, G] = q.shape;
  const at = (g: number): tf.Tensor1D => (g === 0 ? tf.ones([rows]) : g > G ? tf.zeros([rows]) : (tf.reshape(tf.slice(q, [0, g - 1], [rows, 1]), [rows]) as tf.Tensor1D));
  return tf.sub(at(k), at(k + 1)) as tf.Tensor1D;
}

/**
 * DS-Net's gate loss (slimming gate supervision): the mean of -log P(route = t_i), t_i each sample's target
 * route, under the nested decision of `logits` [rows, K - 1]: log P(t) = sum_{g < t} log sigmoid(z_g) +
 * log sigmoid(-z_t) (the last term absent for the last route), a binary cross-entropy per logit up to t.
 */
export function routeLoss(logits: tf.Tensor2D, targets: Int32Array): tf.Scalar {
  const [rows, G] = logits.shape;
  if (targets.length !== rows) throw new DynnError(`${targets.length} target routes for ${rows} rows`);
  const on = new Float32Array(rows * G);
  const off = new Float32Array(rows * G);
  targets.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t > G) throw new DynnError(`target route ${t} of row ${i} is not one of 0..${G}`);
    for (let g = 0; g < t; g++) on[i * G + g] = 1;
    if (t < G) off[i * G + t] = 1;
  });
  // log sigmoid(z) = -softplus(-z): TF.js's logSigmoid loses its input before the backward pass.
  const logOn = tf.neg(tf.softplus(tf.neg(logits)));
  const logOff = tf.neg(tf.softplus(logits));
  const ll = tf.add(tf.mul(tf.tensor2d(on, [rows, G]), logOn), tf.mul(tf.tensor2d(off, [rows, G]), logOff));
  return tf.neg(tf.div(tf.sum(ll), rows)) as tf.Scalar;
}

/** Per sample, the first route whose prediction is right (`right[k][i]`), or the last route when none is. */
export function smallestRight(right: ArrayLike<boolean>[], rows: number): Int32Array {
  const K = right.length;
  return Int32Array.from({ length: rows }, (_, i) => {
    for (let k = 0; k < K; k++) if (right[k][i]) return k;
    return K - 1;
  });
}

/** One route of a switch as a graph lowers it (export by segments, `src/export/segments.ts`): its layers at a plan, after an optional bilinear resize of `x`. */
export interface SwitchRoute {
  layers: Layer[];
  plan: Plan;
  /** [height, width] the route's input is resized to first (adaptive resolution). */
  resize?: [number, number];
  /** A few words for the graph's doc string. */
  label: string;
  /** Frees what was built for this lowering alone. */
  release?: () => void;
}

/**
 * A switch: a point in a network where a gate chooses, per sample, one of K ordered routes for what follows
 * (route k costs more as k grows: a width of the rest of the network, a branch network, an input
 * resolution). What the switch tells `routeSwitch` about itself.
 */
export interface Switch {
  /** The name its decisions are recorded under (`Routing.decide`). */
  readonly name: string;
  /** Its gate (any registered mechanism's, see `mechanisms`), giving K - 1 logits. */
  readonly gate: Layer;
  /** Routes K, ordered by cost. */
  readonly routes: number;
}

/** What `routeSwitch` does besides deciding and dispatching. */
export interface SwitchOptions {
  /**
   * The rows the routes run on (default: the gate's input `x`): a branch network or another resolution
   * reads the image while its gate reads a glimpse.
   */
  input?: tf.Tensor;
  /**
   * Weight of DS-Net's gate loss in `soft` mode when the routing knows the labels (0 or absent: none). The
   * routes must end in class scores: each runs once on every row, without its own gates, to find each
   * sample's target route (the first that classifies it right), and `routeLoss` pulls the gate toward it.
   */
  supervise?: number;
}

/**
 * A switch's work on the current batch: its gate reads `x`, each sample takes route k of K (a nested
 * decision, so thresholds give operating points as for every gate), its executed MACs are the gate's plus
 * `routeMacs[k]`, and each route's rows run once as one smaller batch through `run`. In `soft` mode each
 * route's output is multiplied by a straight-through factor (1 in value, the gradient of P(route = k)), so
 * the gate learns from the task loss. In `masked` mode (timing only) every row runs the last route, as a
 * mask over the full network would. Call only with routing in a mode other than `full`, inside `tf.tidy`.
 */
export function routeSwitch(
  sw: Switch,
  x: tf.Tensor,
  sel: ChannelSel,
  ctx: RunContext,
  routeMacs: ArrayLike<number>,
  run: (route: number, part: tf.Tensor, ctx: RunContext) => tf.Tensor,
  options: SwitchOptions = {},
): tf.Tensor {
  const routing = ctx.routing;
  if (!routing || routing.mode === 'full') throw new DynnError(`${sw.name}: routeSwitch needs gates that decide`);
  const K = sw.routes;
  if (routeMacs.length !== K) throw new DynnError(`${sw.name}: ${routeMacs.length} route costs for ${K} routes`);
  const input = options.input ?? x;
  const logits = sw.gate.call(x, sel, ctx).y as tf.Tensor2D;
  if (logits.shape[1] !== K - 1) throw new DynnError(`${sw.name}: the gate gives ${logits.shape[1]} logits; ${K} routes need ${K - 1}`);
  const gateMacs = gateMacsOf(sw.gate, sel);
  const decision = decideRoutes(sw.name, logits, routing, Array.from(routeMacs, (m) => gateMacs + m));
  const labels = routing.labels;
  if (routing.mode === 'soft' && options.supervise && labels) {
    const free = { ...ctx, routing: undefined };
    const right = Array.from({ length: K }, (_, k) => {
      const pred = tf.tidy(() => tf.argMax(run(k, input, free), 1));
      const p = pred.dataSync();
      pred.dispose();
      return Array.from(p, (c, i) => c === labels[i]);
    });
    routing.addLoss('gate', tf.mul(options.supervise, routeLoss(logits, smallestRight(right, labels.length))) as tf.Scalar);
  }
  if (routing.mode === 'masked') return run(K - 1, input, ctx);
  return runRoutes(input, decision, ctx, (k, part, child, surrogate) => {
    const y = run(k, part, child);
    if (!surrogate) return y;
    const p = onesWithGradient(routeProbability(surrogate, k));
    return tf.mul(y, tf.reshape(p, [p.shape[0], ...new Array<number>(y.rank - 1).fill(1)]));
  });
}
