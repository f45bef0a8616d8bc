import * as tf from '@tensorflow/tfjs-core';
import { Network } from '../models/network.js';
import type { Subnet } from '../models/subnet.js';
import { Dense, ReLU } from '../layers/index.js';
import type { Plan } from '../layers/types.js';
import { batchNorms, calibrateBatchNorm } from '../train/calibrate.js';
import type { ImageSet } from '../data/types.js';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { MixedRunner } from './runner.js';
import { staticPlan } from '../models/network.js';

/** A widthwise block a gate function controls. */
export interface GatedBlock {
  name: string;
  groups: number;
}

/** The architecture of a set of learned gate functions. */
export interface GateArgs {
  /** The widthwise blocks of the network, in network order, with their group counts. */
  blocks: GatedBlock[];
  /** Hidden units of each block's MLP (default 16). */
  hidden?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** The widthwise blocks of a network, which learned gates control; a clear error when it has none. */
export function gatedBlocks(model: Network): GatedBlock[] {
  const blocks = model.blocks().flatMap((b) => (b.kind === 'width' ? [{ name: b.name, groups: b.groups }] : []));
  if (blocks.length === 0) throw new DynnError(`model ${model.config.model} has no widthwise blocks to gate`);
  return blocks;
}

/**
 * A plan running the given active groups per block. Its `level` (the BatchNorm statistics row it is
 * calibrated into) is round(c * D) for complexity c and the largest group count D.
 */
export function planFromGroups(model: Network, u: number, groups: Map<string, Int32Array>): Plan {
  const blocks = gatedBlocks(model);
  const D = Math.max(...blocks.map((b) => b.groups));
  const c = blocks.reduce((a, b) => a + planCount(groups, b.name) / b.groups, 0) / blocks.length;
  return { u, groups, depth: new Map(), level: Math.min(D, Math.max(1, Math.round(c * D))) };
}

function planCount(groups: Map<string, Int32Array>, name: string): number {
  const g = groups.get(name);
  if (!g) throw new DynnError(`the plan has no active groups for block "${name}"`);
  return g.length;
}

/** The complexity c of a plan (DTNN Eq. 5): the macro-average over blocks of their active-group fractions. */
export function complexity(plan: Plan, blocks: GatedBlock[]): number {
  return blocks.reduce((a, b) => a + planCount(plan.groups, b.name) / b.groups, 0) / blocks.length;
}

/**
 * Learned gating functions g(u) (DTNN phase 2): per widthwise block, an MLP from the utilization u to the
 * probability that each of its groups runs. Trained with the data path frozen (see `trainGates`); at test time
 * the gates are hard and the network runs the resulting plan sliced.
 */
export class GateSet {
  readonly blocks: GatedBlock[];
  /** One MLP per block, in block order. */
  readonly nets: Network[];

  constructor(readonly args: GateArgs) {
    if (!args.blocks.length) throw new DynnError('learned gates need at least one block');
    this.blocks = args.blocks.map((b) => ({ ...b }));
    const hidden = args.hidden ?? 16;
    const rng = new Rng(args.seed ?? 0);
    this.nets = this.blocks.map((b) => {
      const net = new Network({ model: 'gate-mlp', args: { block: b.name, groups: b.groups, hidden } }, [1], [
        new Dense(`${b.name}.gate.fc`, { units: hidden }),
        new ReLU(`${b.name}.gate.relu`, {}),
        new Dense(`${b.name}.gate.out`, { units: b.groups }),
      ], args.seed ?? 0);
      // Spread the hidden units' kinks over (0, 1) (bias = -w t), so g(u) can bend anywhere in the range of u.
      const [kernel, bias] = net.weights().slice(0, 2);
      const w = kernel.variable.dataSync() as Float32Array;
      const bvals = Float32Array.from(w, (wi) => -wi * rng.next());
      tf.tidy(() => bias.variable.assign(tf.tensor1d(bvals)));
      return net;
    });
  }

  /** Gate logits per block for a column of utilizations [n, 1], differentiable (inside `tf.tidy`). */
  logits(u: tf.Tensor2D): tf.Tensor2D[] {
    return this.nets.map((net) => net.forward(u, staticPlan()));
  }

  /** Gate probabilities per block at one utilization. */
  probabilities(u: number): Float32Array[] {
    checkUtilization(u);
    const ps = tf.tidy(() => this.logits(tf.tensor2d([[u]])).map((z) => tf.sigmoid(z)));
    const out = ps.map((p) => p.dataSync() as Float32Array);
    tf.dispose(ps);
    return out;
  }

  /**
   * Hard gates at u: each block keeps round(sum of its probabilities) groups (at least one), those of highest
   * probability. For near-binary gates this is thresholding at 0.5; when gates are not yet binary it keeps the
   * expected complexity, which thresholding would not.
   */
  hardGroups(u: number): Map<string, Int32Array> {
    const probs = this.probabilities(u);
    const groups = new Map<string, Int32Array>();
    this.blocks.forEach((b, i) => {
      const p = probs[i];
      const d = Math.min(b.groups, Math.max(1, Math.round(p.reduce((a, v) => a + v, 0))));
      const top = Array.from(p.keys()).sort((a, c) => p[c] - p[a] || a - c).slice(0, d).sort((a, c) => a - c);
      groups.set(b.name, Int32Array.from(top));
    });
    return groups;
  }

  /** The plan the hard gates give at u. */
  plan(model: Network, u: number): Plan {
    return planFromGroups(model, u, this.hardGroups(u));
  }

  /** Active fraction per block at u (the learned pattern, DTNN Fig. 11). */
  pattern(u: number): Record<string, number> {
    const g = this.hardGroups(u);
    return Object.fromEntries(this.blocks.map((b) => [b.name, g.get(b.name)!.length / b.groups]));
  }

  /** Every gate weight, named `<block>.gate.<layer>.<weight>`. */
  weights() {
    return this.nets.flatMap((n) => n.weights());
  }

  /** A copy of every gate weight as named arrays (for checkpoints). */
  getWeights() {
    return this.nets.flatMap((n) => n.getWeights());
  }

  /** Loads named arrays into the gate MLPs; names and shapes must match. */
  setWeights(arrays: { name: string; shape: number[]; data: Float32Array }[]): void {
    const byNet = this.nets.map((n) => new Set(n.weights().map((w) => w.name)));
    this.nets.forEach((n, i) => n.setWeights(arrays.filter((a) => byNet[i].has(a.name))));
  }

  dispose(): void {
    for (const n of this.nets) n.dispose();
  }
}

/**
 * The frozen subnet of an arbitrary plan with BatchNorm statistics calibrated for exactly that plan. A
 * network's statistics rows are per level, and a learned plan mixes group counts across blocks, so no row
 * fits it: the plan's row is recomputed from `data`, folded into the subnet, then restored.
 */
export function calibratedSubnet(model: Network, plan: Plan, data: ImageSet, samples = 2048): Subnet {
  const layers = [...batchNorms(model).values()];
  const saved = layers.map((l) => l.readStats(plan.level));
  try {
    calibrateBatchNorm(model, data, { plans: [plan], samples });
    return model.subnet(plan);
  } finally {
    layers.forEach((l, i) => l.writeStats(plan.level, saved[i].mean, saved[i].variance, new Uint8Array(saved[i].mean.length).fill(1)));
  }
}

/** A runner whose utilizations run the learned gates' hard plans, each with its own calibrated statistics. */
export function gatedRunner(model: Network, gates: GateSet, calibration: ImageSet, samples = 2048): MixedRunner {
  return new MixedRunner(model, {
    planFor: (u) => gates.plan(model, u),
    build: (plan) => calibratedSubnet(model, plan, calibration, samples),
  });
}
