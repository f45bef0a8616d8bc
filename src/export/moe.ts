/**
 * A mixture of experts with no capacity limit, lowered into one ONNX graph: the router, each sample's top-k
 * experts, the rows sorted by expert, one `Split` into per-expert parts, each expert's layers on its part
 * (an expert with no row runs on an empty part), the parts joined and combined with the gates. No padding,
 * no expert on a row it was not given, and no JavaScript between the router and the experts: the whole
 * mixture is one session run, in node and in the browser.
 *
 * The assignment without a limit is the shared rule's (`route/experts.ts`: each sample's k best scores,
 * ties to the lower expert index, which is ONNX `TopK`'s order too); with a capacity factor the rule needs
 * the runtime (`moe` segments, `assignExperts`), so such a mixture is not lowered here.
 */
import { DynnError } from '../util/errors.js';
import type { Layer } from '../layers/layer.js';
import { Dense } from '../layers/conv.js';
import type { MoeBlock } from '../route/moe.js';
import { MoeRouter } from '../route/router.js';
import { attr, rowCount } from './graph.js';
import { lowerChain, lowerings, scaledLogits, sliced, type BranchContext, type Lowered } from './lower.js';
import type { ChannelSel } from '../layers/types.js';
import { gateMacsOf } from '../route/unit.js';

/** Whether a mixture lowers into its graph (no capacity limit at evaluation), else it is a runtime-dispatched segment. */
export const dispatchesInGraph = (mb: MoeBlock): boolean => mb.args.evalCapacityFactor === undefined;

/**
 * The experts' scores of mixture `mb`'s router, [n, E], lowered on `x`: a `MoeRouter` computes them alone
 * (its dense kernel cut to the first E columns, a constant slice ONNX Runtime folds at load; what its cost
 * counts, as TF.js's `MoeRouter.scores`), another gate computes all its logits and the first E are kept.
 */
export function lowerRouterScores(mb: MoeBlock, x: string, sel: ChannelSel, ctx: BranchContext): string {
  const E = mb.experts;
  const base = `${ctx.prefix}/${mb.name}`;
  const kids = mb.gate.children();
  const last = kids[kids.length - 1];
  const routerCtx = { ...ctx, prefix: `${ctx.prefix}/${mb.name}.router` };
  if (mb.gate instanceof MoeRouter && last instanceof Dense) {
    const h = lowerChain(kids.slice(0, -1), x, sel, routerCtx);
    const hasBias = last.weights().some((w) => w.name === `${last.name}.bias`);
    const inputs = [h.y, sliced(routerCtx, `${last.name}.kernel`, [h.sel.count, E]), ...(hasBias ? [sliced(routerCtx, `${last.name}.bias`, [E])] : [])];
    return ctx.g.node('Gemm', inputs, `${base}/router`);
  }
  const z = lowerChain(kids, x, sel, routerCtx).y;
  const i64 = (name: string, v: number[]) => ctx.g.int64Const(`${base}/${name}`, v);
  return ctx.g.node('Slice', [scaledLogits(ctx.g, mb.gate, z, `${base}/router`), i64('score_starts', [0]), i64('score_ends', [E]), i64('score_axes', [1])], `${base}/scores`);
}

function lowerMixture(layer: Layer, x: string, sel: ChannelSel, ctx: BranchContext): Lowered {
  const mb = layer as MoeBlock;
  if (!dispatchesInGraph(mb)) throw new DynnError(`${mb.name}: a mixture with a capacity limit at evaluation dispatches in the runtime (a moe segment), not inside a graph`);
  if (!ctx.mixtures) throw new DynnError(`${mb.name}: a mixture of experts decides per sample; it exports by segments (a folder), not as one file`);
  const g = ctx.g;
  const E = mb.experts;
  const k = mb.topK;
  const base = `${ctx.prefix}/${mb.name}`;
  const i64 = (name: string, v: number[]) => g.int64Const(`${base}/${name}`, v);
  const scores = lowerRouterScores(mb, x, sel, ctx);
  const [best, chosen] = g.nodeOutputs('TopK', [scores, i64('k', [k])], [`${base}/best`, `${base}/chosen`], { axis: attr.int(1) });
  // Gates as TF.js's: for k = 1 the chosen expert's softmax over all (Switch), else a softmax over the k kept.
  const gates = k === 1 ? g.node('GatherElements', [g.node('Softmax', [scores], `${base}/probs`, { axis: attr.int(1) }), chosen], `${base}/gates`, { axis: attr.int(1) }) : g.node('Softmax', [best], `${base}/gates`, { axis: attr.int(1) });
  // Entries slot-major, (slot s, sample i) at s * n + i, as `Assignment` lays them out.
  const flat = (t: string, name: string) => g.node('Reshape', [k === 1 ? t : g.node('Transpose', [t], `${base}/${name}_t`, { perm: attr.ints([1, 0]) }), i64(`${name}_shape`, [-1])], `${base}/${name}`);
  const experts = flat(chosen, 'experts');
  const weights = flat(gates, 'weights');
  // Entries sorted by expert (ties in any order: the inverse permutation undoes it), each expert's rows
  // contiguous; entry j reads sample j mod n.
  const n = rowCount(g, x, `${base}/n`);
  const entries = k === 1 ? n : g.node('Mul', [n, i64('k_v', [k])], `${base}/entries`);
  const sortOn = (t: string, name: string) => g.nodeOutputs('TopK', [t, entries], [`${base}/${name}_values`, `${base}/${name}`], { axis: attr.int(0), largest: attr.int(0), sorted: attr.int(1) })[1];
  const order = sortOn(experts, 'order');
  const counts = g.node('ReduceSum', [g.node('OneHot', [experts, g.int64Scalar(`${base}/depth`, E), i64('onehot_values', [0, 1])], `${base}/onehot`, { axis: attr.int(-1) }), i64('count_axes', [0])], `${base}/counts`, { keepdims: attr.int(0) });
  const sources = k === 1 ? order : g.node('Mod', [order, n], `${base}/sorted_source`);
  const rows = g.node('Gather', [x, sources], `${base}/rows`, { axis: attr.int(0) });
  const parts = g.nodeOutputs('Split', [rows, counts], Array.from({ length: E }, (_, e) => `${base}/part${e}`), { axis: attr.int(0) });
  let out = sel;
  const ys = mb.expertChains.map((chain, e) => {
    const r = lowerChain(chain, parts[e], sel, { ...ctx, prefix: `${ctx.prefix}/${mb.name}.e${e}` });
    out = r.sel;
    return r.y;
  });
  const joined = g.node('Concat', ys, `${base}/joined`, { axis: attr.int(0) });
  const outRank = mb.outShape.length;
  const w = g.node('Reshape', [g.node('Gather', [weights, order], `${base}/sorted_weights`, { axis: attr.int(0) }), i64('weight_shape', [-1, ...new Array<number>(outRank).fill(1)])], `${base}/row_weights`);
  const weighted = g.node('Mul', [joined, w], `${base}/weighted`);
  // Back in entry order (sorting the order gives its inverse), then each sample's k entries summed.
  const back = g.node('Gather', [weighted, sortOn(order, 'inverse')], `${base}/unsorted`, { axis: attr.int(0) });
  const outDims = mb.outShape.length === 3 ? [mb.outShape[2], mb.outShape[0], mb.outShape[1]] : [...mb.outShape];
  let y = k === 1 ? back : g.node('ReduceSum', [g.node('Reshape', [back, i64('slots_shape', [k, -1, ...outDims])], `${base}/slots`), i64('slot_axes', [0])], `${base}/combined`, { keepdims: attr.int(0) });
  if (mb.args.residual) y = g.node('Add', [x, y], `${base}/residual`);
  // Each sample's experts, [n, k], for the runtime's counts and FLOPs, with what the manifest says of it.
  const info = { name: mb.name, experts: E, topK: k, residual: mb.args.residual === true, gateMacs: gateMacsOf(mb.gate, sel), expertMacs: mb.expertMacs(sel, ctx.plan) };
  ctx.mixtures.push({ info, routes: g.node('Cast', [chosen], `${base}/routes`, { to: attr.int(1) }) });
  return { y, sel: out };
}

lowerings.register('MoeBlock', lowerMixture);
