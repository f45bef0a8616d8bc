import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/types.js';
import { toFloat } from '../data/imageset.js';
import { gatherBatch } from '../train/batch.js';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { checkActions } from './actions.js';
import type { Policy } from './policy.js';
import type { LevelTable } from './table.js';
import type { Controller, Decision } from './types.js';

/** What the bandit's reward counts as the cost of an action. */
export type BanditCost = 'macs' | 'u';

/** The reward costs `trainBandit` accepts. */
export const BANDIT_COSTS: readonly BanditCost[] = ['macs', 'u'];

/**
 * What the policy learns from: `bandit`, the reward of one epsilon-greedy action per image (DTNN Algorithm 1);
 * or `full`, the reward of every action, known because the data path is frozen and its answer at every level
 * is precomputed. Full feedback trains the reward model (objective `reward`): the expected-reward loss
 * -sum_k pi(u_k|x) r(x, u_k) was tried and its gradient vanished once the softmax saturated, on one action
 * for every input.
 */
export type BanditFeedback = 'bandit' | 'full';

export const BANDIT_FEEDBACKS: readonly BanditFeedback[] = ['bandit', 'full'];

/**
 * How the K outputs learn: `policy-gradient`, logits of pi(u|x) under the paper's loss -r log pi(u|x); or
 * `reward`, a reward model: each output regresses its action's reward (mean squared error), and the action
 * is the argmax either way. With bandit feedback only the taken action's output is regressed.
 */
export type BanditObjective = 'policy-gradient' | 'reward';

export const BANDIT_OBJECTIVES: readonly BanditObjective[] = ['policy-gradient', 'reward'];

/** Options of contextual-bandit training (DTNN Algorithm 1); unset fields take `BANDIT_DEFAULTS`. */
export interface BanditOptions {
  /** Passes over the sample set (default 10). */
  epochs?: number;
  /** Samples per policy update (default 128). */
  batchSize?: number;
  /** Adam learning rate (default 1e-3). */
  lr?: number;
  /** Final exploration rate of bandit feedback: epsilon decays linearly from 1 to this over the first half of training (default 0.1). */
  epsilon?: number;
  /** gamma1 of the wrong-answer penalty -(c + gamma1)(u + gamma2) (default GAMMA1_DEFAULT; the paper's 0.5). */
  gamma1?: number;
  /** gamma2 of the wrong-answer penalty (default 1.5). */
  gamma2?: number;
  /** The cost in the reward: the measured MACs ratio of the action (default) or u itself. */
  cost?: BanditCost;
  /**
   * Weight each sample's loss by pi(a|x) / mu(a|x), mu the epsilon-greedy behaviour policy (default true).
   * Without it the loss -r log pi is off-policy under exploration and unbounded below for negative rewards
   * (pi(a) -> 0 sends it to -infinity), and the policy collapses onto one action for every input.
   */
  importanceWeights?: boolean;
  /** Every action's reward (default) or one sampled action's reward per image (the paper's; the default with objective policy-gradient). */
  feedback?: BanditFeedback;
  /** A reward model (default) or the paper's policy gradient (bandit feedback only). */
  objective?: BanditObjective;
  /** Seed of sample order and exploration (default 0). */
  seed?: number;
  /** Called after every epoch. */
  onEpoch?: (r: BanditEpoch) => void;
}

/** The default gamma1 (see `BANDIT_DEFAULTS`). */
export const GAMMA1_DEFAULT = 4;

/**
 * What `trainBandit` uses for unset options. The paper's setting (policy gradient, bandit feedback, gamma1
 * 0.5) learned to send every input to the cheapest action on Fashion-MNIST and sat below the fixed-u curve
 * by its own cost; a reward model with every action's reward and a wrong answer weighted by gamma1 = 4
 * escalates the inputs it expects to get wrong and sits above it (README, "Adaptive control";
 * bench/controller-defaults.ts).
 */
export const BANDIT_DEFAULTS = {
  epochs: 10,
  batchSize: 128,
  lr: 1e-3,
  epsilon: 0.1,
  gamma1: GAMMA1_DEFAULT,
  gamma2: 1.5,
  cost: 'macs' as BanditCost,
  importanceWeights: true,
  feedback: 'full' as BanditFeedback,
  objective: 'reward' as BanditObjective,
  seed: 0,
};

/** Every option of `trainBandit` with its default filled in (what a controller checkpoint records). */
export function resolveBanditOptions(options: BanditOptions = {}): Omit<Required<BanditOptions>, 'onEpoch'> {
  const set = Object.fromEntries(Object.entries(options).filter(([k, v]) => v !== undefined && k !== 'onEpoch'));
  // The policy gradient learns from the one action taken: asking for it without a feedback means the paper's.
  const feedback = options.feedback ?? (options.objective === 'policy-gradient' ? 'bandit' : BANDIT_DEFAULTS.feedback);
  return { ...BANDIT_DEFAULTS, ...set, feedback };
}

/** One epoch of bandit training, measured on the greedy actions it took. */
export interface BanditEpoch {
  epoch: number;
  epsilon: number;
  meanReward: number;
  /** Accuracy of the frozen network at the policy's greedy choices. */
  accuracy: number;
  meanU: number;
  /** Mean FLOPs ratio of the greedy choices, the controller's own cost included. */
  meanFlopsRatio: number;
}

/**
 * The reward of DTNN Eq. 14: exp(1 - u)(1 - u) when the network is right at u, -(c + gamma1)(u + gamma2)
 * when it is wrong with softmax confidence c. `cost` stands for u (the action or its MACs ratio).
 */
export function reward(right: boolean, confidence: number, cost: number, gamma1 = 0.5, gamma2 = 1.5): number {
  return right ? Math.exp(1 - cost) * (1 - cost) : -(confidence + gamma1) * (cost + gamma2);
}

/** The index of the largest of `k` values at `row * k`, among allowed ones. */
function argmaxRow(values: Float32Array, row: number, k: number, allowed?: Uint8Array): number {
  let best = -1;
  for (let j = 0; j < k; j++) {
    if (allowed && !allowed[j]) continue;
    if (best < 0 || values[row * k + j] > values[row * k + best]) best = j;
  }
  return best;
}

/**
 * Trains the controller as a contextual bandit with the data path frozen (DTNN Algorithm 1): for each sample
 * the policy picks an action (epsilon-greedy), the reward comes from the frozen network's precomputed answer
 * at that action (`table`, over the same samples), and the loss is -r log pi(u | x), importance-weighted
 * by default (see `importanceWeights`). `objective: 'reward'` regresses the rewards instead, and
 * `feedback: 'full'` learns from every action's reward (see `BanditObjective`, `BanditFeedback`).
 */
export function trainBandit(policy: Policy, set: ImageSet, table: LevelTable, options: BanditOptions = {}): BanditEpoch[] {
  const { epochs, batchSize: batch, epsilon: finalEps, gamma1: g1, gamma2: g2, cost: costKind, importanceWeights: weighted, feedback, objective, lr, seed } = resolveBanditOptions(options);
  if (!Number.isInteger(epochs) || epochs < 1) throw new DynnError(`epochs must be a positive integer, got ${epochs}`);
  if (!Number.isInteger(batch) || batch < 1) throw new DynnError(`batch size must be a positive integer, got ${batch}`);
  if (!(finalEps >= 0 && finalEps <= 1)) throw new DynnError(`epsilon must be in [0, 1], got ${finalEps}`);
  if (!BANDIT_COSTS.includes(costKind)) throw new DynnError(`unknown bandit cost "${costKind}"; expected one of ${BANDIT_COSTS.join(', ')}`);
  if (!BANDIT_FEEDBACKS.includes(feedback)) throw new DynnError(`unknown bandit feedback "${feedback}"; expected one of ${BANDIT_FEEDBACKS.join(', ')}`);
  if (!BANDIT_OBJECTIVES.includes(objective)) throw new DynnError(`unknown bandit objective "${objective}"; expected one of ${BANDIT_OBJECTIVES.join(', ')}`);
  if (feedback === 'full' && objective !== 'reward') throw new DynnError('full feedback trains a reward model (objective reward); policy-gradient needs bandit feedback');
  if (table.count !== set.count) throw new DynnError('the level table was computed on another sample set');
  if (table.us.join() !== policy.actions.join()) throw new DynnError('the level table and the policy have different actions');
  const K = policy.actions.length;
  const costs = table.us.map((u, k) => (costKind === 'u' ? u : table.macs[k] / table.fullMacs));
  const ownRatio = policy.macs / table.fullMacs;
  const rng = new Rng(seed);
  const opt = tf.train.adam(lr);
  const vars = policy.net.trainableWeights().map((w) => w.variable);
  const per = set.height * set.width * set.channels;
  const buf = new Float32Array(batch * per);
  const labelsBuf = new Int32Array(batch);
  const history: BanditEpoch[] = [];
  const steps = Math.ceil(set.count / batch);
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = rng.permutation(set.count);
      let rSum = 0;
      let right = 0;
      let uSum = 0;
      let macsSum = 0;
      let eps = finalEps;
      for (let step = 0; step < steps; step++) {
        const progress = (epoch * steps + step) / (epochs * steps);
        // Full feedback needs no exploration: every action's reward is seen.
        eps = feedback === 'full' ? 0 : progress < 0.5 ? 1 - (1 - finalEps) * (progress / 0.5) : finalEps;
        const idx = order.subarray(step * batch, Math.min(set.count, (step + 1) * batch));
        const n = idx.length;
        gatherBatch(set, idx, buf, labelsBuf);
        const x = tf.tensor(buf.subarray(0, n * per), [n, set.height, set.width, set.channels]);
        const { value, grads } = tf.variableGrads(() => {
          const logits = policy.logits(x);
          const greedyScores = logits.dataSync() as Float32Array;
          // The greedy action of row j (sample i), counted in the epoch's report.
          const greedyOf = (j: number, i: number): number => {
            const greedy = argmaxRow(greedyScores, j, K);
            right += table.correct[greedy][i] === 1 ? 1 : 0;
            uSum += table.us[greedy];
            macsSum += table.macs[greedy];
            return greedy;
          };
          if (feedback === 'full') {
            const all = new Float32Array(n * K);
            for (let j = 0; j < n; j++) {
              const i = idx[j];
              const greedy = greedyOf(j, i);
              for (let a = 0; a < K; a++) all[j * K + a] = reward(table.correct[a][i] === 1, table.confidence[a][i], costs[a], g1, g2);
              rSum += all[j * K + greedy];
            }
            return tf.losses.meanSquaredError(tf.tensor2d(all, [n, K]), logits) as tf.Scalar;
          }
          const pi = weighted && objective === 'policy-gradient' ? (tf.softmax(logits).dataSync() as Float32Array) : null;
          const actions = new Int32Array(n);
          const rewards = new Float32Array(n);
          for (let j = 0; j < n; j++) {
            const i = idx[j];
            const greedy = greedyOf(j, i);
            const a = rng.next() < eps ? rng.int(K) : greedy;
            actions[j] = a;
            const r = reward(table.correct[a][i] === 1, table.confidence[a][i], costs[a], g1, g2);
            rSum += r;
            rewards[j] = pi ? (r * pi[j * K + a]) / (eps / K + (a === greedy ? 1 - eps : 0)) : r;
          }
          const taken = tf.oneHot(tf.tensor1d(actions, 'int32'), K);
          if (objective === 'reward') return tf.losses.meanSquaredError(tf.tensor1d(rewards), tf.sum(tf.mul(logits, taken), 1)) as tf.Scalar;
          const chosen = tf.sum(tf.mul(tf.logSoftmax(logits), taken), 1);
          return tf.neg(tf.mean(tf.mul(chosen, tf.tensor1d(rewards)))) as tf.Scalar;
        }, vars);
        opt.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
        tf.dispose([x, value, ...Object.values(grads)]);
      }
      policy.weightsChanged();
      const r: BanditEpoch = {
        epoch: epoch + 1,
        epsilon: eps,
        meanReward: rSum / set.count,
        accuracy: right / set.count,
        meanU: uSum / set.count,
        meanFlopsRatio: macsSum / set.count / table.fullMacs + ownRatio,
      };
      history.push(r);
      options.onEpoch?.(r);
    }
  } finally {
    opt.dispose();
  }
  return history;
}

/** Action probabilities of the policy for every sample of a set, row-major [count x K]. */
export function policyProbabilities(policy: Policy, set: ImageSet, batchSize = 500): Float32Array {
  const K = policy.actions.length;
  const out = new Float32Array(set.count * K);
  const per = set.height * set.width * set.channels;
  const buf = new Float32Array(Math.min(batchSize, set.count) * per);
  for (let start = 0; start < set.count; start += batchSize) {
    const n = Math.min(batchSize, set.count - start);
    const x = toFloat(set, start, n, buf);
    const p = tf.tidy(() => policy.probabilities(tf.tensor(x, [n, set.height, set.width, set.channels])));
    out.set(p.dataSync() as Float32Array, start * K);
    p.dispose();
  }
  return out;
}

/** The greedy action index per sample from policy probabilities, restricted to allowed actions. */
export function greedyActions(probs: Float32Array, K: number, allowed?: Uint8Array): Int32Array {
  const n = probs.length / K;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = argmaxRow(probs, i, K, allowed);
  return out;
}

/** The learned contextual-bandit controller: u = argmax_k pi(u_k | x) (DTNN Eq. 15). */
export class BanditController implements Controller {
  readonly name = 'bandit';
  readonly actions: readonly number[];
  private readonly allowed: Uint8Array | undefined;

  constructor(
    readonly policy: Policy,
    allowed?: number[],
  ) {
    this.actions = policy.actions;
    if (allowed) {
      const set = new Set(checkActions(allowed));
      for (const u of set) if (!policy.actions.includes(u)) throw new DynnError(`action ${u} is not one of the controller's (${policy.actions.join(', ')})`);
      this.allowed = Uint8Array.from(policy.actions, (u) => (set.has(u) ? 1 : 0));
    }
  }

  decide(x: tf.Tensor): Decision {
    const n = x.shape[0];
    const p = this.policy.probabilities(x);
    const probs = p.dataSync() as Float32Array;
    p.dispose();
    const actions = greedyActions(probs, this.actions.length, this.allowed);
    return {
      u: Float64Array.from(actions, (k) => this.actions[k]),
      overheadMacs: new Float64Array(n).fill(this.policy.macs),
      scores: null,
    };
  }

  /** The policy belongs to whoever loaded it. */
  dispose(): void {}
}

