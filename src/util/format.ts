/** An option's flag word from its camelCase name (`maxBatch` is `max-batch`). */
export function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** Formats a number of FLOPs or parameters with an SI suffix. */
export function si(n: number): string {
  if (!Number.isFinite(n)) return '-';
  const units: [number, string][] = [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [v, s] of units) if (Math.abs(n) >= v) return `${(n / v).toFixed(2)}${s}`;
  return String(Math.round(n));
}

export const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(2)}%` : '-');
export const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '-');
