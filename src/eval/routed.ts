import * as tf from '@tensorflow/tfjs-core';
import type { Network } from '../models/network.js';
import type { ImageSet } from '../data/types.js';
import type { GateMode } from '../layers/types.js';
import { toFloat } from '../data/imageset.js';
import { RoutingState } from '../route/context.js';
import { timeInTurns } from './latency.js';
import { tally } from './evaluate.js';
import { coefficientOfVariation } from '../route/experts.js';

/** How a dynamic network did at one inference threshold of its gates. */
export interface RoutedEval {
  threshold: number;
  accuracy: number;
  count: number;
  /** Mean executed FLOPs per sample, gates included, over the backbone's with nothing skipped and no gate. */
  flopsRatio: number;
  /** The least and the most a sample executed, as the same ratio. */
  flopsMin: number;
  flopsMax: number;
  /** Each sample's ratio, in input order (for the histogram). */
  sampleRatios: Float64Array;
  /** The gates' own MACs over the backbone's (what deciding costs each sample). */
  gateShare: number;
  /** Per gated block: the mean fraction of its groups skipped. */
  skipRates: Record<string, number>;
  /** Per gated block, per class: the mean fraction of its groups the class's samples skipped (NaN for a class with none). */
  classSkipRates: Record<string, number[]>;
  /** Per class: the mean ratio of its samples (NaN for a class with none), and the accuracy. */
  classFlops: number[];
  perClassAccuracy: number[];
  /** Predicted class per sample. */
  predictions: Int32Array;
  /** Networks with a few decision points (switches: a branch, a resolution, a width): see `RoutedPoint.routes`. */
  routes?: Record<string, number[][]>;
  /** Mixtures of experts: each block's expert load and class-by-expert table (see `ExpertStats`). */
  experts?: Record<string, ExpertStats>;
  /** Mixtures of experts: the share of (sample, slot) assignments that found their expert full. */
  overflowRate?: number;
}

/** How one mixture-of-experts block spread the samples over its experts (its k slots together). */
export interface ExpertStats {
  /** Each expert's share of the assignments that ran (sums to 1). */
  load: number[];
  /** Coefficient of variation of the load (0: perfectly balanced; sqrt(E - 1): one expert takes all). */
  cv: number;
  /** The most used expert's share. */
  maxShare: number;
  /** Per class, per expert: the share of the class's assignments each expert ran (NaN for a class with none). */
  classes: number[][];
  /** The share of the block's assignments that found their expert full. */
  overflowRate: number;
}

/** Decision points up to which evaluation records each class's routes (a switch-based network has one). */
const ROUTE_TABLE_GATES = 4;

/** Evaluation options of a dynamic network. */
export interface RoutedEvalOptions {
  /** Inference threshold on the gates' probabilities (default 0.5). */
  threshold?: number;
  batchSize?: number;
  /**
   * `hard` (default), `masked` (the field's baseline: same decisions, every channel computed) or `full` (no
   * gate runs: the backbone with nothing skipped).
   */
  mode?: Extract<GateMode, 'hard' | 'masked' | 'full'>;
}

/**
 * Accuracy and per-sample executed FLOPs of a network whose gates decide per input, at u = 1 and one
 * inference threshold. Decisions are deterministic and skipped work is not done.
 */
export function evaluateRouted(model: Network, data: ImageSet, options: RoutedEvalOptions = {}): RoutedEval {
  const threshold = options.threshold ?? 0.5;
  const batch = options.batchSize ?? model.batchFor(256);
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(batch * per);
  const plan = model.plan(1);
  const { fixed, backbone } = model.routedMacs(plan);
  const predictions = new Int32Array(data.count);
  const sampleRatios = new Float64Array(data.count);
  const skipped = new Map<string, number>();
  // Per gate: samples of each class on each route, [class][route] (the route tables and the skips per class).
  const byRoute = new Map<string, number[][]>();
  const choices = new Set<string>();
  const overflow = new Map<string, { events: number; of: number }>();
  for (let start = 0; start < data.count; start += batch) {
    const n = Math.min(batch, data.count - start);
    const x = toFloat(data, start, n, buf);
    const routing = RoutingState.start(options.mode ?? 'hard', n, { threshold });
    const idx = tf.tidy(() => tf.argMax(model.forward(tf.tensor(x, [n, ...model.inputShape]), plan, { routing }), 1));
    predictions.set(idx.dataSync() as Int32Array, start);
    idx.dispose();
    routing.executedMacs.forEach((m, i) => (sampleRatios[start + i] = (fixed + m) / backbone));
    for (const [gate, rate] of Object.entries(routing.skipRates())) skipped.set(gate, (skipped.get(gate) ?? 0) + rate * n);
    routing.choiceGates.forEach((g) => choices.add(g));
    for (const [name, c] of routing.counters) {
      const o = overflow.get(name) ?? { events: 0, of: 0 };
      overflow.set(name, { events: o.events + c.events, of: o.of + c.of });
    }
    for (const [gate, routes] of routing.decisions) {
      let t = byRoute.get(gate);
      const K = routing.fullRoutes.get(gate)! + 1;
      if (!t) byRoute.set(gate, (t = Array.from({ length: model.numClasses }, () => new Array<number>(K).fill(0))));
      routes.forEach((k, i) => {
        if (k < 0) return;
        t![data.labels[start + i]][k]++;
      });
    }
  }
  const { accuracy, perClassAccuracy, perClassMean } = tally(predictions, data.labels, model.numClasses, sampleRatios);
  return {
    threshold,
    accuracy,
    count: data.count,
    flopsRatio: sampleRatios.reduce((a, b) => a + b, 0) / Math.max(1, data.count),
    flopsMin: data.count ? Math.min(...sampleRatios) : NaN,
    flopsMax: data.count ? Math.max(...sampleRatios) : NaN,
    sampleRatios,
    gateShare: gateShare(model),
    skipRates: Object.fromEntries([...skipped].map(([g, s]) => [g, s / Math.max(1, data.count)])),
    classSkipRates: Object.fromEntries([...byRoute].filter(([g]) => !choices.has(g)).map(([g, t]) => [g, classSkipShares(t)])),
    classFlops: perClassMean,
    perClassAccuracy,
    predictions,
    ...(byRoute.size && byRoute.size <= ROUTE_TABLE_GATES ? { routes: routeShares(byRoute) } : {}),
    ...(choices.size ? { experts: expertStats(byRoute, choices, overflow), overflowRate: rate([...overflow.values()]) } : {}),
  };
}

const rate = (cs: { events: number; of: number }[]) => cs.reduce((a, c) => a + c.events, 0) / Math.max(1, cs.reduce((a, c) => a + c.of, 0));

/**
 * Per mixture block, its choice gates' [class][expert] counts summed over its k slots (a block with k > 1
 * records slot s as `<block>.k<s>`), as load shares, their CV and the class-by-expert table.
 */
function expertStats(byRoute: Map<string, number[][]>, choices: Set<string>, overflow: Map<string, { events: number; of: number }>): Record<string, ExpertStats> {
  const blocks = new Map<string, number[][]>();
  for (const gate of choices) {
    const block = overflow.has(gate) ? gate : gate.replace(/\.k\d+$/, '');
    const t = byRoute.get(gate)!;
    const sum = blocks.get(block);
    blocks.set(block, sum ? sum.map((r, c) => r.map((v, e) => v + t[c][e])) : t.map((r) => [...r]));
  }
  const out: Record<string, ExpertStats> = {};
  for (const [block, t] of blocks) {
    const counts = t[0].map((_, e) => t.reduce((a, r) => a + r[e], 0));
    const total = counts.reduce((a, b) => a + b, 0);
    const load = counts.map((c) => (total ? c / total : 0));
    out[block] = {
      load,
      cv: coefficientOfVariation(counts),
      maxShare: Math.max(...load),
      classes: t.map((r) => {
        const all = r.reduce((a, b) => a + b, 0);
        return r.map((c) => (all ? c / all : NaN));
      }),
      overflowRate: rate(overflow.has(block) ? [overflow.get(block)!] : []),
    };
  }
  return out;
}

/** Per class, the mean share of a gate's groups skipped, from its [class][route] counts (route k of K runs k of K - 1). */
function classSkipShares(t: number[][]): number[] {
  return t.map((r) => {
    const G = r.length - 1;
    const total = r.reduce((a, b) => a + b, 0);
    return total ? r.reduce((a, c, k) => a + c * (1 - k / G), 0) / total : NaN;
  });
}

/** Counts per class and route as each class's shares (NaN for a class with no sample). */
function routeShares(byRoute: Map<string, number[][]>): Record<string, number[][]> {
  const out: Record<string, number[][]> = {};
  for (const [gate, t] of byRoute) {
    out[gate] = t.map((r) => {
      const total = r.reduce((a, b) => a + b, 0);
      return r.map((c) => (total ? c / total : NaN));
    });
  }
  return out;
}

/** The gates' own MACs over the backbone's with nothing skipped: what deciding costs each sample. */
export function gateShare(model: Network): number {
  const gateMacs = model.cost(1).layers.filter((c) => c.gate).reduce((a, c) => a + c.macs, 0);
  return gateMacs / model.routedMacs(1).backbone;
}

/** One inference threshold of a dynamic network in a sweep (`dynn sweep RUN --json`). */
export interface RoutedPoint {
  threshold: number;
  accuracy: number;
  /** Mean executed FLOPs per sample, gates included, over the backbone's with nothing skipped. */
  flopsRatio: number;
  flopsMin: number;
  flopsMax: number;
  gateShare: number;
  /** Per gated block, in the network's order: the mean fraction of its groups skipped. */
  skipRates: Record<string, number>;
  /** Per gated block, per class: the mean fraction of its groups the class's samples skipped (which blocks each class skips). */
  classSkipRates: Record<string, number[]>;
  /** Per class: the mean FLOPs ratio of its samples (NaN for a class with none). */
  classFlops: number[];
  /** Per class: the accuracy (NaN for a class with no sample). */
  perClassAccuracy: number[];
  /** Samples per tenth of the FLOPs ratio: [0, 0.1), [0.1, 0.2), ..., [0.9, 1] (above 1 counts in the last). */
  histogram: number[];
  latencyMs: { batch1: number; batch64: number };
  /**
   * Networks with at most four gates (a switch: the branch, resolution or width each sample took): per gate,
   * per class, the share of the class's samples on each route (route k of the gate, cheapest first; NaN for
   * a class with no sample).
   */
  routes?: Record<string, number[][]>;
  /** Mixtures of experts: per block, the expert load, its CV and the class-by-expert table. */
  experts?: Record<string, ExpertStats>;
  /** Mixtures of experts: the share of assignments that found their expert full. */
  overflowRate?: number;
}

/** A dynamic network swept over inference thresholds, beside its backbone and the masked baseline. */
export interface RoutedSweep {
  points: RoutedPoint[];
  /** The backbone with nothing skipped and no gate, run the same way (TF.js, unfolded BatchNorm). */
  full: { accuracy: number; latencyMs: { batch1: number; batch64: number } };
  /** The first threshold's decisions run the way the field runs them: every channel, then the mask. */
  masked: { latencyMs: { batch64: number } };
}

/**
 * Sweeps the gates' inference threshold (one trained model, many operating points): accuracy and executed
 * FLOPs on `data`, and latency at batch 1 and 64 on its first images, every configuration timed in turns
 * so the ratios do not carry the machine's drift.
 */
export function routedSweep(model: Network, data: ImageSet, thresholds: number[], options: { noLatency?: boolean; reps?: number } = {}): RoutedSweep {
  const evals = thresholds.map((threshold) => evaluateRouted(model, data, { threshold }));
  const fullAccuracy = evaluateRouted(model, data, { mode: 'full' }).accuracy;
  type Config = { mode?: GateMode; threshold?: number; batch: number };
  const configs: Config[] = [
    ...thresholds.flatMap((threshold) => [1, 64].map((batch) => ({ mode: 'hard' as const, threshold, batch }))),
    { batch: 1 },
    { batch: 64 },
    { mode: 'masked', threshold: thresholds[0], batch: 64 },
  ];
  const times = options.noLatency ? configs.map(() => NaN) : timeConfigs(model, data, configs, options.reps ?? 10);
  const at = (c: Partial<Config>) => times[configs.findIndex((k) => k.mode === c.mode && k.threshold === c.threshold && k.batch === c.batch)];
  return {
    points: evals.map((e) => ({
      threshold: e.threshold,
      accuracy: e.accuracy,
      flopsRatio: e.flopsRatio,
      flopsMin: e.flopsMin,
      flopsMax: e.flopsMax,
      gateShare: e.gateShare,
      skipRates: e.skipRates,
      classSkipRates: e.classSkipRates,
      classFlops: e.classFlops,
      perClassAccuracy: e.perClassAccuracy,
      histogram: histogram(e.sampleRatios),
      ...(e.routes ? { routes: e.routes } : {}),
      ...(e.experts ? { experts: e.experts, overflowRate: e.overflowRate } : {}),
      latencyMs: { batch1: at({ mode: 'hard', threshold: e.threshold, batch: 1 }), batch64: at({ mode: 'hard', threshold: e.threshold, batch: 64 }) },
    })),
    full: { accuracy: fullAccuracy, latencyMs: { batch1: at({ batch: 1 }), batch64: at({ batch: 64 }) } },
    masked: { latencyMs: { batch64: at({ mode: 'masked', threshold: thresholds[0], batch: 64 }) } },
  };
}

function histogram(ratios: Float64Array): number[] {
  const bins = new Array<number>(10).fill(0);
  for (const r of ratios) bins[Math.min(9, Math.max(0, Math.floor(r * 10)))]++;
  return bins;
}

/** Median ms of each configuration on the first images of `data`, the configurations taking turns. */
function timeConfigs(model: Network, data: ImageSet, configs: { mode?: GateMode; threshold?: number; batch: number }[], reps: number): number[] {
  const per = model.inputShape.reduce((a, b) => a * b, 1);
  const inputs = new Map<number, tf.Tensor>();
  for (const { batch } of configs) {
    const n = Math.min(batch, data.count);
    if (!inputs.has(batch)) inputs.set(batch, tf.tensor(toFloat(data, 0, n, new Float32Array(n * per)), [n, ...model.inputShape]));
  }
  const plan = model.plan(1);
  try {
    return timeInTurns(
      configs.map((c) => () => {
        const x = inputs.get(c.batch)!;
        const routing = c.mode ? RoutingState.start(c.mode, x.shape[0], { threshold: c.threshold }) : undefined;
        return tf.tidy(() => model.forward(x, plan, { routing }));
      }),
      { reps, warmup: 2 },
    );
  } finally {
    for (const x of inputs.values()) x.dispose();
  }
}
