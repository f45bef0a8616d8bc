import type * as tf from '@tensorflow/tfjs-core';
import type { LatencyTable } from './latency-table.js';
import type { Policy } from './policy.js';
import type { MixedRunner } from './runner.js';

/** What a controller may read besides the inputs; each field is used by the controllers that name it. */
export interface DecideContext {
  /** True labels of the batch, in order: only the oracle reads them (evaluation only). */
  labels?: ArrayLike<number>;
  /** Battery level in [0, 1] (resource controller). */
  battery?: number;
  /** Latency budget for this batch in milliseconds (resource controller, through its latency table). */
  latencyBudgetMs?: number;
}

/** A controller's answer for one batch. */
export interface Decision {
  /** Utilization per sample. */
  u: Float64Array;
  /**
   * MACs per sample spent on deciding beyond one forward pass at u: the controller's own network, a cascade's
   * earlier stages. Counted in every cost reported.
   */
  overheadMacs: Float64Array;
  /** Class scores when deciding already produced them (a cascade's last stage, the oracle), else null. */
  scores: tf.Tensor2D | null;
}

/** Decides a utilization per input: `decide(inputs, context) -> u per sample`. */
export interface Controller {
  /** The registry name it was created under. */
  readonly name: string;
  /** The utilizations it can choose, ascending. */
  readonly actions: readonly number[];
  decide(x: tf.Tensor, context?: DecideContext): Decision;
  /** Frees what the controller holds (not the runner). */
  dispose(): void;
}

/** What a controller is created with: the runner of the network it controls. */
export interface ControlEnv {
  runner: MixedRunner;
}

/** Options of the registered controllers; each reads the fields documented for it. */
export interface ControllerOptions {
  /** fixed: the utilization (default 1). */
  u?: number;
  /** resource, oracle: the actions (default u_k = k/10; resource: the latency table's levels when given). */
  actions?: number[];
  /** cascade: utilizations of the stages, ascending (default 0.25, 0.5, 1). */
  stages?: number[];
  /** cascade: re-run at the next stage while the top softmax probability is below this (default 0.9). */
  threshold?: number;
  /** resource: latency per level and batch size, for latency budgets. */
  latencyTable?: LatencyTable;
  /** bandit: the trained policy (see `loadController`). */
  policy?: Policy;
  /** bandit: restrict the argmax to these actions (default: all of the policy's). */
  allowed?: number[];
}
