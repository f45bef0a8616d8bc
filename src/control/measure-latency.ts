import type { Network } from '../models/network.js';
import { measureLatency } from '../eval/latency.js';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import type { LatencyTable } from './latency-table.js';

// Apart from latency-table.ts so that readers of tables (the server) do not load TF.js.
/** Measures a latency table with TF.js (frozen subnets, median of `reps` runs) for the given levels and batches. */
export function measureLatencyTable(model: Network, us: number[], batches: number[], options: { reps?: number } = {}): LatencyTable {
  us.forEach(checkUtilization);
  for (const b of batches) if (!Number.isInteger(b) || b < 1) throw new DynnError(`batch sizes must be positive integers, got ${b}`);
  return {
    engine: 'tfjs',
    model: model.config.model,
    levels: us.map((u) => ({
      u,
      latencyMs: Object.fromEntries(batches.map((b) => [String(b), measureLatency(model, u, b, { reps: options.reps ?? 10 })])),
    })),
  };
}
