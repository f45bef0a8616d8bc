import { DynnError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { GatingMode } from '../gating/gating.js';
import type { Network } from '../models/network.js';
import type { Plan } from '../layers/types.js';

/** How one sandwich-rule step picks its widths. */
export interface SandwichOptions {
  /** Random widths per step besides the widest and the narrowest (US-Nets uses 2). */
  n: number;
  /** Draws the random widths. */
  rng: Rng;
  gating?: GatingMode;
  /** Draws the groups of independent gating. */
  gateRng?: Rng;
}

/** The narrowest utilization of a network: the representative of its lowest operating level. */
export function narrowestU(model: Network): number {
  return model.levelUtilizations()[0];
}

/**
 * The plans of one step of the sandwich rule (universally slimmable networks): the widest (u = 1), the
 * narrowest, and `n` widths drawn uniformly between them. The widest comes first: in-place distillation
 * teaches every other plan its soft predictions.
 */
export function sandwichPlans(model: Network, o: SandwichOptions): Plan[] {
  if (!Number.isInteger(o.n) || o.n < 0) throw new DynnError(`sandwich widths must be a non-negative integer, got ${o.n}`);
  const lo = narrowestU(model);
  const us = [1, lo, ...Array.from({ length: o.n }, () => lo + (1 - lo) * (1 - o.rng.next()))];
  return us.map((u) => model.plan(u, { gating: o.gating, rng: o.gateRng }));
}
