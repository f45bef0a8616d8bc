/**
 * An early-exit model's exit policy lowered into its graph: every stage in one session run, the samples
 * that leave at an exit dropped from the next stage's batch by `Compress`, and each sample's scores put
 * back in input order by `ScatterND`. No stage output leaves ONNX Runtime between stages: handing stage 2's
 * 3.2 MB of features to JavaScript cost 9.7 ms at two threads, against 2.4 ms for the stage itself
 * (bench/onnx-exits.ts), and its worst rounds went with it.
 *
 * The rule's score is computed in float64 from the float32 logits, as `settleExit` computes it in
 * JavaScript, so the graph and the staged runtime decide alike, but for a score exactly on a threshold
 * (ONNX Runtime's float64 `exp` and `log` may differ from V8's in the last bit).
 */
import { Registry } from '../util/registry.js';
import { exitRules } from '../scaling/rules.js';
import { attr, GraphBuilder, rowCount, valueInfo } from './graph.js';
import { DataType } from './onnx-proto.js';

/** A rule's score of each row of an [n, classes] float64 probability matrix, as [n] float64. */
export type RuleLowering = (g: GraphBuilder, probs: string, prefix: string) => string;

/** Exit rules that lower into a graph, by the name of their `exitRules` entry. */
export const exitRuleLowerings = new Registry<RuleLowering>('exit rule lowering');

exitRuleLowerings.register('entropy', (g, p, prefix) => {
  // -sum p log p over p > 0, as `exitRules` entropy skips the zero probabilities (0 * log 0 is NaN here).
  const zero = g.node('Cast', [g.floatConst(`${prefix}/zero`, [], [0])], `${prefix}/zero_f64`, { to: attr.int(DataType.DOUBLE) });
  const plogp = g.node('Mul', [p, g.node('Log', [p], `${prefix}/log_p`)], `${prefix}/p_log_p`);
  const terms = g.node('Where', [g.node('Greater', [p, zero], `${prefix}/positive`), plogp, zero], `${prefix}/terms`);
  const sum = g.node('ReduceSum', [terms, g.int64Const(`${prefix}/class_axis`, [1])], `${prefix}/sum`, { keepdims: attr.int(0) });
  return g.node('Neg', [sum], `${prefix}/entropy`);
});

exitRuleLowerings.register('confidence', (g, p, prefix) => g.node('ReduceMax', [p], `${prefix}/confidence`, { axes: attr.ints([1]), keepdims: attr.int(0) }));

/** A float32 [n] value filled with exit index `k`, n the rows of `like`: the exit a run of rows left at. */
export function exitIndexOf(g: GraphBuilder, like: string, k: number, prefix: string): string {
  return g.node('Expand', [g.floatConst(`${prefix}/index`, [1], [k]), rowCount(g, like, `${prefix}/rows`)], `${prefix}/exits`);
}

/** What one stage computes from its input, in graph `g`: its exit's logits and what it hands the next stage. */
export type StageLowering = (g: GraphBuilder, k: number, input: string) => { scores: string; handed: string };

/**
 * The whole exit policy in `g`: stage k runs on the samples still in, its exit's rule (`rule`, an
 * `exitRuleLowerings` name) against `thresholds[k]` (a float64 [exits - 1] graph value) decides who
 * leaves, and the last stage takes the rest. Returns `scores` ([n, classes], each sample's logits from the
 * exit it left at) and `exits` ([n] float32, that exit's index), both in input order. The stages after one
 * that every sample leaves do not run (an `If` on the rows left: some of ONNX Runtime's blocked-layout
 * reshapes refuse an empty batch).
 */
export function lowerExitPolicy(
  g: GraphBuilder,
  opts: { images: string; thresholds: string; count: number; classes: number; rule: string; prefix: string },
  stage: StageLowering,
): { scores: string; exits: string } {
  const { images, thresholds, count, classes, rule, prefix } = opts;
  const lower = exitRuleLowerings.get(rule);
  const leavesBelow = exitRules.get(rule).exitsWhen === 'below';
  const n = rowCount(g, images, `${prefix}/n`);
  // One symbolic row count per If (the samples reaching stage k), shared by its three outputs.
  const branchOutputs = (names: string[], k: number) => {
    const m = `${prefix}_rows_from_${k}`;
    return [valueInfo(names[0], DataType.FLOAT, [m, classes]), valueInfo(names[1], DataType.INT64, [m]), valueInfo(names[2], DataType.FLOAT, [m])];
  };
  const exitsOf = (h: GraphBuilder, rows: string, k: number) => exitIndexOf(h, rows, k, `${prefix}/exit${k}`);

  /** Stages k on, in `h`, on input `x` whose rows are `rows` (int64): [scores, rows, exits] of the samples in leaving order. */
  const from = (h: GraphBuilder, k: number, x: string, rows: string): string[] => {
    const s = stage(h, k, x);
    if (k === count - 1) {
      // After stage 0, `rows` comes from the enclosing graph, which a branch may not return as it is.
      const own = k > 0 ? h.node('Identity', [rows], `${prefix}/last_rows`) : rows;
      return [s.scores, own, exitsOf(h, own, k)];
    }
    const p = `${prefix}/exit${k}`;
    const probs = h.node('Softmax', [h.node('Cast', [s.scores], `${p}/logits_f64`, { to: attr.int(DataType.DOUBLE) })], `${p}/probs`, { axis: attr.int(1) });
    const threshold = h.node('Gather', [thresholds, h.int64Scalar(`${p}/at`, k)], `${p}/threshold`, { axis: attr.int(0) });
    const leave = h.node(leavesBelow ? 'Less' : 'GreaterOrEqual', [lower(h, probs, p), threshold], `${p}/leaves`);
    const stay = h.node('Not', [leave], `${p}/stays`);
    const keep = (t: string, mask: string, name: string) => h.node('Compress', [t, mask], `${p}/${name}`, { axis: attr.int(0) });
    const leftRows = keep(rows, leave, 'left_rows');
    const left = [keep(s.scores, leave, 'left_scores'), leftRows, exitsOf(h, leftRows, k)];
    const nextX = keep(s.handed, stay, 'next_input');
    const nextRows = keep(rows, stay, 'next_rows');
    // The later stages run only where a sample stays; else they add nothing.
    const rest = new GraphBuilder(`${p}_rest`, h.names);
    const restOut = from(rest, k + 1, nextX, nextRows);
    branchOutputs(restOut, k + 1).forEach((v) => rest.output(v));
    const none = new GraphBuilder(`${p}_none_stay`, h.names);
    const empty = [
      none.node('Expand', [none.floatConst(`${p}/no_scores`, [1, 1], [0]), none.int64Const(`${p}/no_scores_shape`, [0, classes])], `${p}/no_scores`),
      none.node('Identity', [nextRows], `${p}/no_rows`),
      none.node('Expand', [none.floatConst(`${p}/no_exit`, [1], [0]), none.int64Const(`${p}/no_exits_shape`, [0])], `${p}/no_exits`),
    ];
    branchOutputs(empty, k + 1).forEach((v) => none.output(v));
    const anyStay = h.node('Greater', [rowCount(h, nextRows, `${p}/staying`), h.int64Const(`${p}/zero`, [0])], `${p}/any_stay`);
    const later = h.nodeOutputs('If', [anyStay], ['scores', 'rows', 'exits'].map((o) => `${p}/later_${o}`), {
      then_branch: attr.graph(rest.build(`stages ${k + 1} on`)),
      else_branch: attr.graph(none.build('every sample left')),
    });
    return left.map((t, j) => h.node('Concat', [t, later[j]], `${p}/with_later_${j}`, { axis: attr.int(0) }));
  };

  const rows = g.node('Range', [g.int64Scalar(`${prefix}/first_row`, 0), g.node('Reshape', [n, g.int64Const(`${prefix}/n_scalar`, [])], `${prefix}/count`), g.int64Scalar(`${prefix}/row_step`, 1)], `${prefix}/rows`);
  const [scores, order, exits] = from(g, 0, images, rows);
  const at = g.node('Unsqueeze', [order, g.int64Const(`${prefix}/row_axis`, [1])], `${prefix}/scatter_rows`);
  const zeros = (dims: string, name: string) => g.node('Expand', [g.floatConst(`${prefix}/${name}_zero`, [1], [0]), dims], `${prefix}/${name}_zeros`);
  const scoresShape = g.node('Concat', [n, g.int64Const(`${prefix}/classes`, [classes])], `${prefix}/scores_shape`, { axis: attr.int(0) });
  return {
    scores: g.node('ScatterND', [zeros(scoresShape, 'scores'), at, scores], `${prefix}/scores`),
    exits: g.node('ScatterND', [zeros(n, 'exits'), at, exits], `${prefix}/exits`),
  };
}
