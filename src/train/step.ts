import * as tf from '@tensorflow/tfjs-core';
import type { NamedArray, Network } from '../models/network.js';
import type { Plan } from '../layers/types.js';
import type { Subnet } from '../models/subnet.js';
import { exitCount, forwardExits } from '../models/exits.js';
import { distillationLoss, softTargetKl, type DistillSettings } from '../scaling/distill.js';
import { DynnError } from '../util/errors.js';
import { floatView } from '../engine/backend.js';
import { RoutingState, executionRate as routedExecutionRate, type EfficiencyTarget } from '../route/context.js';
import { isGateWeight, mechanisms } from '../route/mechanisms.js';
import type { GateEstimator, GateMode } from '../layers/types.js';

/** Loss and accuracy of one gradient computation. */
export interface StepResult {
  /** Mean loss over the batch (cross-entropy by default; the summed objective of every plan and exit, auxiliary losses included). */
  loss: number;
  /** A dynamic network's mean executed FLOPs over its backbone's, gates included (of the first plan). */
  flopsRatio?: number;
  /** A dynamic network's mean share of each gate's groups executed, over gates (of the first plan). */
  executionRate?: number;
  /** A mixture of experts: the share of its (sample, slot) assignments that found their expert full (of the first plan). */
  overflowRate?: number;
  /** Correct top-1 predictions (of the first plan's last exit). */
  correct: number;
  /** Samples in the batch. */
  count: number;
}

/** Offsets of each trainable weight in one flat float32 buffer, in `trainableWeights()` order. */
export interface FlatLayout {
  names: string[];
  shapes: number[][];
  offsets: number[];
  sizes: number[];
  total: number;
}

export function flatLayout(model: Network): FlatLayout {
  const ws = model.trainableWeights();
  const sizes = ws.map((w) => w.variable.size);
  const offsets: number[] = [];
  let total = 0;
  for (const s of sizes) {
    offsets.push(total);
    total += s;
  }
  return { names: ws.map((w) => w.name), shapes: ws.map((w) => w.variable.shape.slice()), offsets, sizes, total };
}

/** Copies the trainable weights into a flat buffer. */
export function readFlat(model: Network, layout: FlatLayout, out: Float32Array): void {
  model.trainableWeights().forEach((w, i) => out.set(w.variable.dataSync() as Float32Array, layout.offsets[i]));
}

/** Loads the trainable weights from a flat buffer. */
export function writeFlat(model: Network, layout: FlatLayout, src: Float32Array): void {
  tf.tidy(() => {
    model.trainableWeights().forEach((w, i) => {
      const o = layout.offsets[i];
      w.variable.assign(tf.tensor(src.subarray(o, o + layout.sizes[i]), layout.shapes[i]));
    });
  });
}

/** Loads named untrained weights (BatchNorm statistics) into the model, by name. */
export function loadStatistics(model: Network, arrays: NamedArray[]): void {
  const byName = new Map(model.weights().map((w) => [w.name, w]));
  tf.tidy(() => {
    for (const a of arrays) {
      const w = byName.get(a.name);
      if (!w || w.trainable) throw new DynnError(`internal: ${a.name} is not an untrained weight of the model`);
      w.variable.assign(tf.tensor(a.data, a.shape));
    }
  });
}

/** What one gradient step computes: one or more plans on the same batch, their losses summed. */
export interface StepSpec {
  /** Plans trained on the batch; with in-place distillation the first one teaches the others. */
  plans: Plan[];
  /**
   * In-place distillation (US-Nets): every plan after the first learns KL(first || plan) from the first plan's
   * soft predictions (detached) instead of from the labels or the teacher.
   */
  inplaceDistill?: boolean;
  /**
   * Weight of the in-place soft term in [0, 1] (default 1: soft targets only, as US-Nets); the rest goes to
   * the plan's own hard loss (labels, or the teacher's distillation loss).
   */
  inplaceAlpha?: number;
  /** How the gates inside a dynamic network decide in this step (absent: no gate runs). */
  routing?: StepRouting;
  /**
   * The backbone frozen (DS-Net's gate training): only gate weights get gradients, and BatchNorm normalizes
   * with its calibrated statistics, as the frozen network will run.
   */
  gatesOnly?: boolean;
}

/** The routing of a training step, as plain data (worker threads receive it as it is). */
export interface StepRouting {
  /** `soft` trains the gates; `full` runs every route at full width without them (two-step training's step 1). */
  mode: GateMode;
  /** Seed of the step's gate decisions (a sample's decisions depend on it and its position in the step). */
  seed: number;
  /** The efficiency term added to the task loss, if any. */
  efficiency?: EfficiencyTarget;
  /** Gradient estimator of the soft decisions (default 'sigmoid'). */
  estimator?: GateEstimator;
}

/** What stays fixed over a run's steps. Empty: plain cross-entropy on the network's output. */
export interface StepSetup {
  /** A trained network whose predictions at u = 1 are the soft targets (it runs frozen, without gradients). */
  teacher?: { model: Network; settings: DistillSettings };
  /** Loss weight of each exit of an early-exit model, the last exit included (default 1 each). */
  exitWeights?: number[];
}

/** A `StepSetup` ready to run: the teacher frozen once into a subnet. */
export interface StepContext {
  teacher?: { net: Subnet; settings: DistillSettings };
  exitWeights?: number[];
}

/** Freezes a setup's teacher (the caller disposes `teacher.net`). */
export function stepContext(setup: StepSetup = {}): StepContext {
  return {
    teacher: setup.teacher ? { net: setup.teacher.model.subnet(1), settings: setup.teacher.settings } : undefined,
    exitWeights: setup.exitWeights,
  };
}

/** A plan or a step specification, as a specification. */
export function toStepSpec(work: Plan | StepSpec): StepSpec {
  return 'plans' in work ? work : { plans: [work] };
}

/**
 * Forward and backward passes of one batch (sliced: only active weights take part); writes the gradient of
 * the summed mean losses of every plan into `grads` (zeros for weights no plan uses). Each plan's loss is
 * cross-entropy on the labels, or the distillation loss with the context's teacher, or (in-place
 * distillation) KL from the first plan; an early-exit model sums its exits' losses with `exitWeights`.
 * The reported loss is that summed objective; the accuracy is the first plan's last exit's.
 */
export function gradientStep(
  model: Network,
  layout: FlatLayout,
  images: Float32Array,
  labels: ArrayLike<number>,
  work: Plan | StepSpec,
  grads: Float32Array,
  context: StepContext = {},
  offset = 0,
): StepResult {
  const { plans, inplaceDistill = false, inplaceAlpha = 1, routing: stepRouting, gatesOnly = false } = toStepSpec(work);
  if (plans.length === 0) throw new DynnError('a gradient step needs at least one plan');
  const count = labels.length;
  const weights = model.trainableWeights();
  const variables = weights.filter((w) => !gatesOnly || isGateWeight(w.name)).map((w) => w.variable);
  const exits = exitCount(model);
  const exitWeights = context.exitWeights ?? new Array<number>(exits).fill(1);
  if (exitWeights.length !== exits) throw new DynnError(`expected ${exits} exit loss weights, got ${exitWeights.length}`);
  const teacher = context.teacher;
  const [xs, ys] = tf.tidy(() => [
    tf.tensor(images.subarray(0, count * model.inputShape.reduce((a, b) => a * b, 1)), [count, ...model.inputShape]),
    tf.oneHot(tf.tensor1d(Int32Array.from(labels), 'int32'), model.numClasses),
  ]);
  const teacherLogits = teacher ? teacher.net.predict(xs) : null;
  let predicted: tf.Tensor | null = null;
  let widest: tf.Tensor2D | null = null;
  let lossValue = 0;
  let flopsRatio: number | undefined;
  let executionRate: number | undefined;
  let overflowRate: number | undefined;
  try {
    plans.forEach((plan, i) => {
      const hard = (logits: tf.Tensor2D): tf.Scalar =>
        teacherLogits
          ? distillationLoss(logits, teacherLogits, ys as tf.Tensor2D, teacher!.settings)
          : (tf.losses.softmaxCrossEntropy(ys, logits) as tf.Scalar);
      const term = (logits: tf.Tensor2D): tf.Scalar => {
        if (i === 0 || !inplaceDistill) return hard(logits);
        const soft = softTargetKl(widest!, logits);
        return inplaceAlpha === 1 ? soft : (tf.add(tf.mul(inplaceAlpha, soft), tf.mul(1 - inplaceAlpha, hard(logits))) as tf.Scalar);
      };
      const { value, grads: g } = tf.tidy(() =>
        tf.variableGrads(() => {
          // Each plan's gates draw their own numbers; a sample's depend only on the seed and its place in the step.
          const routing = stepRouting ? RoutingState.start(stepRouting.mode, count, { seed: stepRouting.seed + i * 7919, offset, estimator: stepRouting.estimator, labels }) : undefined;
          const outs = exits > 1 ? forwardExits(model, xs, plan, { training: true }) : [model.forward(xs, plan, { training: !gatesOnly, routing })];
          const final = outs[outs.length - 1];
          if (i === 0) {
            predicted = tf.keep(tf.argMax(final, 1));
            if (inplaceDistill && plans.length > 1) widest = tf.keep(final);
          }
          const task = exits === 1 ? term(final) : (outs.map((o, k) => tf.mul(exitWeights[k], term(o))).reduce((a, b) => tf.add(a, b)) as tf.Scalar);
          if (!routing) return task;
          const { fixed, backbone } = model.routedMacs(plan);
          // The mechanism's own efficiency term (ACS: FLOPs; skip: a rate per gate), from its registry entry.
          if (stepRouting?.efficiency) mechanisms.get(String(model.config.args.dynamic)).efficiency.add(routing, { fixed, backbone }, stepRouting.efficiency);
          if (i === 0 && routing.mode !== 'full') {
            flopsRatio = (fixed + mean(routing.executedMacs)) / backbone;
            executionRate = routedExecutionRate(routing.skipRates());
            const counted = [...routing.counters.values()];
            if (counted.length) overflowRate = counted.reduce((a, c) => a + c.events, 0) / Math.max(1, counted.reduce((a, c) => a + c.of, 0));
          }
          return routing.losses.reduce((a, l) => tf.add(a, l.value), task) as tf.Scalar;
        }, variables),
      );
      weights.forEach((w, j) => {
        const gw = g[w.variable.name];
        const o = layout.offsets[j];
        if (i === 0) {
          if (gw) grads.set(floatView(gw), o);
          else grads.fill(0, o, o + layout.sizes[j]);
        } else if (gw) {
          const d = floatView(gw);
          for (let e = 0; e < d.length; e++) grads[o + e] += d[e];
        }
      });
      lossValue += value.dataSync()[0];
      tf.dispose([value, ...Object.values(g)]);
    });
    const pred = (predicted as unknown as tf.Tensor).dataSync();
    let correct = 0;
    for (let i = 0; i < count; i++) if (pred[i] === labels[i]) correct++;
    return { loss: lossValue, correct, count, flopsRatio, executionRate, ...(overflowRate === undefined ? {} : { overflowRate }) };
  } finally {
    const held: (tf.Tensor | null)[] = [xs, ys, teacherLogits, predicted, widest];
    tf.dispose(held.filter((t): t is tf.Tensor => t !== null));
  }
}

function mean(xs: Float64Array): number {
  return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
}
