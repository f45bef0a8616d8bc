import type * as tf from '@tensorflow/tfjs-core';

/** Per-sample shape without the batch axis: [H, W, C] for images (NHWC), [F] for features. */
export type Shape = number[];

/**
 * Which of a feature tensor's full-width channels it holds, in order. Sliced execution threads this
 * from layer to layer, so each layer slices its weights to exactly the channels its input really has.
 */
export interface ChannelSel {
  /** Channels of the full-width tensor. */
  full: number;
  /** Channels present. */
  count: number;
  /** The full-width indices of the channels present, or null when they are the first `count`. */
  index: Int32Array | null;
}

/** One operating point of a network: which groups and blocks run. */
export interface Plan {
  /** The utilization the plan was made for. */
  u: number;
  /** Widthwise blocks: active group indices, sorted. */
  groups: Map<string, Int32Array>;
  /** Depth-gated blocks: whether each runs. */
  depth: Map<string, boolean>;
  /** The operating level (active groups, or active blocks for depth gating): picks BatchNorm statistics. */
  level: number;
}

/** Collects per-level BatchNorm batch moments during calibration. */
export interface MomentSink {
  add(layer: string, level: number, sel: ChannelSel, count: number, mean: Float32Array, variance: Float32Array): void;
}

/**
 * How gates inside a network decide, per sample:
 * - `soft`: training; decisions are sampled from the gates' probabilities and gradients reach the gates
 *   through a straight-through factor (value 1), so the executed computation is still the hard one;
 * - `hard`: inference; deterministic decisions (probability against a threshold), skipped work not done;
 * - `full`: gates not run, every route at full width (step 1 of two-step training, the plain backbone);
 * - `masked`: the field's baseline, labelled as such: hard decisions, but every channel computed and then
 *   multiplied by the decision mask. For measuring what real skipping saves, never for serving.
 */
export type GateMode = 'soft' | 'hard' | 'full' | 'masked';

/**
 * How `soft` decisions get gradients: `sigmoid` samples each decision from the gate's probabilities and
 * passes the probability's gradient straight through (ACS: the probability as the surrogate of the binary
 * decision); `gumbel` perturbs each logit with logistic noise, decides by sign and passes the gradient of
 * the relaxed sigmoid (Gumbel-sigmoid straight-through, temperature 1, as ConvNet-AIG).
 */
export type GateEstimator = 'sigmoid' | 'gumbel';

/**
 * The per-sample side of one forward pass, shared by every gate in the network (`RoutingState` in route/
 * implements it). Decisions and costs are recorded per sample of the batch the pass started with, whatever
 * part of it a nested gate sees.
 */
export interface Routing {
  readonly mode: GateMode;
  /** Inference threshold on gate probabilities (`hard` and `masked`). */
  readonly threshold: number;
  /** The gradient estimator of `soft` decisions. */
  readonly estimator: GateEstimator;
  /**
   * Uniform random numbers in [0, 1), one per current row, for gate `key`'s `soft` decisions: each depends on
   * the step's seed, the key and the sample's position in the step, so any split into worker shards repeats.
   */
  random(key: string): Float32Array;
  /** Batch indices (in the pass's input) of the rows the current gate sees. */
  readonly rows: Int32Array;
  /** The same routing for a part of the current rows (`part` indexes the current rows). */
  child(part: Int32Array): Routing;
  /**
   * Records gate `name`'s decision for the current rows: the groups each row runs, of `full` at full width
   * (the share a gate skips is 1 - route / full).
   */
  decide(name: string, routes: Int32Array, full: number): void;
  /** Adds executed MACs per current row (what the decisions really ran, the gate's own included). */
  spend(macs: ArrayLike<number>): void;
  /** Adds expected MACs per current row as a tensor a loss can differentiate ([rows]); `soft` mode only. */
  expect(macs: tf.Tensor1D): void;
  /**
   * Records the share of its `groups` each current row executes at gate `name` (`counts`, with the gradient of
   * `surrogate` [rows, groups]), for a per-gate rate term; `soft` mode only.
   */
  executes(name: string, counts: Int32Array, groups: number, surrogate: tf.Tensor2D): void;
  /**
   * Records gate `name`'s logits [rows, groups] (the first group's, for fitting gates to a rate; with `every`,
   * each of them: a gate whose every output is one decision of its own, a spatial mask's positions); `hard` mode only.
   */
  observe(name: string, logits: tf.Tensor2D, every?: boolean): void;
  /** Adds an auxiliary loss term (a scalar the training step adds to the task loss). */
  addLoss(name: string, value: tf.Scalar): void;
  /**
   * Records gate `name`'s choice of one of `choices` unordered routes for the current rows (an expert of a
   * mixture of experts; -1: none ran). Unlike `decide`, a choice skips no share of anything.
   */
  choose(name: string, routes: Int32Array, choices: number): void;
  /** Adds `events` out of `of` to counter `name` (a mixture's assignments that overflowed an expert's capacity). */
  count(name: string, events: number, of: number): void;
  /** The current rows' labels, when the pass knows them (a training step): what supervised gates learn from. */
  readonly labels?: Int32Array;
}

/** Where a forward pass reports each conditional layer's mixing weights [rows, E] (routing statistics). */
export interface MixtureSink {
  add(layer: string, weights: tf.Tensor2D): void;
}

/** What a forward pass needs besides the input. */
export interface RunContext {
  plan: Plan;
  /** Training mode: BatchNorm uses batch statistics. */
  training: boolean;
  /** Calibration mode: BatchNorm uses batch statistics and reports them here. */
  moments?: MomentSink;
  /** Per-sample decisions of the gates inside the network; absent: no gate runs (as `full`). */
  routing?: Routing;
  /** Receives each conditional layer's mixing weights (routing statistics); absent: not reported. */
  mixtures?: MixtureSink;
}

/** A weight with its deterministic dotted name (`c2.conv.kernel`). */
export interface Weight {
  name: string;
  variable: tf.Variable;
  trainable: boolean;
}

/** Cost of one layer at one operating point (DTNN Appendix A.1: FLOPs = 2 x MACs). */
export interface LayerCost {
  name: string;
  kind: string;
  macs: number;
  /** Active parameters (weights the operating point really reads). */
  params: number;
  /**
   * The gated block this cost belongs to, when a per-sample decision chooses whether it is spent (the gate's
   * own cost included): per sample, the block reports what it really ran through `Routing.spend`.
   */
  routed?: string;
  /** A gate's own cost (not part of the backbone). */
  gate?: boolean;
}

/** A throttleable unit of a network, as the planner sees it. */
export type BlockInfo =
  | { kind: 'width'; name: string; groups: number }
  | { kind: 'depth'; name: string; stage: number };
