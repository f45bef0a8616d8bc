import * as tf from '@tensorflow/tfjs-core';
import { allLayers, type Network } from '../models/network.js';
import { Conv2D, Dense, BatchNorm, ReLU, MaxPool, type Layer } from '../layers/index.js';
import { fullSel } from '../layers/select.js';
import type { ImageSet } from '../data/types.js';
import { gatherBatch } from '../train/batch.js';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { complexity, planFromGroups, type GateSet } from './gates.js';

/** How gate parameters are learned through discrete gates. */
export type GateMethod = 'reinforce' | 'concrete';
/** The complexity penalty C (DTNN Eq. 7-8). */
export type GatePenalty = 'hinge' | 'dist';

/** The gate training methods. */
export const GATE_METHODS: readonly GateMethod[] = ['reinforce', 'concrete'];
/** The complexity penalties. */
export const GATE_PENALTIES: readonly GatePenalty[] = ['hinge', 'dist'];

/** Options of gate training; unset fields take the defaults shown. */
export interface GateTrainOptions {
  /** REINFORCE (score function, Eq. 10-11) or CONCRETE (binary Concrete relaxation). */
  method: GateMethod;
  /** C_hinge^p = max(0, c - u)^p or C_dist^p = |c - u|^p (default 'dist'). */
  penalty?: GatePenalty;
  /** The exponent p, 1 or 2 (default 1). */
  p?: number;
  /** Weight lambda of the penalty in L_task + lambda C (default 10). */
  lambda?: number;
  /** Gate updates (default 600). */
  steps?: number;
  /** Images per update (default 32 for REINFORCE, 64 for CONCRETE). */
  batchSize?: number;
  /** REINFORCE: gate vectors sampled per update, all run on the same images (default 8). */
  samplesPerStep?: number;
  /** Adam learning rate of the gate MLPs (default 0.02). */
  lr?: number;
  /** CONCRETE: temperature of the relaxation (default 0.1). */
  temperature?: number;
  /** Utilizations are drawn from U(uMin, 1] per update (default 0.125). */
  uMin?: number;
  /**
   * Probability that an update trains u = 1 instead of a drawn u (default 0.1). Every gate must open at u = 1,
   * and a uniform draw almost never asks for it: without these updates the top of the range lags by a group.
   */
  fullU?: number;
  /** Seed of images, utilizations and gate samples (default 0). */
  seed?: number;
  /** Called every `logEvery` updates (default 50). */
  onLog?: (r: GateStep) => void;
  logEvery?: number;
}

/** Running averages of gate training. */
export interface GateStep {
  step: number;
  steps: number;
  /** Mean task loss (cross-entropy). */
  taskLoss: number;
  /** Mean |c - u| of the sampled gates. */
  gap: number;
}

/** The penalty value for complexity c at utilization u. */
export function complexityPenalty(c: number, u: number, penalty: GatePenalty, p: number): number {
  const d = penalty === 'hinge' ? Math.max(0, c - u) : Math.abs(c - u);
  return d ** p;
}

function checkOptions(o: GateTrainOptions) {
  const r = {
    method: o.method,
    penalty: o.penalty ?? 'dist',
    p: o.p ?? 1,
    lambda: o.lambda ?? 10,
    steps: o.steps ?? 600,
    batchSize: o.batchSize ?? (o.method === 'concrete' ? 64 : 32),
    samplesPerStep: o.samplesPerStep ?? 8,
    lr: o.lr ?? 0.02,
    temperature: o.temperature ?? 0.1,
    uMin: o.uMin ?? 0.125,
    fullU: o.fullU ?? 0.1,
    seed: o.seed ?? 0,
    logEvery: o.logEvery ?? 50,
  };
  if (!GATE_METHODS.includes(r.method)) throw new DynnError(`unknown gate method "${r.method}"; expected one of ${GATE_METHODS.join(', ')}`);
  if (!GATE_PENALTIES.includes(r.penalty)) throw new DynnError(`unknown penalty "${r.penalty}"; expected one of ${GATE_PENALTIES.join(', ')}`);
  if (r.p !== 1 && r.p !== 2) throw new DynnError(`p must be 1 or 2, got ${r.p}`);
  if (!(r.lambda >= 0)) throw new DynnError(`lambda must be >= 0, got ${r.lambda}`);
  for (const [k, v] of [['steps', r.steps], ['batchSize', r.batchSize], ['samplesPerStep', r.samplesPerStep]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new DynnError(`${k} must be a positive integer, got ${v}`);
  }
  if (r.method === 'reinforce' && r.samplesPerStep < 2) throw new DynnError('REINFORCE needs at least 2 gate samples per step (for its baseline)');
  if (!(r.temperature > 0)) throw new DynnError(`temperature must be > 0, got ${r.temperature}`);
  if (!(r.uMin > 0 && r.uMin < 1)) throw new DynnError(`uMin must be in (0, 1), got ${r.uMin}`);
  if (!(r.fullU >= 0 && r.fullU <= 1)) throw new DynnError(`fullU must be in [0, 1], got ${r.fullU}`);
  if (!(r.lr > 0)) throw new DynnError(`lr must be > 0, got ${r.lr}`);
  return r;
}

/** The network's top-level widthwise layers, which CONCRETE masks; other architectures fail clearly. */
function maskableBlocks(model: Network, gates: GateSet): Map<Layer, number> {
  const at = new Map<Layer, number>();
  const top = new Set(model.layers);
  for (const l of allLayers(model.layers)) {
    const b = l.block();
    if (b?.kind !== 'width') continue;
    if (!top.has(l) || !(l instanceof Conv2D || l instanceof Dense)) {
      throw new DynnError(`CONCRETE gates need widthwise convolution or dense blocks at the top level; ${l.name} is a ${l.className} (use --method reinforce)`);
    }
    at.set(l, gates.blocks.findIndex((g) => g.name === b.name));
  }
  return at;
}

/**
 * The full-width forward pass with a gate mask [batch, groups] per widthwise block (CONCRETE training only: a
 * continuous gate cannot select channels, so here, and only here, groups are scaled rather than sliced).
 * A block's mask multiplies its output after the per-channel layers that follow it (BatchNorm, ReLU,
 * pooling), right before the next layer that mixes channels, so a gate near 0 really silences its group.
 */
export function maskedForward(model: Network, gates: GateSet, x: tf.Tensor, masks: tf.Tensor2D[]): tf.Tensor2D {
  const blocks = maskableBlocks(model, gates);
  const groups = gates.blocks.map((b) => b.groups);
  const plan = model.plan(1);
  const ctx = { plan, training: true };
  let sel = fullSel(model.inputShape[model.inputShape.length - 1]);
  let y = x;
  let pending = -1;
  for (const l of model.layers) {
    const perChannel = l instanceof BatchNorm || l instanceof ReLU || l instanceof MaxPool;
    if (pending >= 0 && !perChannel) {
      const c = y.shape[y.shape.length - 1];
      const m = masks[pending];
      const perGroup = c / groups[pending];
      const channels = tf.reshape(tf.tile(tf.expandDims(m, 2), [1, 1, perGroup]), [-1, c]);
      y = tf.mul(y, y.rank === 4 ? tf.reshape(channels, [-1, 1, 1, c]) : channels);
      pending = -1;
    }
    ({ y, sel } = l.call(y, sel, ctx));
    const b = blocks.get(l);
    if (b !== undefined) pending = b;
  }
  return y as tf.Tensor2D;
}

/**
 * Learns the gate functions g(u) with the data path frozen (DTNN phase 2): minimizes L_task + lambda C with
 * C the hinge or distance penalty on the complexity c (Eq. 5-8). The network runs in training mode
 * (batch statistics), since a learned plan has no calibrated BatchNorm row.
 * - REINFORCE: each update samples several gate vectors g ~ Bernoulli(g(u)) and runs the same images sliced
 *   under each (common images: the differences between samples come from the gates alone); each sample's
 *   loss minus the mean of the others' (its baseline) weights the gradient of log p(g) (Eq. 10-11).
 * - CONCRETE: binary Concrete gates at the given temperature, applied as masks, gradients by backprop.
 */
export function trainGates(model: Network, gates: GateSet, data: ImageSet, options: GateTrainOptions): GateStep[] {
  const o = checkOptions(options);
  if (o.method === 'concrete') maskableBlocks(model, gates);
  const rng = new Rng(o.seed);
  const opt = tf.train.adam(o.lr);
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const images = new Float32Array(o.batchSize * per);
  const labels = new Int32Array(o.batchSize);
  const log: GateStep[] = [];
  let taskSum = 0;
  let gapSum = 0;
  let seen = 0;
  try {
    for (let step = 0; step < o.steps; step++) {
      const u = rng.next() < o.fullU ? 1 : o.uMin + (1 - o.uMin) * (1 - rng.next());
      const idx = Array.from({ length: o.batchSize }, () => rng.int(data.count));
      gatherBatch(data, idx, images, labels);
      const x = tf.tensor(images, [o.batchSize, ...model.inputShape]);
      const y = tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), model.numClasses));
      const r = o.method === 'reinforce' ? reinforceStep(model, gates, x, y, u, o, rng) : concreteStep(model, gates, x, y, u, o, rng);
      opt.applyGradients(Object.entries(r.grads).map(([name, tensor]) => ({ name, tensor })));
      tf.dispose([x, y, ...Object.values(r.grads)]);
      taskSum += r.task;
      gapSum += r.gap;
      seen++;
      if ((step + 1) % o.logEvery === 0 || step + 1 === o.steps) {
        const s = { step: step + 1, steps: o.steps, taskLoss: taskSum / seen, gap: gapSum / seen };
        log.push(s);
        options.onLog?.(s);
        taskSum = gapSum = seen = 0;
      }
    }
  } finally {
    opt.dispose();
  }
  return log;
}

type Resolved = ReturnType<typeof checkOptions>;
type StepOut = { grads: tf.NamedTensorMap; task: number; gap: number };

function reinforceStep(model: Network, gates: GateSet, x: tf.Tensor, y: tf.Tensor, u: number, o: Resolved, rng: Rng): StepOut {
  const M = o.samplesPerStep;
  const probs = gates.probabilities(u);
  const samples: Float32Array[][] = [];
  const losses: number[] = [];
  let task = 0;
  let gap = 0;
  for (let m = 0; m < M; m++) {
    const draw = gates.blocks.map((b, i) => {
      const g = Float32Array.from(probs[i], (p) => (rng.next() < p ? 1 : 0));
      // A block needs one group to carry any signal: when none is drawn, the likeliest runs.
      if (!g.some((v) => v)) g[probs[i].indexOf(Math.max(...probs[i]))] = 1;
      return g;
    });
    const groups = new Map(gates.blocks.map((b, i) => [b.name, Int32Array.from(Array.from(draw[i]).flatMap((v, j) => (v ? [j] : [])))]));
    const plan = planFromGroups(model, u, groups);
    const ce = tf.tidy(() => tf.losses.softmaxCrossEntropy(y, model.forward(x, plan, { training: true })).dataSync()[0]);
    const c = complexity(plan, gates.blocks);
    samples.push(draw);
    losses.push(ce + o.lambda * complexityPenalty(c, u, o.penalty, o.p));
    task += ce / M;
    gap += Math.abs(c - u) / M;
  }
  const total = losses.reduce((a, b) => a + b, 0);
  const advantage = losses.map((l) => l - (total - l) / (M - 1));
  const { value, grads } = tf.variableGrads(() => {
    const z = gates.logits(tf.tensor2d([[u]]));
    const logp = z.map((zb, i) => {
      const g = tf.tensor2d(samples.flatMap((s) => Array.from(s[i])), [M, gates.blocks[i].groups]);
      // log p(g) = sum_j g log sigmoid(z) + (1 - g) log sigmoid(-z) = sum_j g z - softplus(z)
      return tf.sum(tf.sub(tf.mul(g, zb), tf.softplus(zb)), 1);
    });
    const total = logp.reduce((a, b) => tf.add(a, b));
    return tf.div(tf.sum(tf.mul(total, tf.tensor1d(advantage))), M) as tf.Scalar;
  }, gates.weights().filter((w) => w.trainable).map((w) => w.variable));
  value.dispose();
  return { grads, task, gap };
}

function concreteStep(model: Network, gates: GateSet, x: tf.Tensor, y: tf.Tensor, u: number, o: Resolved, rng: Rng): StepOut {
  const n = x.shape[0];
  const groups = gates.blocks.map((b) => b.groups);
  let task = 0;
  let gap = 0;
  const { value, grads } = tf.variableGrads(() => {
    const z = gates.logits(tf.tensor2d([[u]]));
    const masks = z.map((zb, i) => {
      const D = groups[i];
      const noise = Float32Array.from({ length: n * D }, () => {
        const e = Math.min(1 - 1e-6, Math.max(1e-6, rng.next()));
        return Math.log(e) - Math.log(1 - e);
      });
      return tf.sigmoid(tf.div(tf.add(zb, tf.tensor2d(noise, [n, D])), o.temperature)) as tf.Tensor2D;
    });
    const ce = tf.losses.softmaxCrossEntropy(y, maskedForward(model, gates, x, masks));
    const c = tf.div(masks.map((m) => tf.mean(m, 1)).reduce((a, b) => tf.add(a, b)), masks.length);
    const d = tf.sub(c, u);
    const dev = o.penalty === 'hinge' ? tf.relu(d) : tf.abs(d);
    const pen = tf.mean(o.p === 2 ? tf.square(dev) : dev);
    task = ce.dataSync()[0];
    gap = tf.mean(tf.abs(d)).dataSync()[0];
    return tf.add(ce, tf.mul(pen, o.lambda)) as tf.Scalar;
  }, gates.weights().filter((w) => w.trainable).map((w) => w.variable));
  value.dispose();
  return { grads, task, gap };
}
