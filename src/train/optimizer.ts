import { DynnError } from '../util/errors.js';
import type { NamedArray } from '../models/network.js';

/** The optimizers training offers. */
export type OptimizerName = 'adam' | 'sgd';

export const OPTIMIZERS: readonly OptimizerName[] = ['adam', 'sgd'];

export function checkOptimizer(name: string): asserts name is OptimizerName {
  if (!OPTIMIZERS.includes(name as OptimizerName)) {
    throw new DynnError(`unknown optimizer "${name}"; expected one of ${OPTIMIZERS.join(', ')}`);
  }
}

/** Per-parameter slots of each optimizer, after the iteration count (TF.js's `getWeights()` order). */
const SLOTS: Record<OptimizerName, number> = { adam: 2, sgd: 1 };

const BETA1 = 0.9;
const BETA2 = 0.999;
/** TF.js's Adam takes its epsilon from the backend: 1e-7 on every float32 backend. */
const EPSILON = 1e-7;

/** One optimizer update as data: all a thread needs to apply it to a range of the parameters (`applyUpdate`). */
export interface UpdateSpec {
  kind: OptimizerName;
  lr: number;
  momentum: number;
  /** The update's number, from 1 (Adam's bias correction). */
  t: number;
  /** The optimizer's slots, in shared memory: Adam's two moments, or the momentum accumulation. */
  slots: Float32Array[];
  /** The gradient is the sum of `scales[i] * parts[i]` (parts with scale 0 are skipped). */
  scales: number[];
}

/**
 * Adam (TF.js's defaults and bias correction) or SGD with momentum (TF.js's `momentum`, not Nesterov) over the
 * flat parameter vector: every trainable weight laid end to end (`flatLayout`).
 *
 * The update is one fused pass over memory: the gradient parts, the slots and the weights are read once and
 * written once, and the gradients of two data-parallel shards are averaged in the same pass (more shards are
 * summed in a pass of their own first). TF.js's optimizer makes a dozen passes per weight, one op each: in the
 * training loop it took 35-41 ms per `vgg-w` step on the main thread, while the workers wait; this pass takes
 * 14-22 ms there, and 11 ms split over the two gradient workers (`ThreadExecutor.update`), which the slots in
 * shared memory allow. Its results equal `tf.train.adam` and `tf.train.momentum` to float32 rounding (tested).
 * The state survives a checkpoint in TF.js's slot layout, so checkpoints written with TF.js's optimizer resume.
 */
export class Optimizer {
  private iterations = 0;
  /** Adam: first and second moments; SGD: the accumulation. Allocated at the first step or by `setState`. */
  private slots: Float32Array[] = [];

  constructor(
    readonly kind: OptimizerName,
    private lr: number,
    readonly momentum = 0.9,
  ) {}

  setLearningRate(lr: number): void {
    this.lr = lr;
  }

  get learningRate(): number {
    return this.lr;
  }

  /**
   * Starts one update of `n` parameters with a gradient of `parts.length` parts: checks the sizes, counts the
   * update and returns it as data. Null when every scale is 0 (nothing to apply, nothing counted).
   */
  begin(n: number, parts: readonly Float32Array[], scales: readonly number[]): UpdateSpec | null {
    if (parts.length !== scales.length) throw new DynnError(`internal: ${parts.length} gradient parts, ${scales.length} scales`);
    parts.forEach((p, i) => {
      if (scales[i] !== 0 && p.length !== n) throw new DynnError(`internal: a gradient of ${p.length} values for ${n} parameters`);
    });
    if (scales.every((s) => s === 0)) return null;
    if (this.slots.length === 0) this.slots = Array.from({ length: SLOTS[this.kind] }, () => sharedFloats(n));
    else if (this.slots[0].length !== n) throw new DynnError(`this optimizer updates ${this.slots[0].length} parameters, not ${n}`);
    this.iterations++;
    return { kind: this.kind, lr: this.lr, momentum: this.momentum, t: this.iterations, slots: this.slots, scales: scales.slice() };
  }

  /**
   * One update of `params` in place, with the gradient `sum_i scales[i] * parts[i]` (each part the size of
   * `params`; parts with scale 0 are skipped, so a stale buffer cannot leak in).
   */
  step(params: Float32Array, parts: readonly Float32Array[], scales: readonly number[]): void {
    const spec = this.begin(params.length, parts, scales);
    if (spec) applyUpdate(spec, params, parts, 0, params.length);
  }

  /** Optimizer slots as named arrays: `slot.0` the iteration count, then the flat slots. */
  async getState(): Promise<NamedArray[]> {
    const n = this.slots[0]?.length ?? 0;
    const slots = this.slots.length ? this.slots : Array.from({ length: SLOTS[this.kind] }, () => new Float32Array(0));
    return [
      { name: 'slot.0', shape: [], data: Float32Array.of(this.iterations) },
      ...slots.map((data, i) => ({ name: `slot.${i + 1}`, shape: [n], data: data.slice() })),
    ];
  }

  /**
   * Restores `getState()`'s slots, for `size` parameters when given. Checkpoints of TF.js's per-weight optimizer
   * hold one slot per weight and kind; those are joined into the flat slots (same weight order).
   */
  async setState(arrays: NamedArray[], size?: number): Promise<void> {
    const k = SLOTS[this.kind];
    const perKind = (arrays.length - 1) / k;
    if (arrays.length < 1 + k || !Number.isInteger(perKind) || arrays[0].data.length !== 1) {
      throw new DynnError(`optimizer state has ${arrays.length} slots; ${this.kind} expects the iteration count, then ${k} x (number of weights)`);
    }
    const slots: Float32Array[] = [];
    for (let j = 0; j < k; j++) {
      const group = arrays.slice(1 + j * perKind, 1 + (j + 1) * perKind);
      const data = sharedFloats(group.reduce((a, g) => a + g.data.length, 0));
      let o = 0;
      for (const g of group) {
        data.set(g.data, o);
        o += g.data.length;
      }
      slots.push(data);
    }
    if (slots.some((s) => s.length !== slots[0].length)) throw new DynnError(`optimizer state slots differ in size: ${slots.map((s) => s.length).join(', ')}`);
    if (size !== undefined && slots[0].length !== 0 && slots[0].length !== size) {
      throw new DynnError(`optimizer state holds ${slots[0].length} values per slot; this network has ${size} trainable parameters`);
    }
    this.iterations = arrays[0].data[0];
    // Empty slots: state saved before any update.
    this.slots = slots[0].length ? slots : [];
  }

  /** Forgets the moments and the step count: the next update starts as the first (Adam's bias correction included). */
  dispose(): void {
    this.slots = [];
    this.iterations = 0;
  }
}

function sharedFloats(n: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(n * 4));
}

/**
 * Applies `spec` to `params[lo, hi)`: the pass `Optimizer.step` makes, over a range (elementwise, so ranges
 * done by different threads add up to exactly the whole pass).
 */
export function applyUpdate(spec: UpdateSpec, params: Float32Array, parts: readonly Float32Array[], lo: number, hi: number): void {
  const used = parts.flatMap((p, i) => (spec.scales[i] === 0 ? [] : [{ p: p.subarray(lo, hi), s: spec.scales[i] }]));
  if (used.length === 0) return;
  // Up to two parts (two threads) are summed in the update's own pass; more are summed first, in a buffer kept
  // for the next update.
  let [a, b] = [used[0], used[1] ?? { p: used[0].p, s: 0 }];
  if (used.length > 2) {
    if (sumBuffer.length < hi - lo) sumBuffer = new Float32Array(hi - lo);
    const sum = sumBuffer.subarray(0, hi - lo).fill(0);
    for (const { p, s } of used) for (let j = 0; j < sum.length; j++) sum[j] += s * p[j];
    [a, b] = [{ p: sum, s: 1 }, { p: sum, s: 0 }];
  }
  const w = params.subarray(lo, hi);
  const slots = spec.slots.map((x) => x.subarray(lo, hi));
  if (spec.kind === 'adam') adamPass(w, slots[0], slots[1], a.p, a.s, b.p, b.s, spec.lr, spec.t);
  else momentumPass(w, slots[0], a.p, a.s, b.p, b.s, spec.lr, spec.momentum);
}

/** `applyUpdate`'s sum of more than two gradient parts (one buffer per thread: each has its own module). */
let sumBuffer = new Float32Array(0);

/** Adam, TF.js's form: m and v updated, then w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). */
function adamPass(
  w: Float32Array,
  m: Float32Array,
  v: Float32Array,
  g0: Float32Array,
  s0: number,
  g1: Float32Array,
  s1: number,
  lr: number,
  t: number,
): void {
  const c1 = 1 / (1 - BETA1 ** t);
  const c2 = 1 / (1 - BETA2 ** t);
  const n = w.length;
  for (let j = 0; j < n; j++) {
    const g = s0 * g0[j] + s1 * g1[j];
    const mj = BETA1 * m[j] + (1 - BETA1) * g;
    const vj = BETA2 * v[j] + (1 - BETA2) * g * g;
    m[j] = mj;
    v[j] = vj;
    w[j] -= (lr * mj * c1) / (Math.sqrt(vj * c2) + EPSILON);
  }
}

/** SGD with momentum, TF.js's form: a = momentum * a + g, then w -= lr * a. */
function momentumPass(w: Float32Array, acc: Float32Array, g0: Float32Array, s0: number, g1: Float32Array, s1: number, lr: number, momentum: number): void {
  const n = w.length;
  for (let j = 0; j < n; j++) {
    const a = momentum * acc[j] + s0 * g0[j] + s1 * g1[j];
    acc[j] = a;
    w[j] -= lr * a;
  }
}
