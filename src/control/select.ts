import { DynnError } from '../util/errors.js';

/** One operating point evaluated on a validation split. */
export interface Candidate {
  /** A readable name: `fixed u=0.5`, `cascade 0.25>1 t=0.9`, `bandit u>=0.3`. */
  name: string;
  /** What produced it: fixed, cascade, bandit. */
  kind: string;
  /** Its settings (u, stages, threshold, allowed actions). */
  params: Record<string, unknown>;
  accuracy: number;
  /** Mean FLOPs ratio relative to the full network at u = 1, the controller's own cost included. */
  flopsRatio: number;
  /** Mean latency per sample (ms) from a latency table, when one was given. */
  ms?: number;
}

/** What a cost is measured in. */
export type CostUnit = 'flops' | 'ms';

/**
 * The two problems of choosing an operating point: (a) least mean cost with accuracy >= beta x the full
 * network's; (b) least error with mean cost within a budget.
 */
export type Objective =
  | { kind: 'min-cost'; beta: number; fullAccuracy: number; unit: CostUnit }
  | { kind: 'min-error'; budget: number; unit: CostUnit };

/** The answer of `selectOperatingPoint`. */
export interface Selection {
  choice: Candidate;
  /** The candidates no other beats on both accuracy and cost, cheapest first. */
  front: Candidate[];
}

/** A candidate's cost in a unit; a clear error when it has no latency. */
export function costOf(c: Candidate, unit: CostUnit): number {
  if (unit === 'flops') return c.flopsRatio;
  if (c.ms === undefined || !Number.isFinite(c.ms)) throw new DynnError(`candidate "${c.name}" has no latency: a latency table is needed for a budget in ms`);
  return c.ms;
}

/** The Pareto front: candidates with no other at most as costly and strictly more accurate (or as accurate and cheaper). */
export function paretoFront(candidates: Candidate[], unit: CostUnit = 'flops'): Candidate[] {
  const sorted = [...candidates].sort((a, b) => costOf(a, unit) - costOf(b, unit) || b.accuracy - a.accuracy);
  const front: Candidate[] = [];
  for (const c of sorted) {
    if (front.length === 0 || c.accuracy > front[front.length - 1].accuracy) front.push(c);
  }
  return front;
}

/** Solves one of the two problems over the candidates; throws a DynnError naming the closest miss when none qualifies. */
export function selectOperatingPoint(candidates: Candidate[], objective: Objective): Selection {
  if (candidates.length === 0) throw new DynnError('no candidate operating points to choose from');
  const unit = objective.unit;
  const front = paretoFront(candidates, unit);
  const fmt = (c: Candidate) => `${c.name} (accuracy ${(100 * c.accuracy).toFixed(2)}%, cost ${costOf(c, unit).toPrecision(4)}${unit === 'ms' ? ' ms' : ''})`;
  if (objective.kind === 'min-cost') {
    const { beta, fullAccuracy } = objective;
    if (!(beta > 0 && beta <= 1)) throw new DynnError(`--min-accuracy must be a fraction in (0, 1] of the full network's accuracy, got ${beta}`);
    const need = beta * fullAccuracy;
    // The front is sorted by cost with rising accuracy: the first that qualifies is the cheapest.
    const choice = front.find((c) => c.accuracy >= need - 1e-12);
    if (!choice) {
      throw new DynnError(`no candidate reaches accuracy ${(100 * need).toFixed(2)}% (${beta} x ${(100 * fullAccuracy).toFixed(2)}%); the most accurate is ${fmt(front[front.length - 1])}`);
    }
    return { choice, front };
  }
  const { budget } = objective;
  if (!(budget > 0)) throw new DynnError(`the cost budget must be positive, got ${budget}`);
  const within = front.filter((c) => costOf(c, unit) <= budget + 1e-12);
  if (!within.length) throw new DynnError(`no candidate has a mean cost within ${budget}${unit === 'ms' ? ' ms' : ' (FLOPs ratio)'}; the cheapest is ${fmt(front[0])}`);
  return { choice: within[within.length - 1], front };
}
