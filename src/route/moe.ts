import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite, layerClasses } from '../layers/index.js';
import type { ChannelSel, Layer, LayerCost, Plan, Routing, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import { perGate } from './gates.js';
import { dispatchTensorFrom, dispatchTensorPadded } from './tensor.js';
import { StackedExperts } from './stacked.js';
import { MoeRouter } from './router.js';
import { gateCost, gateMacsOf, makeGate } from './unit.js';
import { stackPays, assignExperts, checkMixture, expertCapacity, mixtureWeights, type Assignment, type OverflowPolicy, type RoutingPriority } from './experts.js';

export interface MoeArgs {
  /** Experts E. */
  experts: number;
  /** Experts each sample runs, k in 1..E (default 1). */
  topK?: number;
  /** Capacity factor in training: an expert takes at most ceil(cf * k * n / E) rows of a batch of n (default 1.25). */
  capacityFactor?: number;
  /**
   * Capacity factor at evaluation, export and serving (default: none, no limit). With one, the exported
   * mixture is dispatched by the runtime (a `moe` segment); without, inside its segment's graph.
   */
  evalCapacityFactor?: number;
  /** What an assignment that finds its expert full does (default `next`, see `OverflowPolicy`). */
  overflow?: OverflowPolicy;
  /** Which rows an expert serves first when it has not room for all (default `score`, see `RoutingPriority`). */
  priority?: RoutingPriority;
  /** Add the block's input to the experts' combined output (the experts keep its shape; default false). */
  residual?: boolean;
  /** Weight of Shazeer's importance loss, CV(sum of gates)^2 (default 0). */
  importanceWeight?: number;
  /** Weight of Shazeer's load loss, CV(smooth load)^2 from the noisy scores' normal CDF (default 0). */
  loadWeight?: number;
  /** Weight of Switch's balance loss, E * sum_i f_i P_i on the clean scores (default 0.01, Switch's). */
  switchWeight?: number;
  /** Noisy top-k in training (default true); without it the scores are the clean ones. */
  noisy?: boolean;
  /** The registered mechanism whose router scores the experts (default `moe`). */
  mechanism?: string;
  /** Run alike experts (dense layers and ReLUs of the same shapes) as one batched call (default true; false: one call per expert, the comparison). */
  stack?: boolean;
}

/** A large negative logit: softmax gives the experts a sample does not use exactly 0. */
const OFF = -1e9;

/** Standard normal numbers per row and expert of `key` (Box-Muller on the routing's uniforms: reproducible per sample). */
function normals(routing: Routing, key: string, n: number, E: number): Float32Array {
  const u1 = perGate(routing, `${key}#n1`, n, E);
  const u2 = perGate(routing, `${key}#n2`, n, E);
  return u1.map((u, i) => Math.sqrt(-2 * Math.log(Math.max(u, 1e-7))) * Math.cos(2 * Math.PI * u2[i]));
}

/** CV(x)^2 = var(x) / mean(x)^2 over the experts (population variance), the balance losses' measure. */
function cvSquared(x: tf.Tensor1D): tf.Scalar {
  const { mean, variance } = tf.moments(x);
  return tf.div(variance, tf.add(tf.square(mean), 1e-10)) as tf.Scalar;
}

/**
 * A sparse mixture of experts (Shazeer et al. 2017; Switch): a router scores E experts per sample from the
 * block's input (pooled), each sample runs its k best (noisy top-k in training: H = x Wg + N(0, 1) softplus(x
 * Wnoise)), and their outputs are summed with the gates, a softmax over the kept scores (for k = 1, Switch's:
 * the chosen expert's probability under a softmax over all experts, so the router gets the task's gradient).
 * Each expert runs once per batch, on the rows assigned to it (`dispatchTensorFrom`), at most its capacity;
 * an expert with no row does not run. Decisions, costs, the overflow count and the balance losses go through
 * the pass's `Routing`. In `masked` mode (the field's baseline, for timing) every expert runs on every row
 * and the gates zero what was not chosen.
 */
export class MoeBlock extends Composite<MoeArgs> {
  readonly className = 'MoeBlock';
  private router!: Layer;
  /** Each expert's layers, named `<block>.e<i>.*`. */
  private expertLayers: Layer[][] = [];
  /** The experts as one batched call, when they stack (see `StackedExperts`). */
  private stacked: StackedExperts | null = null;

  constructor(
    name: string,
    args: MoeArgs,
    /** Builds expert i's layers, to be named `<prefix>.*`. */
    private readonly expert: (prefix: string, index: number) => Layer[],
  ) {
    super(name, args);
  }

  get experts(): number {
    return this.args.experts;
  }

  get topK(): number {
    return this.args.topK ?? 1;
  }

  get gate(): Layer {
    return this.router;
  }

  /** Each expert's layers (what the ONNX export lowers, inside the segment's graph or one graph per expert). */
  get expertChains(): readonly Layer[][] {
    return this.expertLayers;
  }

  protected doBuild(inShape: Shape): Shape {
    const { experts: E, capacityFactor = 1.25, evalCapacityFactor, overflow = 'next' } = this.args;
    checkMixture(E, this.topK, [capacityFactor, ...(evalCapacityFactor === undefined ? [] : [evalCapacityFactor])], overflow, this.args.priority ?? 'score');
    for (const w of ['importanceWeight', 'loadWeight', 'switchWeight'] as const) {
      const v = this.args[w];
      if (v !== undefined && !(v >= 0 && Number.isFinite(v))) throw new DynnError(`${this.name}: ${w} must be a non-negative number, got ${v}`);
    }
    this.expertLayers = Array.from({ length: E }, (_, i) => this.expert(`${this.name}.e${i}`, i));
    const shapes = this.expertLayers.map((layers) => this.buildChain(layers, inShape));
    const odd = shapes.findIndex((s) => s.join() !== shapes[0].join());
    if (odd > 0) throw new DynnError(`${this.name}: expert ${odd} gives outputs of [${shapes[odd]}], expert 0 of [${shapes[0]}]; the experts of a mixture must agree`);
    if (this.args.residual && shapes[0].join() !== inShape.join()) throw new DynnError(`${this.name}: a residual mixture's experts must keep its input's shape [${inShape}], they give [${shapes[0]}]`);
    this.router = makeGate(this.name, 2 * E, { mechanism: this.args.mechanism ?? 'moe' }, inShape, this.seed);
    this.layers = [...this.expertLayers.flat(), this.router];
    this.stacked = this.args.stack === false ? null : StackedExperts.of(this.expertLayers);
    return shapes[0];
  }

  /** MACs one sample costs in each expert at `plan` (not cached: an expert with throttleable layers costs what the plan keeps). */
  expertMacs(sel: ChannelSel, plan: Plan): number[] {
    return this.expertLayers.map((layers) => this.chainCost(layers, sel, plan).reduce((a, c) => a + c.macs, 0));
  }

  outSel(sel: ChannelSel, plan: Plan): ChannelSel {
    return this.chainSel(this.expertLayers[0], sel, plan);
  }

  private runExpert(e: number, x: tf.Tensor, sel: ChannelSel, ctx: RunContext): tf.Tensor {
    return this.runChain(this.expertLayers[e], x, sel, ctx).y;
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const out = this.outSel(sel, ctx.plan);
    const routing = ctx.routing && ctx.routing.mode !== 'full' ? ctx.routing : undefined;
    const E = this.experts;
    const k = this.topK;
    const n = x.shape[0];
    const training = ctx.training || routing?.mode === 'soft';
    const noisy = routing?.mode === 'soft' && this.args.noisy !== false;
    // The noise scales are computed only where noise is drawn; else the router's E scores alone.
    const z = noisy || !(this.router instanceof MoeRouter) ? (this.router.call(x, sel, ctx).y as tf.Tensor2D) : null;
    const clean = z ? (tf.slice(z, [0, 0], [n, E]) as tf.Tensor2D) : (this.router as MoeRouter).scores(x, sel, ctx);
    const std = noisy ? (tf.softplus(tf.slice(z!, [0, E], [n, E])) as tf.Tensor2D) : undefined;
    const scores = std ? (tf.add(clean, tf.mul(tf.tensor2d(normals(routing!, this.name, n, E), [n, E]), std)) as tf.Tensor2D) : clean;
    const h = scores.dataSync();
    // No limit at evaluation unless asked: a served batch merges requests, and a limit would let one client's
    // samples push another's out of their expert (the answer to an image would depend on its neighbours).
    const cf = training ? (this.args.capacityFactor ?? 1.25) : this.args.evalCapacityFactor;
    const a = assignExperts(h, E, k, cf === undefined ? n : expertCapacity(cf, k, n, E), this.args.overflow ?? 'next', this.args.priority ?? 'score');
    // Without gradients (evaluation, serving) the gates come from the scores already read back, by the rule
    // the ONNX Runtime dispatcher uses (`mixtureWeights`); in training, as tensors the router learns through.
    const masked = routing?.mode === 'masked';
    const gates = training || masked ? this.gates(scores, a) : null;
    const weights = gates ? (tf.mul(gates.gates, gates.ran) as tf.Tensor2D) : mixtureWeights(h, E, k, a);
    let y = masked ? this.masked(x, sel, ctx, weights as tf.Tensor2D) : this.dispatched(x, sel, ctx, a, weights, out);
    if (this.args.residual) y = tf.add(x, y);
    if (routing) this.record(routing, a, n, sel, ctx.plan, { clean, scores, std, gates: gates?.gates });
    return { y, sel: out };
  }

  /**
   * The gates as tensors: a softmax over the experts each sample keeps (its assignments, dropped ones
   * included, whose weight then goes unused), or for k = 1 over all of them (Switch); `ran` is 1 where a
   * sample ran an expert.
   */
  private gates(scores: tf.Tensor2D, a: Assignment): { gates: tf.Tensor2D; ran: tf.Tensor2D } {
    const [n, E] = scores.shape;
    const k = this.topK;
    const keep = new Float32Array(n * E).fill(k === 1 ? 0 : OFF);
    const ran = new Float32Array(n * E);
    for (let p = 0; p < k * n; p++) {
      const i = p % n;
      const e = a.experts[p] >= 0 ? a.experts[p] : a.chosen[p];
      keep[i * E + e] = 0;
      if (a.experts[p] >= 0) ran[i * E + a.experts[p]] = 1;
    }
    return { gates: tf.softmax(tf.add(scores, tf.tensor2d(keep, [n, E]))) as tf.Tensor2D, ran: tf.tensor2d(ran, [n, E]) };
  }

  /** The experts as one batched call, or null where they run one call each (not alike, or `stack: false`). */
  get stack(): StackedExperts | null {
    return this.stacked;
  }

  override releaseCaches(): void {
    this.stacked?.release();
  }

  /**
   * Each expert once, on its rows (stacked experts: all of them in one batched call, each block padded to the
   * largest expert's rows); outputs weighted by their gates and summed per sample.
   */
  private dispatched(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, a: Assignment, weights: tf.Tensor2D | Float64Array, out: ChannelSel): tf.Tensor {
    const n = x.shape[0];
    const E = this.experts;
    const pairs = [...a.experts.keys()].filter((p) => a.experts[p] >= 0);
    if (pairs.length === 0) return tf.zeros([n, ...this.outShape.slice(0, -1), out.count]);
    const sources = Int32Array.from(pairs, (p) => p % n);
    const routes = Int32Array.from(pairs, (p) => a.experts[p]);
    // Padding that would more than double the rows (a batch of one, a few rows over many experts) runs per expert.
    const stacked = this.stacked?.fits(sel, ctx.plan) && stackPays(routes, E) ? this.stacked : null;
    const ys = stacked
      ? dispatchTensorPadded(x, sources, routes, E, (part, layout) => stacked.run(part, layout.width, ctx.training === true || ctx.routing?.mode === 'soft'))
      : dispatchTensorFrom(x, sources, routes, (e, part, rows) => {
          const child = ctx.routing ? { ...ctx, routing: ctx.routing.child(Int32Array.from(rows, (r) => sources[r])) } : ctx;
          return this.runExpert(e, part, sel, child);
        });
    // Each (slot, sample) entry's gate: from the [n, E] tensor, or the entries' weights computed without gradients.
    const w = weights instanceof Float64Array ? tf.tensor1d(Float32Array.from(pairs, (p) => weights[p])) : tf.gather(tf.reshape(weights, [n * E]), Int32Array.from(pairs, (p, j) => sources[j] * E + routes[j]));
    const weighted = tf.mul(ys, tf.reshape(w, [pairs.length, ...new Array<number>(ys.rank - 1).fill(1)]));
    return tf.unsortedSegmentSum(weighted, tf.tensor1d(sources, 'int32'), n);
  }

  /** The masked baseline: every expert on every row, then the gates (zero where a sample did not run it). */
  private masked(x: tf.Tensor, sel: ChannelSel, ctx: RunContext, weights: tf.Tensor2D): tf.Tensor {
    const n = x.shape[0];
    const parts = this.expertLayers.map((_, e) => {
      const ye = this.runExpert(e, x, sel, ctx);
      return tf.mul(ye, tf.reshape(tf.slice(weights, [0, e], [n, 1]), [n, ...new Array<number>(ye.rank - 1).fill(1)]));
    });
    return tf.addN(parts);
  }

  /** Decisions per slot, executed MACs, the overflow count and, in `soft` mode, the balance losses. */
  private record(routing: Routing, a: Assignment, n: number, sel: ChannelSel, plan: Plan, t: { clean: tf.Tensor2D; scores: tf.Tensor2D; std?: tf.Tensor2D; gates?: tf.Tensor2D }): void {
    const E = this.experts;
    const k = this.topK;
    for (let s = 0; s < k; s++) routing.choose(k === 1 ? this.name : `${this.name}.k${s}`, a.experts.slice(s * n, (s + 1) * n), E);
    routing.count(this.name, a.overflowed, n * k);
    const routerMacs = gateMacsOf(this.router, sel);
    const perExpert = this.expertMacs(sel, plan);
    // What really ran: the masked baseline runs every expert on every row.
    const spent = new Float64Array(n).fill(routing.mode === 'masked' ? routerMacs + perExpert.reduce((x, y) => x + y, 0) : routerMacs);
    if (routing.mode !== 'masked') a.experts.forEach((e, p) => e >= 0 && (spent[p % n] += perExpert[e]));
    routing.spend(spent);
    if (routing.mode !== 'soft') return;
    const { importanceWeight = 0, loadWeight = 0, switchWeight = 0.01 } = this.args;
    if (importanceWeight > 0 && t.gates) routing.addLoss('importance', tf.mul(importanceWeight, cvSquared(tf.sum(t.gates, 0) as tf.Tensor1D)) as tf.Scalar);
    if (loadWeight > 0 && t.std) routing.addLoss('load', tf.mul(loadWeight, cvSquared(smoothLoad(t.clean, t.scores, t.std, k))) as tf.Scalar);
    if (switchWeight > 0) {
      // On the clean scores, which evaluation routes by: measured on the noisy ones, the noise alone looks
      // balanced while the clean scores can send every sample to one expert (the collapse at evaluation).
      const f = new Float32Array(E);
      assignExperts(t.clean.dataSync(), E, k, n, 'residual').chosen.forEach((e) => (f[e] += 1 / (n * k)));
      const P = tf.mean(tf.softmax(t.clean), 0);
      routing.addLoss('switch', tf.mul(switchWeight * E, tf.sum(tf.mul(tf.tensor1d(f), P))) as tf.Scalar);
    }
  }

  freeze(): FrozenOp[] {
    throw new DynnError(`${this.name}: a mixture of experts decides per sample; it exports by segments (its dispatch inside a segment's graph, or with a capacity limit a router graph and one graph per expert), not as one file`);
  }

  /** The router's cost and every expert's, all marked routed: per sample, the block records what it ran. */
  cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return [...this.expertLayers.flatMap((layers) => this.chainCost(layers, sel, plan)), ...gateCost(this.router, sel)].map((c) => ({ ...c, routed: this.name }));
  }
}

/**
 * Shazeer's smooth load estimator (Eq. 8-10): P(x, i) = Phi((x Wg)_i - kth_excluding(H(x), k, i)) /
 * softplus((x Wnoise)_i)), the probability that expert i stays in the top k when only its own noise is
 * drawn again; summed over the batch. The threshold is taken as a constant.
 */
export function smoothLoad(clean: tf.Tensor2D, scores: tf.Tensor2D, std: tf.Tensor2D, k: number): tf.Tensor1D {
  const [n, E] = scores.shape;
  const h = scores.dataSync();
  const thresholds = new Float32Array(n * E);
  for (let i = 0; i < n; i++) {
    const sorted = Array.from(h.subarray(i * E, (i + 1) * E)).sort((a, b) => b - a);
    const kth = sorted[k - 1];
    // An expert in the top k must beat the (k+1)-th score to stay; one outside must beat the k-th.
    const next = k < E ? sorted[k] : -Infinity;
    for (let e = 0; e < E; e++) thresholds[i * E + e] = h[i * E + e] >= kth ? next : kth;
  }
  const zscore = tf.div(tf.sub(clean, tf.tensor2d(thresholds.map((v) => (Number.isFinite(v) ? v : -1e9)), [n, E])), std);
  const phi = tf.mul(0.5, tf.add(1, tf.erf(tf.div(zscore, Math.SQRT2))));
  return tf.sum(phi, 0) as tf.Tensor1D;
}

layerClasses.register('MoeBlock', MoeBlock as never);
