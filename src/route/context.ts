import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { hashUniform } from '../util/rng.js';
import { seedFor } from '../layers/layer.js';
import type { GateEstimator, GateMode, Routing } from '../layers/types.js';
import { onesWithGradient } from './gates.js';
import { checkGateEstimator, checkGateThreshold, GATE_MODES } from './modes.js';

/** The efficiency term a training pass adds: `weight * (mean executed FLOPs ratio - target)^2`. */
export interface EfficiencyTarget {
  /** Mean executed FLOPs per sample (gates included) over the backbone's, in (0, 1]. */
  target: number;
  /** Weight of the squared deviation (it is scale-free: the ratio lies in [0, 1]). */
  weight: number;
}

/** The mean over gates of the share of its groups a gate executed, from `skipRates` (for gates that skip whole blocks: of blocks executed). */
export function executionRate(skipRates: Record<string, number>): number {
  const rates = Object.values(skipRates);
  return rates.length ? 1 - rates.reduce((a, r) => a + r, 0) / rates.length : NaN;
}

/** Settings of one forward pass's routing. */
export interface RoutingOptions {
  /** Seed of the `soft` decisions' random numbers (default 0). */
  seed?: number;
  /**
   * Position of this batch's first sample in the whole step's batch (a worker's shard starts further on):
   * random numbers depend on the sample's position in the step, not on how the step was split.
   */
  offset?: number;
  /** Inference threshold on gate probabilities (default 0.5). */
  threshold?: number;
  /** Gradient estimator of `soft` decisions (default 'sigmoid'). */
  estimator?: GateEstimator;
  /** The batch's labels, for gates supervised by the task (a training step). */
  labels?: ArrayLike<number>;
}

/** What a pass's gates decided and spent, in the input's sample order. */
interface Records {
  seed: number;
  offset: number;
  decisions: Map<string, Int32Array>;
  /** Each gate's route at full width. */
  full: Map<string, number>;
  executed: Float64Array;
  expected: { rows: Int32Array; macs: tf.Tensor1D }[];
  /** Per gate (soft mode): each part's executed share of the gate's groups per row, with a gradient. */
  rates: Map<string, tf.Tensor1D[]>;
  /** Per gate (hard mode): the logits of its first group, in input order (what `fitGateRates` ranks). */
  logits: Map<string, Float32Array>;
  losses: { name: string; value: tf.Scalar }[];
  labels?: Int32Array;
  /** Gates whose decisions are choices among unordered routes (`choose`). */
  choices: Set<string>;
  counters: Map<string, { events: number; of: number }>;
}


/**
 * The routing of one forward pass (see `Routing`): decisions, executed and expected MACs per sample, and the
 * auxiliary losses, recorded in the order of the batch the pass started with. Tensors it holds belong to the
 * caller's `tf.tidy` scope (the training step's gradient scope): read them before that scope ends.
 */
export class RoutingState implements Routing {
  readonly threshold: number;

  private constructor(
    readonly mode: GateMode,
    readonly rows: Int32Array,
    threshold: number,
    readonly estimator: GateEstimator,
    private readonly records: Records,
  ) {
    this.threshold = threshold;
  }

  /** The routing of a pass over a batch of `count` samples. */
  static start(mode: GateMode, count: number, options: RoutingOptions = {}): RoutingState {
    if (!GATE_MODES.includes(mode)) throw new DynnError(`unknown gate mode "${mode}"; expected one of ${GATE_MODES.join(', ')}`);
    const threshold = options.threshold ?? 0.5;
    checkGateThreshold(threshold);
    const estimator = options.estimator ?? 'sigmoid';
    checkGateEstimator(estimator);
    const rows = Int32Array.from({ length: count }, (_, i) => i);
    if (options.labels && options.labels.length !== count) throw new DynnError(`${options.labels.length} labels for a batch of ${count}`);
    const labels = options.labels ? Int32Array.from(options.labels) : undefined;
    const records: Records = { seed: options.seed ?? 0, offset: options.offset ?? 0, decisions: new Map(), full: new Map(), executed: new Float64Array(count), expected: [], rates: new Map(), logits: new Map(), losses: [], labels, choices: new Set(), counters: new Map() };
    return new RoutingState(mode, rows, threshold, estimator, records);
  }

  random(key: string): Float32Array {
    const { seed, offset } = this.records;
    const k = seedFor(key, 0);
    return Float32Array.from(this.rows, (r) => hashUniform(seed, k, offset + r));
  }

  get labels(): Int32Array | undefined {
    const all = this.records.labels;
    return all && Int32Array.from(this.rows, (r) => all[r]);
  }

  child(part: Int32Array): RoutingState {
    return new RoutingState(this.mode, Int32Array.from(part, (j) => this.rows[j]), this.threshold, this.estimator, this.records);
  }

  decide(name: string, routes: Int32Array, full: number): void {
    if (routes.length !== this.rows.length) throw new DynnError(`gate ${name}: ${routes.length} decisions for ${this.rows.length} rows`);
    this.records.full.set(name, full);
    let all = this.records.decisions.get(name);
    if (!all) this.records.decisions.set(name, (all = new Int32Array(this.records.executed.length).fill(-1)));
    this.rows.forEach((r, j) => (all![r] = routes[j]));
  }

  choose(name: string, routes: Int32Array, choices: number): void {
    this.decide(name, routes, choices - 1);
    this.records.choices.add(name);
  }

  count(name: string, events: number, of: number): void {
    const c = this.records.counters.get(name);
    if (c) {
      c.events += events;
      c.of += of;
    } else this.records.counters.set(name, { events, of });
  }

  /** Gates that chose among unordered routes (`choose`): their decisions skip nothing. */
  get choiceGates(): ReadonlySet<string> {
    return this.records.choices;
  }

  /** Counters added with `count`: events and opportunities. */
  get counters(): ReadonlyMap<string, { events: number; of: number }> {
    return this.records.counters;
  }

  spend(macs: ArrayLike<number>): void {
    if (macs.length !== this.rows.length) throw new DynnError(`${macs.length} costs for ${this.rows.length} rows`);
    this.rows.forEach((r, j) => (this.records.executed[r] += macs[j]));
  }

  expect(macs: tf.Tensor1D): void {
    if (this.mode !== 'soft') return;
    this.records.expected.push({ rows: this.rows, macs });
  }

  /**
   * Records, in `soft` mode, the share of its `groups` each row executes at gate `name`: `counts / groups` in
   * value with the gradient of the mean of `surrogate` ([rows, groups], straight-through), for a rate term
   * (`addRateLoss`).
   */
  executes(name: string, counts: Int32Array, groups: number, surrogate: tf.Tensor2D): void {
    if (this.mode !== 'soft') return;
    const hard = tf.tensor1d(Float32Array.from(counts, (k) => k / groups));
    const share = tf.add(hard, tf.sub(onesWithGradient(tf.mean(surrogate, 1)), 1)) as tf.Tensor1D;
    const parts = this.records.rates.get(name);
    if (parts) parts.push(share);
    else this.records.rates.set(name, [share]);
  }

  /**
   * Records, in `hard` mode, the logit of gate `name`'s first group for each row (`logits` [rows, G]), or with
   * `every` all G of them (row r's at r * G + g).
   */
  observe(name: string, logits: tf.Tensor2D, every = false): void {
    if (this.mode !== 'hard') return;
    const [n, G] = logits.shape;
    if (n !== this.rows.length) throw new DynnError(`gate ${name}: ${n} rows of logits for ${this.rows.length} rows`);
    const z = logits.dataSync();
    const per = every ? G : 1;
    let all = this.records.logits.get(name);
    if (!all) this.records.logits.set(name, (all = new Float32Array(this.records.executed.length * per).fill(NaN)));
    this.rows.forEach((r, j) => {
      for (let g = 0; g < per; g++) all![r * per + g] = z[j * G + g];
    });
  }

  /** Per gate (hard mode): its first group's logit per sample, or every logit of a gate observed whole (NaN where a sample never reached it). */
  get gateLogits(): ReadonlyMap<string, Float32Array> {
    return this.records.logits;
  }

  addLoss(name: string, value: tf.Scalar): void {
    this.records.losses.push({ name, value });
  }

  /** Each gate's decision per sample (-1 where a sample never reached that gate). */
  get decisions(): ReadonlyMap<string, Int32Array> {
    return this.records.decisions;
  }

  /** Each gate's route at full width (a switch's routes less one). */
  get fullRoutes(): ReadonlyMap<string, number> {
    return this.records.full;
  }

  /**
   * Adds ConvNet-AIG's target loss: `weight * mean over gates of (r_l - target)^2`, r_l the share of gate l's
   * groups the batch executed (for a gate that skips whole blocks, its execution rate). Only in `soft` mode
   * and when some gate recorded its rates. Returns the mean rate over gates (or NaN).
   */
  addRateLoss(target: EfficiencyTarget): number {
    if (this.mode !== 'soft' || this.records.rates.size === 0) return NaN;
    const rates = [...this.records.rates.values()].map((parts) => tf.mean(parts.length === 1 ? parts[0] : tf.concat(parts)) as tf.Scalar);
    const deviation = tf.mean(tf.square(tf.sub(tf.stack(rates), target.target))) as tf.Scalar;
    this.addLoss('efficiency', tf.mul(target.weight, deviation) as tf.Scalar);
    return rates.reduce((a, r) => a + r.dataSync()[0], 0) / rates.length;
  }

  /** Per gate: the share of its groups each sample skipped (NaN where a sample never reached it). */
  skipShares(): Map<string, Float64Array> {
    return new Map([...this.records.decisions].filter(([name]) => !this.records.choices.has(name)).map(([name, routes]) => {
      const full = this.records.full.get(name)!;
      return [name, Float64Array.from(routes, (r) => (r >= 0 ? 1 - r / full : NaN))];
    }));
  }

  /** Per gate: the mean share of its groups the samples that reached it skipped. */
  skipRates(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, shares] of this.skipShares()) {
      const reached = shares.filter((s) => !Number.isNaN(s));
      out[name] = reached.reduce((a, s) => a + s, 0) / Math.max(1, reached.length);
    }
    return out;
  }

  /** MACs the gated blocks really ran per sample, their gates included. */
  get executedMacs(): Float64Array {
    return this.records.executed;
  }

  /** The auxiliary losses added so far. */
  get losses(): readonly { name: string; value: tf.Scalar }[] {
    return this.records.losses;
  }

  /**
   * Adds the efficiency term to the losses: the mean over the batch of each sample's expected MACs (the
   * fixed part `staticMacs` plus what its gates expect to run) over `fullMacs`, against the target. Only in
   * `soft` mode and when some gate expected a cost. Returns the expected ratio's value (or NaN).
   */
  addEfficiencyLoss(staticMacs: number, fullMacs: number, target: EfficiencyTarget): number {
    if (this.mode !== 'soft' || this.records.expected.length === 0) return NaN;
    const n = this.records.executed.length;
    const perSample = this.records.expected.map(({ rows, macs }) =>
      rows.length === n && rows.every((r, i) => r === i) ? macs : tf.unsortedSegmentSum(macs, tf.tensor1d(rows, 'int32'), n),
    );
    const ratio = tf.div(tf.add(staticMacs, tf.mean(tf.addN(perSample))), fullMacs) as tf.Scalar;
    this.addLoss('efficiency', tf.mul(target.weight, tf.square(tf.sub(ratio, target.target))) as tf.Scalar);
    return ratio.dataSync()[0];
  }
}
