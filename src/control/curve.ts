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
