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

/** What a forward pass needs besides the input. */
export interface RunContext {
  plan: Plan;
  /** Training mode: BatchNorm uses batch statistics. */
  training: boolean;
  /** Calibration mode: BatchNorm uses batch statistics and reports them here. */
  moments?: MomentSink;
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
}

/** A throttleable unit of a network, as the planner sees it. */
export type BlockInfo =
  | { kind: 'width'; name: string; groups: number }
  | { kind: 'depth'; name: string; stage: number };
