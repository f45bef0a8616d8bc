import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import { opTensors, Subnet } from '../models/subnet.js';
import { AtResolution } from '../models/at-resolution.js';
import type { Plan } from '../layers/types.js';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { dispatchTensor } from '../route/tensor.js';

/** How a runner turns utilizations into frozen subnets; the defaults are nested plans and `model.subnet`. */
export interface RunnerOptions {
  /** The plan of utilization u (default: the network's nested plan; learned gates supply their own). */
  planFor?: (u: number) => Plan;
  /** Freezes a plan into a subnet (default `model.subnet(plan)`; learned gates calibrate BatchNorm first). */
  build?: (plan: Plan) => Subnet;
}

/** A string naming exactly which groups and blocks a plan runs, and its BatchNorm level. */
export function planKey(plan: Plan): string {
  const groups = [...plan.groups].map(([name, g]) => `${name}:${Array.from(g).join('.')}`);
  const depth = [...plan.depth].map(([name, on]) => `${name}:${on ? 1 : 0}`);
  return `${plan.level}|${groups.join(',')}|${depth.join(',')}`;
}

/**
 * Runs a network with a utilization per sample and still in batches: samples are grouped by operating point,
 * each group runs through that point's frozen subnet (sliced weights, built once and cached), and the
 * results are put back in input order. Never one sample at a time, never a mask.
 */
export class MixedRunner {
  private readonly keys = new Map<number, string>();
  private readonly plans = new Map<string, Plan>();
  private readonly subnets = new Map<string, Subnet>();
  private readonly macsByKey = new Map<string, number>();
  private readonly atResolution = new Map<number, AtResolution>();
  private readonly planFor: (u: number) => Plan;
  private readonly build: (plan: Plan) => Subnet;
  /** MACs of the full network at u = 1 (the denominator of every FLOPs ratio). */
  readonly fullMacs: number;

  constructor(
    readonly model: Network,
    options: RunnerOptions = {},
  ) {
    this.planFor = options.planFor ?? ((u) => model.plan(u));
    this.build = options.build ?? ((plan) => model.subnet(plan));
    this.fullMacs = model.cost(1).macs;
  }

  /** The key of u's operating point (utilizations of one level share it). */
  key(u: number): string {
    let k = this.keys.get(u);
    if (k === undefined) {
      checkUtilization(u);
      const plan = this.planFor(u);
      k = planKey(plan);
      if (!this.plans.has(k)) this.plans.set(k, plan);
      this.keys.set(u, k);
    }
    return k;
  }

  /** The plan u runs. */
  plan(u: number): Plan {
    return this.plans.get(this.key(u))!;
  }

  /**
   * The network at input resolution r (its height; the input's own when undefined or equal), built once.
   * Throws a DynnError when r is out of range or the network cannot run at it.
   */
  resolution(r: number | undefined): AtResolution | undefined {
    if (r === undefined || r === this.model.inputShape[0]) return undefined;
    let at = this.atResolution.get(r);
    if (!at) this.atResolution.set(r, (at = new AtResolution(this.model, r)));
    return at;
  }

  /** The frozen subnet of u's operating point (at input resolution r when given), built on first use; owned by the runner. */
  subnet(u: number, r?: number): Subnet {
    const at = this.resolution(r);
    const k = at ? `${this.key(u)}@${at.resolution}` : this.key(u);
    let s = this.subnets.get(k);
    if (!s) {
      s = this.build(this.plans.get(this.key(u))!);
      if (at) s = new Subnet(s.plan, s.inputShape, at.ops(s.ops));
      // Built on first use, possibly inside a caller's tf.tidy: the cache outlives that scope.
      for (const t of opTensors(s.ops)) tf.keep(t);
      this.subnets.set(k, s);
    }
    return s;
  }

  /** MACs of one sample at u (at input resolution r when given). */
  macs(u: number, r?: number): number {
    const at = this.resolution(r);
    const k = at ? `${this.key(u)}@${at.resolution}` : this.key(u);
    let m = this.macsByKey.get(k);
    if (m === undefined) {
      const plan = this.plans.get(this.key(u))!;
      m = at ? at.macs(plan) : this.model.cost(plan).macs;
      this.macsByKey.set(k, m);
    }
    return m;
  }

  /**
   * Class scores for a batch whose sample i runs at `us[i]` (and input resolution `rs[i]` when given), in input
   * order; the caller disposes them.
   */
  predict(x: tf.Tensor, us: ArrayLike<number>, rs?: ArrayLike<number>): tf.Tensor2D {
    const n = x.shape[0];
    if (us.length !== n || (rs && rs.length !== n)) throw new DynnError(`${us.length} utilizations${rs ? ` and ${rs.length} resolutions` : ''} for a batch of ${n}`);
    // A route per operating point (utilizations of one level share it), represented by its first sample.
    const routeOf = new Map<string, number>();
    const first: number[] = [];
    const routes = Int32Array.from({ length: n }, (_, i) => {
      const k = `${this.key(us[i])}@${rs ? rs[i] : ''}`;
      let r = routeOf.get(k);
      if (r === undefined) {
        routeOf.set(k, (r = first.length));
        first.push(i);
      }
      return r;
    });
    return tf.tidy(() => dispatchTensor(x, routes, (r, part) => this.subnet(us[first[r]], rs?.[first[r]]).predict(part))) as tf.Tensor2D;
  }

  /** Frees every cached subnet. */
  dispose(): void {
    for (const s of this.subnets.values()) s.dispose();
    this.subnets.clear();
    for (const at of this.atResolution.values()) at.dispose();
    this.atResolution.clear();
  }
}
