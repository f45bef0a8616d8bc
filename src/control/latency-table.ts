import { promises as fsp } from 'node:fs';
import { z } from 'zod';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';

/**
 * Measured latency per operating level and batch size: `{ levels: [{ u, latencyMs: { "<batch>": ms } }] }`.
 * The ONNX export writes one beside each model as `<model>.onnx.profile.json`; `measureLatencyTable`
 * (measure-latency.ts) writes the same format from TF.js. Other top-level fields (model, provider, ...) are kept and ignored.
 */
export interface LatencyTable {
  levels: { u: number; latencyMs: Record<string, number> }[];
  [key: string]: unknown;
}

const tableSchema = z
  .object({
    levels: z
      .array(
        z.object({
          u: z.number().gt(0).lte(1),
          latencyMs: z.record(z.string().regex(/^[1-9][0-9]*$/, 'batch sizes are positive integers'), z.number().positive()),
        }).passthrough(),
      )
      .min(1),
  })
  .passthrough();

/** Validates a parsed latency table; `source` names it in errors. */
export function parseLatencyTable(raw: unknown, source = 'latency table'): LatencyTable {
  const r = tableSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new DynnError(`${source} is not a latency table ({levels: [{u, latencyMs: {<batch>: ms}}]}): ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  for (const l of r.data.levels) {
    if (Object.keys(l.latencyMs).length === 0) throw new DynnError(`${source}: level u=${l.u} has no latency`);
  }
  const table = r.data as LatencyTable;
  table.levels = [...table.levels].sort((a, b) => a.u - b.u);
  return table;
}

/** Reads and validates a latency table file (e.g. `model.onnx.profile.json`). */
export async function loadLatencyTable(file: string): Promise<LatencyTable> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    throw new DynnError(`cannot read latency table ${file}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DynnError(`latency table ${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseLatencyTable(raw, file);
}

/**
 * Latency of one level entry at a batch size: measured where it was; linear between measured sizes;
 * the smallest measured size's time below it; proportional to the batch above the largest.
 */
export function latencyAtBatch(latencyMs: Record<string, number>, batch: number): number {
  const pts = Object.entries(latencyMs).map(([b, ms]) => [Number(b), ms] as const).sort((a, b) => a[0] - b[0]);
  if (batch <= pts[0][0]) return pts[0][1];
  for (let i = 1; i < pts.length; i++) {
    const [b1, m1] = pts[i];
    if (batch <= b1) {
      const [b0, m0] = pts[i - 1];
      return m0 + ((m1 - m0) * (batch - b0)) / (b1 - b0);
    }
  }
  const [bn, mn] = pts[pts.length - 1];
  return (mn * batch) / bn;
}

/**
 * Latency (ms) of a batch at utilization u: the entry whose level u runs at (`sameLevel`), else the entry of
 * the smallest u >= u (a conservative bound), else the largest.
 */
export function latencyOf(table: LatencyTable, u: number, batch: number, sameLevel?: (a: number, b: number) => boolean): number {
  checkUtilization(u);
  const entry =
    (sameLevel && table.levels.find((l) => sameLevel(l.u, u))) ??
    table.levels.find((l) => l.u >= u - 1e-12) ??
    table.levels[table.levels.length - 1];
  return latencyAtBatch(entry.latencyMs, batch);
}
