/**
 * Files other commands make beside a run (`RUN/<file>`), each from the run's weights. The report and the
 * dashboard read them (each is optional; a chart whose file is missing names the command that makes it), and
 * `train --force` removes them with the run they describe. This file loads nothing.
 */
export const RUN_FILES = {
  /**
   * `dynn sweep RUN --json > RUN/sweep.json`, or `dynn report RUN --save-sweep`. For a dynamic run, its gates'
   * threshold sweep (`dynn sweep` of such a run writes it, with a `dynamic` field).
   */
  sweep: 'sweep.json',
  /** `dynn sweep RUN --thresholds LIST --json > RUN/exit-sweep.json` (early-exit models). */
  exitSweep: 'exit-sweep.json',
  /** `dynn eval RUN --controller NAME --json > RUN/eval-NAME.json`: one file per controller. */
  evalPrefix: 'eval-',
  /** `dynn gates eval RUN --gates DIR --json > RUN/gates-eval-NAME.json`: learned gates against nested u. */
  gatesEvalPrefix: 'gates-eval',
  /** `dynn export RUN --onnx RUN/model.onnx`: the model the dashboard's demo page runs. */
  onnx: 'model.onnx',
  /** `dynn profile RUN/model.onnx`: ONNX Runtime latency per level. */
  onnxProfile: 'model.onnx.profile.json',
  /** Live training progress (see src/dashboard/progress.ts). */
  progress: 'progress.json',
} as const;

/**
 * Whether `name` is a file of `RUN_FILES` made from a run's weights (progress.json excepted: training
 * itself writes it), so stale once the run is replaced.
 */
export function isDerivedRunFile(name: string): boolean {
  const f = RUN_FILES;
  return (
    [f.sweep, f.exitSweep, f.onnx, f.onnxProfile].includes(name as never) ||
    (name.endsWith('.json') && (name.startsWith(f.evalPrefix) || name.startsWith(f.gatesEvalPrefix)))
  );
}
