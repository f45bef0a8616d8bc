import * as tf from '@tensorflow/tfjs-core';
import type { ImageSet } from '../data/types.js';
import { gatherBatch } from '../train/batch.js';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { checkActions, operatingPoints } from './actions.js';
import { reward, resolveBanditOptions, type BanditOptions } from './bandit.js';
import type { ControlledRun } from './evaluate.js';
import { Policy } from './policy.js';
import type { MixedRunner } from './runner.js';
import type { LevelTable } from './table.js';

/*
 * The temporal controller (NaviSlim's): on a stream, what the network computed for frame t, at the operating
 * point it ran, chooses frame t+1's. A per-frame controller must look at frame t before it runs: its own
 * network costs on every frame, and the more it computes to decide, the less is left to save. This one reads
 * the class probabilities frame t already produced, so deciding costs a few hundred MACs.
 */

/** What the temporal policy reads of frame t: its probabilities, their top, margin and entropy, and the action it ran at. */
export function temporalFeatureSize(numClasses: number, actions: number): number {
  return numClasses + 3 + actions;
}

/** Writes the features of one frame (its class probabilities `p`, run at action index `a` of K) into `out` at `row`. */
function writeFeatures(p: ArrayLike<number>, a: number, K: number, out: Float32Array, row: number): void {
  const C = p.length;
  const D = temporalFeatureSize(C, K);
  const o = row * D;
  let top = 0;
  let second = 0;
  let entropy = 0;
  for (let c = 0; c < C; c++) {
    const v = p[c];
    out[o + c] = v;
    if (v > top) [top, second] = [v, top];
    else if (v > second) second = v;
    if (v > 0) entropy -= v * Math.log(v);
  }
  out[o + C] = top;
  out[o + C + 1] = top - second;
  out[o + C + 2] = C > 1 ? entropy / Math.log(C) : 0;
  for (let k = 0; k < K; k++) out[o + C + 3 + k] = k === a ? 1 : 0;
}

/**
 * A temporal policy: an MLP whose K outputs are each action's expected reward for the next frame. With
 * `resolutions`, its actions are every (u, r) of `actions` x `resolutions` (`operatingPoints`): frame t+1 also
 * runs at the input resolution r (NaviSlim's input-layer slimming).
 */
export function temporalPolicy(numClasses: number, actions: number[], options: { hidden?: number; seed?: number; resolutions?: number[] } = {}): Policy {
  const points = options.resolutions ? operatingPoints(actions, options.resolutions) : { actions: checkActions(actions) };
  return new Policy({ inputShape: [temporalFeatureSize(numClasses, points.actions.length)], ...points, architecture: 'mlp', hidden: options.hidden ?? 32, seed: options.seed });
}

/** Whether a policy plans the next frame (an MLP on frame features) rather than reading the input. */
export const isTemporal = (policy: Policy): boolean => policy.args.architecture === 'mlp';

/**
 * Plans frame t+1 from frame t: `next(probabilities, actions)` gives each stream's next action index. The
 * first frame of a stream runs at `start` (default: the top action; nothing is known of it yet).
 */
export class TemporalController {
  readonly name = 'temporal';
  readonly actions: readonly number[];
  /** Each action's input resolution, when the actions are operating points (u, r). */
  readonly resolutions?: readonly number[];
  /** The action index every stream starts at. */
  readonly start: number;

  constructor(
    readonly policy: Policy,
    start?: number,
  ) {
    if (!isTemporal(policy)) throw new DynnError('a temporal controller needs a temporal policy (dynn controller train --temporal)');
    this.actions = policy.actions;
    this.resolutions = policy.resolutions;
    this.start = start === undefined ? this.actions.length - 1 : this.actions.indexOf(start);
    if (this.start < 0) throw new DynnError(`start action ${start} is not one of the controller's (${this.actions.join(', ')})`);
  }

  /** MACs of one decision (counted on every frame). */
  get macs(): number {
    return this.policy.macs;
  }

  /** Next action index per stream from this frame's probabilities ([n, C] row-major) and the action indices it ran at. */
  next(probabilities: Float32Array, ran: ArrayLike<number>): Int32Array {
    const n = ran.length;
    const K = this.actions.length;
    const C = probabilities.length / n;
    if (!Number.isInteger(C) || temporalFeatureSize(C, K) !== this.policy.args.inputShape[0]) {
      throw new DynnError(`the temporal controller reads ${this.policy.args.inputShape[0] - 3 - K} class probabilities per frame, got ${probabilities.length} values for ${n} frames`);
    }
    const feats = new Float32Array(n * temporalFeatureSize(C, K));
    for (let i = 0; i < n; i++) writeFeatures(probabilities.subarray(i * C, (i + 1) * C), ran[i], K, feats, i);
    const p = tf.tidy(() => this.policy.probabilities(tf.tensor2d(feats, [n, temporalFeatureSize(C, K)])));
    const out = tf.tidy(() => tf.argMax(p, 1));
    const next = Int32Array.from(out.dataSync());
    tf.dispose([p, out]);
    return next;
  }
}

/** Whether a level table was computed at a policy's actions (and resolutions). */
function sameActions(table: LevelTable, policy: Policy): boolean {
  return table.us.join() === policy.actions.join() && String(table.resolutions ?? '') === String(policy.resolutions ?? '');
}

/** The frames of each sequence of a stream, in order. */
export function sequencesOf(set: ImageSet): Int32Array[] {
  if (!set.sequence) throw new DynnError('a temporal controller needs a stream: frames in sequences (--dataset fashion-mnist-stream)');
  const bySeq = new Map<number, number[]>();
  for (let i = 0; i < set.count; i++) {
    const s = set.sequence[i];
    const frames = bySeq.get(s);
    if (frames) frames.push(i);
    else bySeq.set(s, [i]);
  }
  return [...bySeq.values()].map((f) => Int32Array.from(f));
}

/**
 * Runs a temporal controller over every sequence of a stream the way a deployment does, all sequences side by
 * side: frame t of every sequence runs as one batch, grouped by its planned operating point
 * (`MixedRunner.predict`, at its planned resolution too when the actions have one), and its probabilities plan
 * frame t+1. Each frame's cost is its pass plus one decision.
 */
export function runTemporal(controller: TemporalController, runner: MixedRunner, set: ImageSet): ControlledRun {
  const seqs = sequencesOf(set);
  const per = set.height * set.width * set.channels;
  const predictions = new Int32Array(set.count);
  const u = new Float64Array(set.count);
  const macs = new Float64Array(set.count);
  const res = controller.resolutions;
  const resolution = res ? new Float64Array(set.count) : undefined;
  const state = new Int32Array(seqs.length).fill(controller.start);
  const longest = Math.max(...seqs.map((s) => s.length));
  const buf = new Float32Array(seqs.length * per);
  const labels = new Int32Array(seqs.length);
  for (let t = 0; t < longest; t++) {
    const live = seqs.map((s, q) => (t < s.length ? q : -1)).filter((q) => q >= 0);
    const frames = Int32Array.from(live, (q) => seqs[q][t]);
    const n = frames.length;
    gatherBatch(set, frames, buf, labels);
    const us = Float64Array.from(live, (q) => controller.actions[state[q]]);
    const rs = res && Float64Array.from(live, (q) => res[state[q]]);
    const probs = tf.tidy(() => tf.softmax(runner.predict(tf.tensor(buf.subarray(0, n * per), [n, set.height, set.width, set.channels]), us, rs)));
    const p = probs.dataSync() as Float32Array;
    probs.dispose();
    const C = p.length / n;
    const next = controller.next(p, Int32Array.from(live, (q) => state[q]));
    live.forEach((q, j) => {
      const f = frames[j];
      let best = 0;
      for (let c = 1; c < C; c++) if (p[j * C + c] > p[j * C + best]) best = c;
      predictions[f] = best;
      u[f] = us[j];
      macs[f] = runner.macs(us[j], rs?.[j]) + controller.macs;
      if (resolution) resolution[f] = rs![j];
      state[q] = next[j];
    });
  }
  return { predictions, u, macs, ...(resolution && { resolution }) };
}

/** One epoch of temporal training, on its own rows (every frame with a successor, at every action). */
export interface TemporalEpoch {
  epoch: number;
  /** Mean squared error of the predicted rewards. */
  loss: number;
  /** Mean reward of the greedy next action. */
  meanReward: number;
  /** Accuracy on the next frame at the greedy action, and its mean FLOPs ratio (the decision's cost included). */
  accuracy: number;
  meanFlopsRatio: number;
}

/** The bandit's options that apply (epochs, batch size, learning rate, reward and cost, seed), and a per-epoch callback. */
export type TemporalOptions = Pick<BanditOptions, 'epochs' | 'batchSize' | 'lr' | 'gamma1' | 'gamma2' | 'cost' | 'seed'> & { onEpoch?: (e: TemporalEpoch) => void };

/**
 * Trains a temporal policy with the network frozen, as a contextual bandit with full feedback (a reward model,
 * `BANDIT_DEFAULTS`' reward and costs): a row is a frame t that has a successor, seen as if it had run at each
 * action in turn (`table.probabilities` holds the frozen network's answer at every action), and its targets
 * are every action's reward on frame t+1.
 */
export function trainTemporal(policy: Policy, set: ImageSet, table: LevelTable, options: TemporalOptions = {}): TemporalEpoch[] {
  const { onEpoch, ...rest } = options;
  const { epochs, batchSize: batch, gamma1: g1, gamma2: g2, cost: costKind, lr, seed } = resolveBanditOptions(rest);
  if (!isTemporal(policy)) throw new DynnError('trainTemporal needs a temporal policy (temporalPolicy)');
  if (!table.probabilities) throw new DynnError('trainTemporal needs the level table with its probabilities (levelTable(..., { probabilities: true }))');
  if (table.count !== set.count) throw new DynnError('the level table was computed on another sample set');
  if (!sameActions(table, policy)) throw new DynnError('the level table and the policy have different actions');
  if (costKind === 'u' && policy.resolutions) throw new DynnError('--cost u does not see the input resolution; actions (u, r) are charged their FLOPs (--cost macs)');
  if (!Number.isInteger(epochs) || epochs < 1) throw new DynnError(`epochs must be a positive integer, got ${epochs}`);
  if (!Number.isInteger(batch) || batch < 1) throw new DynnError(`batch size must be a positive integer, got ${batch}`);
  const K = policy.actions.length;
  const C = table.probabilities[0].length / set.count;
  const D = temporalFeatureSize(C, K);
  if (D !== policy.args.inputShape[0]) throw new DynnError(`the policy reads ${policy.args.inputShape[0]} features; frames of ${C} classes give ${D}`);
  // Every frame that has a successor, and that successor.
  const pairs: number[] = [];
  const nextOf = new Int32Array(set.count).fill(-1);
  for (const frames of sequencesOf(set)) {
    for (let t = 0; t + 1 < frames.length; t++) {
      pairs.push(frames[t]);
      nextOf[frames[t]] = frames[t + 1];
    }
  }
  if (pairs.length === 0) throw new DynnError('the stream has no frame with a successor to learn from');
  const costs = table.us.map((u, k) => (costKind === 'u' ? u : table.macs[k] / table.fullMacs));
  const ownRatio = policy.macs / table.fullMacs;
  // Every action's reward on each frame, once.
  const rewards = new Float32Array(set.count * K);
  for (let i = 0; i < set.count; i++) for (let a = 0; a < K; a++) rewards[i * K + a] = reward(table.correct[a][i] === 1, table.confidence[a][i], costs[a], g1, g2);
  const rows = pairs.length * K;
  const rng = new Rng(seed);
  const opt = tf.train.adam(lr);
  const vars = policy.net.trainableWeights().map((w) => w.variable);
  const feats = new Float32Array(batch * D);
  const targets = new Float32Array(batch * K);
  const history: TemporalEpoch[] = [];
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = rng.permutation(rows);
      let lossSum = 0;
      let rSum = 0;
      let right = 0;
      let macsSum = 0;
      for (let start = 0; start < rows; start += batch) {
        const n = Math.min(batch, rows - start);
        for (let j = 0; j < n; j++) {
          const r = order[start + j];
          const frame = pairs[Math.floor(r / K)];
          const ran = r % K;
          writeFeatures(table.probabilities[ran].subarray(frame * C, (frame + 1) * C), ran, K, feats, j);
          targets.set(rewards.subarray(nextOf[frame] * K, (nextOf[frame] + 1) * K), j * K);
        }
        const { value, grads } = tf.variableGrads(() => {
          const out = policy.logits(tf.tensor2d(feats.subarray(0, n * D), [n, D]));
          const scores = out.dataSync() as Float32Array;
          for (let j = 0; j < n; j++) {
            let g = 0;
            for (let a = 1; a < K; a++) if (scores[j * K + a] > scores[j * K + g]) g = a;
            const next = nextOf[pairs[Math.floor(order[start + j] / K)]];
            rSum += rewards[next * K + g];
            right += table.correct[g][next];
            macsSum += table.macs[g];
          }
          return tf.losses.meanSquaredError(tf.tensor2d(targets.subarray(0, n * K), [n, K]), out) as tf.Scalar;
        }, vars);
        lossSum += (value.dataSync()[0] as number) * n;
        opt.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
        tf.dispose([value, ...Object.values(grads)]);
      }
      policy.weightsChanged();
      const e: TemporalEpoch = { epoch: epoch + 1, loss: lossSum / rows, meanReward: rSum / rows, accuracy: right / rows, meanFlopsRatio: macsSum / rows / table.fullMacs + ownRatio };
      history.push(e);
      onEpoch?.(e);
    }
  } finally {
    opt.dispose();
  }
  return history;
}

/**
 * What a sequence-level policy gradient maximizes (NaviSlim's two problems), per sequence of frames run at the
 * sampled actions: `budget`, accuracy within a FLOPs budget (Eq. 2: mean correct - lambda * the mean FLOPs
 * ratio's excess over the budget); `beta`, least compute at beta x the full network's accuracy (Eq. 1: - mean
 * FLOPs ratio - lambda * the accuracy's shortfall under beta x full).
 */
export type SequenceObjective = { kind: 'budget'; budget: number } | { kind: 'beta'; beta: number };

/** Options of `trainTemporalSequences`: the objective, its penalty weight and the usual training settings. */
export interface SequenceOptions {
  objective: SequenceObjective;
  /** Weight of the constraint's violation (default 10). */
  lambda?: number;
  /** Passes over the sequences (default 30). */
  epochs?: number;
  /** Sequences per update (default 16). */
  batchSize?: number;
  /** Adam learning rate (default 1e-2). */
  lr?: number;
  seed?: number;
  onEpoch?: (e: { epoch: number; meanReturn: number; accuracy: number; meanFlopsRatio: number }) => void;
}

/** What `trainTemporalSequences` uses for unset options. */
export const SEQUENCE_DEFAULTS = { lambda: 10, epochs: 30, batchSize: 16, lr: 1e-2, seed: 0 };

/**
 * Trains a temporal policy by REINFORCE over whole sequences, with the network frozen: each sequence is rolled
 * out on the level table (frame t's probabilities at the action it ran choose frame t+1's action, sampled from
 * the policy's softmax; the first frame runs at the top action), its return is the objective's, and every
 * action's log-probability is weighted by the return less the batch's mean (the baseline). The policy's
 * outputs are then the logits of its actions; it acts by argmax as the reward model does.
 */
export function trainTemporalSequences(policy: Policy, set: ImageSet, table: LevelTable, options: SequenceOptions): { epoch: number; meanReturn: number; accuracy: number; meanFlopsRatio: number }[] {
  const set_ = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as SequenceOptions;
  const { objective, lambda, epochs, batchSize, lr, seed } = { ...SEQUENCE_DEFAULTS, ...set_ };
  if (!isTemporal(policy)) throw new DynnError('trainTemporalSequences needs a temporal policy (temporalPolicy)');
  if (!table.probabilities) throw new DynnError('trainTemporalSequences needs the level table with its probabilities (levelTable(..., { probabilities: true }))');
  if (table.count !== set.count || !sameActions(table, policy)) throw new DynnError('the level table was computed on another set or with other actions');
  if (objective.kind === 'budget' && !(objective.budget > 0 && objective.budget <= 1)) throw new DynnError(`the FLOPs budget must be in (0, 1], got ${objective.budget}`);
  if (objective.kind === 'beta' && !(objective.beta > 0 && objective.beta <= 1)) throw new DynnError(`beta must be in (0, 1], got ${objective.beta}`);
  if (!(lambda >= 0 && Number.isFinite(lambda))) throw new DynnError(`lambda must be a non-negative number, got ${lambda}`);
  if (!Number.isInteger(epochs) || epochs < 1) throw new DynnError(`epochs must be a positive integer, got ${epochs}`);
  // The baseline is the batch's mean return: one sequence alone would have no advantage, so learn nothing.
  if (!Number.isInteger(batchSize) || batchSize < 2) throw new DynnError(`a policy gradient over sequences needs at least 2 sequences per update (the batch's mean return is the baseline), got ${batchSize}`);
  const seqs = sequencesOf(set).filter((s) => s.length > 1);
  if (seqs.length === 0) throw new DynnError('the stream has no sequence of two frames or more to learn from');
  const K = policy.actions.length;
  const C = table.probabilities[0].length / set.count;
  const D = temporalFeatureSize(C, K);
  if (D !== policy.args.inputShape[0]) throw new DynnError(`the policy reads ${policy.args.inputShape[0]} features; frames of ${C} classes give ${D}`);
  // A frame costs its pass and the decision that planned it, as runTemporal counts it.
  const own = policy.macs / table.fullMacs;
  const ratio = table.macs.map((m) => m / table.fullMacs + own);
  const fullAccuracy = table.correct[K - 1].reduce((a, b) => a + b, 0) / set.count;
  const rng = new Rng(seed);
  const opt = tf.train.adam(lr);
  const vars = policy.net.trainableWeights().map((w) => w.variable);
  const history: { epoch: number; meanReturn: number; accuracy: number; meanFlopsRatio: number }[] = [];
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = rng.permutation(seqs.length);
      let retSum = 0;
      let right = 0;
      let flops = 0;
      let frames = 0;
      for (let start = 0; start < seqs.length; start += batchSize) {
        // A last batch of one sequence joins the one before it (alone it would have no advantage).
        const end = seqs.length - (start + batchSize) === 1 ? seqs.length : Math.min(seqs.length, start + batchSize);
        const batch = Array.from(order.subarray(start, end), (q) => seqs[q]);
        if (end === seqs.length && end - start > batchSize) start = seqs.length;
        // Roll the batch's sequences out side by side: one forward pass per time step.
        const feats: number[] = [];
        const taken: number[] = [];
        const episodeOf: number[] = [];
        const action = new Int32Array(batch.length).fill(K - 1);
        const ok = batch.map((f) => table.correct[K - 1][f[0]]);
        const cost = batch.map(() => ratio[K - 1]);
        const longest = Math.max(...batch.map((f) => f.length));
        for (let t = 0; t + 1 < longest; t++) {
          const live = batch.map((f, b) => (t + 1 < f.length ? b : -1)).filter((b) => b >= 0);
          const rows = new Float32Array(live.length * D);
          live.forEach((b, j) => writeFeatures(table.probabilities![action[b]].subarray(batch[b][t] * C, (batch[b][t] + 1) * C), action[b], K, rows, j));
          const logits = tf.tidy(() => policy.logits(tf.tensor2d(rows, [live.length, D])).dataSync() as Float32Array);
          live.forEach((b, j) => {
            const z = logits.subarray(j * K, (j + 1) * K);
            const max = Math.max(...z);
            const p = Array.from(z, (v) => Math.exp(v - max));
            let r = rng.next() * p.reduce((x, y) => x + y, 0);
            let a = p.findIndex((v) => (r -= v) < 0);
            if (a < 0) a = K - 1;
            feats.push(...rows.subarray(j * D, (j + 1) * D));
            taken.push(a);
            episodeOf.push(b);
            action[b] = a;
            ok[b] += table.correct[a][batch[b][t + 1]];
            cost[b] += ratio[a];
          });
        }
        const returns = batch.map((f, b) => {
          const acc = ok[b] / f.length;
          const meanCost = cost[b] / f.length;
          right += ok[b];
          flops += cost[b];
          frames += f.length;
          return objective.kind === 'budget' ? acc - lambda * Math.max(0, meanCost - objective.budget) : -meanCost - lambda * Math.max(0, objective.beta * fullAccuracy - acc);
        });
        const baseline = returns.reduce((x, y) => x + y, 0) / returns.length;
        retSum += returns.reduce((x, y) => x + y, 0);
        const n = taken.length;
        const advantage = Float32Array.from(episodeOf, (b) => returns[b] - baseline);
        const { value, grads } = tf.variableGrads(() => {
          const logp = tf.logSoftmax(policy.logits(tf.tensor2d(Float32Array.from(feats), [n, D])));
          const mask = new Float32Array(n * K);
          taken.forEach((a, i) => (mask[i * K + a] = 1));
          const chosen = tf.sum(tf.mul(logp, tf.tensor2d(mask, [n, K])), 1);
          return tf.neg(tf.div(tf.sum(tf.mul(chosen, tf.tensor1d(advantage))), batch.length)) as tf.Scalar;
        }, vars);
        opt.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
        tf.dispose([value, ...Object.values(grads)]);
      }
      policy.weightsChanged();
      const e = { epoch: epoch + 1, meanReturn: retSum / seqs.length, accuracy: right / frames, meanFlopsRatio: flops / frames };
      history.push(e);
      options.onEpoch?.(e);
    }
  } finally {
    opt.dispose();
  }
  return history;
}
