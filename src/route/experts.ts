/**
 * A mixture of experts' assignment rule, in one place: TF.js's `MoeBlock` and the ONNX Runtime dispatcher of
 * exported mixtures both call it, so a sample goes to the same experts in both. This file loads no TF.js.
 */
import { DynnError } from '../util/errors.js';

/** What a sample does when its chosen expert is full: skip it (`residual`) or take its next choice with room (`next`). */
export type OverflowPolicy = 'residual' | 'next';

/** Every overflow policy (see `OverflowPolicy`). */
export const OVERFLOW_POLICIES: readonly OverflowPolicy[] = ['residual', 'next'];

/**
 * Which samples an expert serves first within a slot: batch order (`batch`), or the samples the router is
 * surest of first, by their largest gate (`score`: V-MoE's batch priority routing), so that what overflows is
 * what the router was least sure of.
 */
export type RoutingPriority = 'batch' | 'score';

/** Every routing priority (see `RoutingPriority`). */
export const ROUTING_PRIORITIES: readonly RoutingPriority[] = ['batch', 'score'];

/** Refuses a mixture's settings before anything is built: E and k positive integers with k <= E, a positive capacity factor. */
export function checkMixture(experts: number, topK: number, capacityFactors: number[] = [], overflow: string = 'residual', priority: string = 'batch'): void {
  if (!Number.isInteger(experts) || experts < 1) throw new DynnError(`the number of experts must be a positive integer, got ${experts}`);
  if (!Number.isInteger(topK) || topK < 1) throw new DynnError(`top-k must be a positive integer, got ${topK}`);
  if (topK > experts) throw new DynnError(`top-k (${topK}) cannot exceed the number of experts (${experts})`);
  for (const cf of capacityFactors) if (!(cf > 0 && Number.isFinite(cf))) throw new DynnError(`the capacity factor must be a positive number, got ${cf}`);
  if (!OVERFLOW_POLICIES.includes(overflow as OverflowPolicy)) throw new DynnError(`unknown overflow policy "${overflow}"; expected one of ${OVERFLOW_POLICIES.join(', ')}`);
  if (!ROUTING_PRIORITIES.includes(priority as RoutingPriority)) throw new DynnError(`unknown routing priority "${priority}"; expected one of ${ROUTING_PRIORITIES.join(', ')}`);
}

/**
 * Whether alike experts run as one padded call (`dispatchPadded`: every expert's block as wide as the busiest
 * expert's rows) rather than one call per expert with rows: when more than one expert has rows and the padding
 * at most doubles the rows computed. So a batch of one runs its expert alone and idle experts are not computed
 * for a few rows. One rule for TF.js and the ONNX Runtime dispatcher.
 */
export function stackPays(routes: ArrayLike<number>, experts: number): boolean {
  const load = new Int32Array(experts);
  for (let i = 0; i < routes.length; i++) load[routes[i]]++;
  let busiest = 0;
  let active = 0;
  for (const l of load) {
    busiest = Math.max(busiest, l);
    if (l > 0) active++;
  }
  return active > 1 && experts * busiest <= 2 * routes.length;
}

/** Rows an expert takes from a batch of `n`: ceil(cf * k * n / E) (Switch, V-MoE), at least 1. */
export function expertCapacity(capacityFactor: number, topK: number, n: number, experts: number): number {
  return Math.max(1, Math.ceil((capacityFactor * topK * n) / experts));
}

/** Where a batch's samples go. Slot-major: entry s * n + i is sample i's s-th expert. */
export interface Assignment {
  /** The expert that runs each (slot, sample), or -1 when it overflowed and was dropped. */
  experts: Int32Array;
  /** Each sample's top-k by score, before capacity (what the balance losses count). */
  chosen: Int32Array;
  /** (slot, sample) entries that did not get their chosen expert (dropped, or moved to a later choice). */
  overflowed: number;
  /** Rows each expert runs. */
  load: Int32Array;
}

/**
 * Assigns each sample of scores `h` ([n, E] row-major) to its k highest-scoring experts, each expert taking
 * at most `capacity` rows. First choices are served first, then second choices (so capacity never pushes a
 * sample's first choice out for another's second), samples within a slot in batch order or, with `priority`
 * `score`, by their largest gate, the softmax of their best score (V-MoE's BPR; ties in batch order). An entry
 * that finds its expert full is dropped (`residual`) or goes to its best-scoring expert it does not use yet
 * that has room (`next`; dropped when none has). Ties go to the lower expert index.
 */
export function assignExperts(h: ArrayLike<number>, experts: number, topK: number, capacity: number, overflow: OverflowPolicy, priority: RoutingPriority = 'batch'): Assignment {
  const E = experts;
  const n = h.length / E;
  if (!Number.isInteger(n)) throw new DynnError(`${h.length} scores do not split into rows of ${E} experts`);
  const order = Array.from({ length: n }, (_, i) => {
    const idx = Array.from({ length: E }, (_, e) => e);
    const row = (e: number) => h[i * E + e];
    for (let e = 0; e < E; e++) if (!Number.isFinite(row(e))) throw new DynnError(`the router's score of sample ${i} for expert ${e} is ${row(e)}, not a finite number`);
    return idx.sort((a, b) => row(b) - row(a) || a - b);
  });
  const chosen = new Int32Array(topK * n);
  const assigned = new Int32Array(topK * n).fill(-1);
  const load = new Int32Array(E);
  let overflowed = 0;
  const served = Int32Array.from({ length: n }, (_, i) => i);
  if (priority === 'score') {
    // The largest gate is 1 / sum_e exp(h_e - h_max): ranking by it is ranking by that sum, smallest first.
    const spread = Float64Array.from({ length: n }, (_, i) => {
      const top = h[i * E + order[i][0]];
      let sum = 0;
      for (let e = 0; e < E; e++) sum += Math.exp(h[i * E + e] - top);
      return sum;
    });
    served.sort((a, b) => spread[a] - spread[b] || a - b);
  }
  for (let s = 0; s < topK; s++) {
    for (const i of served) {
      const want = order[i][s];
      chosen[s * n + i] = want;
      if (load[want] < capacity) {
        assigned[s * n + i] = want;
        load[want]++;
        continue;
      }
      overflowed++;
      if (overflow !== 'next') continue;
      const used = new Set<number>();
      for (let t = 0; t < topK; t++) if (assigned[t * n + i] >= 0) used.add(assigned[t * n + i]);
      // The choices this sample keeps for later slots are not taken from it now.
      for (let t = s + 1; t < topK; t++) used.add(order[i][t]);
      const next = order[i].find((e) => !used.has(e) && load[e] < capacity);
      if (next !== undefined) {
        assigned[s * n + i] = next;
        load[next]++;
      }
    }
  }
  return { experts: assigned, chosen, overflowed, load };
}

/** Coefficient of variation (population standard deviation over mean) of an expert load; 0 for an empty load. */
export function coefficientOfVariation(load: ArrayLike<number>): number {
  const xs = Array.from(load);
  const mean = xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  if (!(mean > 0)) return 0;
  const variance = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / xs.length;
  return Math.sqrt(variance) / mean;
}

/**
 * Each (slot, sample) assignment's gate from the router's scores `h` ([n, E]): a softmax over the experts the
 * sample keeps (its assignments, dropped ones included), or for k = 1 over all experts (Switch); 0 where the
 * assignment overflowed and was dropped. What `MoeBlock` computes with TF.js, for the ONNX Runtime dispatcher.
 */
export function mixtureWeights(h: ArrayLike<number>, experts: number, topK: number, a: Assignment): Float64Array {
  const E = experts;
  const n = h.length / E;
  const w = new Float64Array(topK * n);
  for (let i = 0; i < n; i++) {
    const kept = Array.from({ length: topK }, (_, s) => (a.experts[s * n + i] >= 0 ? a.experts[s * n + i] : a.chosen[s * n + i]));
    const over = topK === 1 ? Array.from({ length: E }, (_, e) => e) : kept;
    const max = Math.max(...over.map((e) => h[i * E + e]));
    const sum = over.reduce((acc, e) => acc + Math.exp(h[i * E + e] - max), 0);
    for (let s = 0; s < topK; s++) {
      const e = a.experts[s * n + i];
      if (e >= 0) w[s * n + i] = Math.exp(h[i * E + e] - max) / sum;
    }
  }
  return w;
}
