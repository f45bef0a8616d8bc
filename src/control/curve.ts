/** A point of an accuracy-cost curve. */
export interface CurvePoint {
  accuracy: number;
  flopsRatio: number;
}

/**
 * Accuracy of the fixed-u curve at a FLOPs ratio, linear between the measured levels (what a random mix of
 * the two neighbouring levels achieves). NaN below the cheapest level; the best level's accuracy above the
 * most expensive.
 */
export function interpolateAccuracy(curve: CurvePoint[], flopsRatio: number): number {
  const pts = [...curve].sort((a, b) => a.flopsRatio - b.flopsRatio);
  if (pts.length === 0 || flopsRatio < pts[0].flopsRatio - 1e-12) return NaN;
  for (let i = 1; i < pts.length; i++) {
    const a = pts[i - 1];
    const b = pts[i];
    if (flopsRatio <= b.flopsRatio) {
      if (b.flopsRatio === a.flopsRatio) return Math.max(a.accuracy, b.accuracy);
      return a.accuracy + ((b.accuracy - a.accuracy) * (flopsRatio - a.flopsRatio)) / (b.flopsRatio - a.flopsRatio);
    }
  }
  return pts[pts.length - 1].accuracy;
}

/** The points no other point beats (as cheap or cheaper and more accurate): a curve of points not ordered by cost, such as every fixed (u, r). */
export function paretoFront<P extends CurvePoint>(points: P[]): P[] {
  return points.filter((p) => !points.some((q) => q.flopsRatio <= p.flopsRatio && q.accuracy > p.accuracy));
}

/**
 * The best accuracy a fixed point of `curve`, or a random mix of two, reaches at a mean FLOPs ratio of at most
 * `flopsRatio`: the upper concave envelope of the points, flat from its most accurate point on (spending less
 * is allowed). NaN below the cheapest point. Unlike `interpolateAccuracy`, a level that a cheaper one beats,
 * or a dip between levels, does not lower it.
 */
export function bestMixAccuracy(curve: CurvePoint[], flopsRatio: number): number {
  const pts = [...curve].sort((a, b) => a.flopsRatio - b.flopsRatio || a.accuracy - b.accuracy);
  if (pts.length === 0 || flopsRatio < pts[0].flopsRatio - 1e-12) return NaN;
  // Upper hull, left to right: drop a point on or under the chord of its neighbours.
  const hull: CurvePoint[] = [];
  for (const p of pts) {
    while (hull.length >= 2) {
      const [a, b] = [hull[hull.length - 2], hull[hull.length - 1]];
      if ((b.flopsRatio - a.flopsRatio) * (p.accuracy - a.accuracy) - (b.accuracy - a.accuracy) * (p.flopsRatio - a.flopsRatio) >= 0) hull.pop();
      else break;
    }
    if (hull.length === 1 && hull[0].flopsRatio === p.flopsRatio) hull.pop();
    hull.push(p);
  }
  const peak = hull.reduce((best, p, i) => (p.accuracy > hull[best].accuracy ? i : best), 0);
  return interpolateAccuracy(hull.slice(0, peak + 1), flopsRatio);
}

/** Where an operating point sits against a curve at its own FLOPs ratio. */
export interface CurveGap {
  /** The best accuracy of the curve's points, or a mix of two, at the point's FLOPs ratio (`bestMixAccuracy`); null when the point is cheaper than all of the curve. */
  curveAccuracy: number | null;
  /** The point's accuracy minus the curve's (a fraction, negative below the curve); null with `curveAccuracy`. */
  gap: number | null;
  /** True when the curve, or a mix of two of its points, is at least as cheap and more accurate. */
  below: boolean;
}

/** Compares an operating point with the best a curve's points, or a mix of two, do at the point's FLOPs ratio (see `bestMixAccuracy`). */
export function againstCurve(curve: CurvePoint[], point: CurvePoint): CurveGap {
  const at = bestMixAccuracy(curve, point.flopsRatio);
  if (!Number.isFinite(at)) return { curveAccuracy: null, gap: null, below: false };
  const gap = point.accuracy - at;
  // Float noise of the interpolation is not a gap: a point on the curve is not below it.
  return { curveAccuracy: at, gap, below: gap < -1e-9 };
}

/** One sentence on a point against the fixed-u curve, e.g. for `dynn eval` (`what` names the point). */
export function describeGap(what: string, gap: CurveGap, flopsRatio: number, curve = 'the fixed-u curve'): string {
  const at = `at FLOPs ratio ${flopsRatio.toFixed(3)}`;
  if (gap.curveAccuracy === null || gap.gap === null) return `${what} is cheaper than every point of ${curve} (${at}): no curve point to compare with`;
  const points = `${Math.abs(100 * gap.gap).toFixed(2)} points`;
  const there = `the best of ${curve}, or a mix of two of its points, gives ${(100 * gap.curveAccuracy).toFixed(2)}% there`;
  if (gap.below) return `BELOW ${curve}: ${what} is ${points} less accurate than ${curve} ${at} (${there}); a fixed u, or a mix of two, does better at the same cost`;
  return `${what} is ${points} above ${curve} ${at} (${there})`;
}
