import Table from 'cli-table3';
import { DynnError } from '../util/errors.js';

export { si, pct, ms } from '../util/format.js';

/** Where a command writes: injectable so tests can capture output. */
export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Whether stderr is a terminal (progress bars only then). */
  errIsTTY: boolean;
}

export const processIo: Io = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  errIsTTY: Boolean(process.stderr.isTTY),
};

/** A text table with a header row. */
export function table(head: string[], rows: (string | number)[][]): string {
  const t = new Table({
    head,
    style: { head: [], border: [], compact: true },
  });
  t.push(...rows.map((r) => r.map(String)));
  return t.toString() + '\n';
}

/** Parses an optional number option: integer and minimum checked, with the option's name in the error. */
export function numberOption(value: unknown, name: string, opts: { int?: boolean; min?: number; max?: number } = {}): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'number' ? value : Number(value);
  const bad =
    typeof value === 'boolean' ||
    !Number.isFinite(n) ||
    (opts.int && !Number.isInteger(n)) ||
    (opts.min !== undefined && n < opts.min) ||
    (opts.max !== undefined && n > opts.max);
  if (bad) {
    const kind = opts.int ? 'an integer' : 'a number';
    // Number.MIN_VALUE as the minimum means "above 0".
    const positive = opts.min === Number.MIN_VALUE;
    const { min, max } = opts;
    const range =
      min !== undefined && max !== undefined
        ? ` in ${positive ? '(0' : `[${min}`}, ${max}]`
        : min !== undefined
          ? positive ? ' > 0' : ` >= ${min}`
          : max !== undefined ? ` <= ${max}` : '';
    throw new DynnError(`--${name} must be ${kind}${range}, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** Parses a comma-separated list of utilizations (or, as `what` says, other fractions), each in (0, 1]. */
export function uListOption(value: unknown, name = 'u', what = 'a utilization'): number[] | undefined {
  if (value === undefined) return undefined;
  const parts = String(value).split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw new DynnError(`--${name} needs a comma-separated list of numbers in (0, 1]`);
  return parts.map((p) => {
    const u = Number(p);
    if (!Number.isFinite(u) || u <= 0 || u > 1) throw new DynnError(`--${name}: ${p} is not ${what} in (0, 1]`);
    return u;
  });
}

/** A string option restricted to a set of choices. */
export function choiceOption<T extends string>(value: unknown, name: string, choices: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!choices.includes(value as T)) throw new DynnError(`--${name} must be one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}
