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

/** Where an operating point sits against a curve at its own FLOPs ratio. */
export interface CurveGap {
  /** The curve's accuracy at the point's FLOPs ratio (interpolated); null when the point is cheaper than all of the curve. */
  curveAccuracy: number | null;
  /** The point's accuracy minus the curve's (a fraction, negative below the curve); null with `curveAccuracy`. */
  gap: number | null;
  /** True when the curve, or a mix of two of its points, is at least as cheap and more accurate. */
  below: boolean;
}

/** Compares an operating point with a curve at the point's FLOPs ratio (see `interpolateAccuracy`). */
export function againstCurve(curve: CurvePoint[], point: CurvePoint): CurveGap {
  const at = interpolateAccuracy(curve, point.flopsRatio);
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
  const there = `${curve} gives ${(100 * gap.curveAccuracy).toFixed(2)}% there`;
  if (gap.below) return `BELOW ${curve}: ${what} is ${points} less accurate than ${curve} ${at} (${there}); a fixed u, or a mix of two, does better at the same cost`;
  return `${what} is ${points} above ${curve} ${at} (${there})`;
}
