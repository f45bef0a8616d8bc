import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { NamedArray, Network } from '../models/network.js';
import { planToData, staticPlan } from '../models/network.js';
import { exitCosts, exitSegments, type ExitHead } from '../models/exits.js';
import { fullSel } from '../layers/select.js';
import type { ChannelSel, Plan } from '../layers/types.js';
import { checkGatingMode, checkUtilization, type GatingMode } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { VERSION } from '../version.js';
import { attr, floatValueInfo, GraphBuilder, NameScope, valueInfo } from './graph.js';
import { lowerChain, lowerResize, type BranchContext } from './lower.js';
import { exitIndexOf, exitRuleLowerings, lowerExitPolicy } from './exits.js';
import { AtResolution } from '../models/at-resolution.js';
import { exitRules } from '../scaling/rules.js';
import { checkOperatingPoints } from '../control/actions.js';
import { weightsDigestChunks } from './digest.js';
import { metadataProps, ONNX_FORMAT, levelIndexFor, ONNX_IO, TEMPORAL_FEATURES, type OnnxLevel, type OnnxMetadata } from './metadata.js';
import { lowerTemporalFeatures } from './temporal.js';
import { DataType, encodeModel, IR_VERSION, OPSET_VERSION, type GraphMsg, type ValueInfoMsg } from './onnx-proto.js';

/** Options of `exportOnnx`. */
export interface ExportOptions {
  /**
   * Utilizations whose levels to export, each mapped to a level by dynn's rounding rule (`levelOf`); two
   * that reach the same level are an error. Default: every level (`model.levelUtilizations()`).
   */
  levels?: number[];
  /** Class names stored in the metadata (default "0", "1", ...). */
  classNames?: string[];
  /**
   * The gating the network was trained with (default 'nested'). Only nested gating exports: its levels are
   * prefixes of the full width, which constant slices express; independent gating has no fixed sub-network.
   */
  gating?: GatingMode;
  /**
   * A per-input controller to export with the network, e.g. a bandit policy's network (`policy.net`) and its
   * actions: the graph gets a second output `controller_scores` computed from the images alone, so the whole
   * adaptive model (decide, then run each sample's level) runs in ONNX Runtime. With `temporal`, it is a
   * temporal controller instead (an MLP on `TEMPORAL_FEATURES`): `controller_scores` plan the next frame from
   * this frame's scores and a third input `action`, the index of the action each sample ran at. With
   * `temporal.resolutions` (each action's input resolution, `dynn controller train --temporal --resolutions`)
   * a fourth input `resolution` picks the network's branch at that input resolution.
   */
  controller?: { network: Network; actions: number[]; temporal?: { start: number; resolutions?: number[] } };
  /**
   * Early-exit models: the fitted exit policy (from `dynn fit-exits --save`), stored as the runtime's default.
   * Where its rule lowers (`exitRuleLowerings`), the graph also holds it: stage -2 runs every stage in one
   * session run, with an `exit_thresholds` input (float64, fed at every stage) and an `exits` output.
   */
  exitPolicy?: { rule: string; thresholds: number[] };
}

/** An exported model: the ONNX bytes and the metadata they carry. */
export interface OnnxExport {
  bytes: Uint8Array;
  metadata: OnnxMetadata;
}

/** The smallest u in (0, 1] whose level is at least `level` (bisection on the model's own rounding rule). */
function minUtilization(model: Network, level: number, reaching: number): number {
  let lo = 0;
  let hi = reaching;
  for (let i = 0; i < 80 && hi - lo > 1e-15; i++) {
    const mid = (lo + hi) / 2;
    if (mid > 0 && model.levelOf(mid) >= level) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** Plan data without u, to compare the plans two utilizations make. */
function planKey(model: Network, u: number): string {
  const { u: _, ...rest } = planToData(model.plan(u));
  return JSON.stringify(rest);
}

/** The exported levels, cheapest first, with thresholds and costs; checks that one plan serves each level. */
function resolveLevels(model: Network, levels: number[] | undefined): OnnxLevel[] {
  const us = levels ?? model.levelUtilizations();
  if (us.length === 0) throw new DynnError('export needs at least one level');
  const byLevel = new Map<number, number>();
  for (const u of us) {
    checkUtilization(u);
    const level = model.levelOf(u);
    const other = byLevel.get(level);
    if (other !== undefined) throw new DynnError(`levels ${other} and ${u} both run level ${level}; give one of them`);
    byLevel.set(level, u);
  }
  const full = model.cost(1).flops;
  return [...byLevel.entries()]
    .sort(([a], [b]) => a - b)
    .map(([level, u]) => {
      const minU = minUtilization(model, level, u);
      const top = level >= model.levelOf(1);
      const maxU = top ? 1 : minUtilization(model, level + 1, 1) * (1 - 1e-12);
      const key = planKey(model, u);
      for (const v of [minU, (minU + maxU) / 2, maxU]) {
        if (planKey(model, v) !== key) {
          throw new DynnError(`cannot export level ${level}: its plan changes between u = ${minU} and ${maxU} (blocks with different group counts)`);
        }
      }
      const cost = model.cost(u);
      return { u, level, minU, flops: cost.flops, macs: cost.macs, params: cost.params, flopsRatio: full > 0 ? cost.flops / full : 1 };
    });
}

/** HWIO (TF.js) to OIHW (ONNX) for a [kh, kw, ci, co] kernel. */
function hwioToOihw(data: Float32Array, [kh, kw, ci, co]: number[]): Float32Array {
  const out = new Float32Array(data.length);
  for (let h = 0; h < kh; h++)
    for (let w = 0; w < kw; w++)
      for (let i = 0; i < ci; i++)
        for (let o = 0; o < co; o++) out[((o * ci + i) * kh + h) * kw + w] = data[((h * kw + w) * ci + i) * co + o];
  return out;
}

/**
 * Stores weights as top-level initializers named by their dynn names (convolution kernels in ONNX's OIHW
 * layout, the rest as TF.js keeps them) and records their ONNX dims in `dims`.
 */
export function addWeights(g: GraphBuilder, weights: NamedArray[], dims: Map<string, number[]>): void {
  for (const wt of weights) {
    const oihw = wt.shape.length === 4;
    const shape = oihw ? [wt.shape[3], wt.shape[2], wt.shape[0], wt.shape[1]] : wt.shape;
    g.floatInit(wt.name, shape, oihw ? hwioToOihw(wt.data, wt.shape) : wt.data, oihw ? 'OIHW (TF.js HWIO transposed)' : undefined);
    dims.set(wt.name, shape);
  }
}

/** The weights digest of a graph (`digest.ts`), as stored in the metadata or the manifest. */
export function weightsSha256(graph: GraphMsg): string {
  const hash = createHash('sha256');
  for (const chunk of weightsDigestChunks(graph)) hash.update(chunk);
  return hash.digest('hex');
}

/** When a stage hands its input on instead of its features (`stageStarts`). */
const RECOMPUTE = { growth: 4, share: 0.05 };

/**
 * The first segment each stage of an early-exit export computes (stage k ends at segment k). Handing a large
 * stage output to the next stage costs a fresh buffer in ONNX Runtime and another in onnxruntime-node: for
 * vgg-exits' stem, 32x the image's values for 1.2% of the FLOPs, fetching its features took 7-45 times the
 * stage itself here (bench/onnx-exits.ts). So where a segment grows its input at least `RECOMPUTE.growth`x
 * and the segments recomputed cost at most `RECOMPUTE.share` of the backbone's FLOPs (at u = 1), its stage
 * hands its own input on and the next stage recomputes the segment.
 */
export function stageStarts(model: Network): number[] {
  const { segments } = exitSegments(model);
  const costs = exitCosts(model, model.plan(1));
  const backbone = costs.reduce((a, c) => a + c.segmentFlops, 0);
  const values = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
  const starts = [0];
  for (let k = 1; k < segments.length; k++) {
    const seg = segments[k - 1];
    const from = starts[k - 1];
    const redone = costs.slice(from, k).reduce((a, c) => a + c.segmentFlops, 0);
    const grows = seg.length > 0 && values(seg[seg.length - 1].outShape) >= RECOMPUTE.growth * values(seg[0].inShape);
    starts.push(grows && redone <= RECOMPUTE.share * backbone ? from : k);
  }
  return starts;
}

/** FLOPs of leaving at each exit at a plan, the segments that later stages recompute (`stageStarts`) included. */
export function stagedExitFlops(model: Network, plan: Plan, starts: number[]): number[] {
  const costs = exitCosts(model, plan);
  let redone = 0;
  return costs.map((c, k) => {
    for (let i = starts[k]; i < k; i++) redone += costs[i].segmentFlops;
    return c.cumulativeFlops + redone;
  });
}

/** The channels entering stage `k` (the segment before exit k) at a plan. */
function selBeforeStage(segments: ReturnType<typeof exitSegments>['segments'], k: number, first: ChannelSel, plan: Plan): ChannelSel {
  let sel = first;
  for (const seg of segments.slice(0, k)) for (const l of seg) sel = l.outSel(sel, plan);
  return sel;
}

/**
 * Nested `If`s in `host` that pick one of `conds.length` branches: the last i whose `conds[i]` holds, else
 * branch 0 (`conds[0]` is unused). Results are named `outs` exactly when `exact`, else after them; returns the names.
 */
export function selectBranch(
  host: GraphBuilder,
  conds: string[],
  branch: (i: number) => GraphMsg,
  outs: string[],
  exact: boolean,
  info: (name: string, j: number) => ValueInfoMsg,
  tag: string,
): string[] {
  const n = conds.length;
  let otherwise = branch(0);
  for (let i = 1; i < n - 1; i++) {
    const g = new GraphBuilder(`${tag}_up_to_${i}`, host.names);
    const ys = g.nodeOutputs('If', [conds[i]], outs.map((o) => `${tag}_${i}/${o}`), { then_branch: attr.graph(branch(i)), else_branch: attr.graph(otherwise) });
    ys.forEach((y, j) => g.output(info(y, j)));
    otherwise = g.build();
  }
  const attrs = { then_branch: attr.graph(branch(n - 1)), else_branch: attr.graph(otherwise) };
  return exact ? host.nodeOutputsTo('If', [conds[n - 1]], outs, attrs) : host.nodeOutputs('If', [conds[n - 1]], outs, attrs);
}

/**
 * Writes a network as one ONNX model (IR 8, opset 17) with inputs `images` (float32 NCHW [batch, C, H, W])
 * and `u` (float32 scalar), and output `scores` ([batch, classes], the network's logits).
 *
 * The graph is an `If` chain over the exported levels; every weight is stored once, at full size, as a
 * top-level initializer named by its dynn weight name (convolution kernels in ONNX's OIHW layout, dense
 * kernels [in, out] as TF.js keeps them), and each level's branch slices the weights it reads with
 * constant bounds, so ONNX Runtime folds the slices at load and pre-packs each branch's convolutions.
 * BatchNorm uses the level's own statistics row. Depth-gated blocks a level skips are absent from its branch.
 *
 * `u` picks the most expensive exported level whose `minU` is at most u (compared in float32). Outside
 * (0, 1] it is clamped: u above 1 runs the top level; u at or below 0, NaN, or below the cheapest level's
 * threshold runs the cheapest level. Only nested gating exports.
 *
 * An early-exit model exports per stage, so that a sample which leaves is not computed further: a third
 * input `stage` (float32 scalar, 0-based) picks the backbone segment before exit `stage`, `images` is that
 * stage's input (the images at stage 0, the previous stage's `features` after), and the outputs are the
 * exit's `scores` and the segment's `features` (for the last stage, the scores again), or the stage's own
 * input where the next stage recomputes a cheap segment whose output is large (`stageStarts`; `exitFlops`
 * counts the recomputation). The runtime runs the
 * stages in turn and passes only the samples still running on. Stage -1 runs the whole network to its last
 * exit in one pass, without the exits. With `options.exitPolicy` whose rule lowers (`exitRuleLowerings`),
 * stage -2 runs the whole policy in one run (`lowerExitPolicy`): an input `exit_thresholds` (float64, one per
 * intermediate exit, fed at every stage) and an output `exits` (the exit each sample's scores come from).
 *
 * With `options.controller`, a second output `controller_scores` holds the controller's action logits.
 *
 * The metadata stores `weightsSha256`, the SHA-256 of every initializer (see `digest.ts`), which the runtime
 * checks at load together with the graph's inputs and outputs.
 */
export function exportOnnx(model: Network, options: ExportOptions = {}): OnnxExport {
  if (model.gated) {
    throw new DynnError(`${model.config.model} with ${String(model.config.args.dynamic)} gates decides per sample inside the network; it exports by segments to a folder (exportSegments, \`dynn export RUN --onnx DIR\`), not as one file`);
  }
  const gating = options.gating ?? 'nested';
  checkGatingMode(gating);
  if (gating !== 'nested') throw new DynnError(`only nested gating exports; this network was trained with ${gating} gating`);
  const levels = resolveLevels(model, options.levels);
  const classNames = options.classNames ?? Array.from({ length: model.numClasses }, (_, i) => String(i));
  if (classNames.length !== model.numClasses) {
    throw new DynnError(`${classNames.length} class names given for a model with ${model.numClasses} classes`);
  }
  if (model.inputShape.length !== 3) throw new DynnError(`export needs an image model ([H, W, C] input), got [${model.inputShape}]`);
  const [h, w, c] = model.inputShape;
  const { segments, heads } = exitSegments(model);
  const staged = heads.length > 0;
  const starts = staged ? stageStarts(model) : [];
  // A stored policy whose rule lowers goes into the graph as stage -2 (`lowerExitPolicy`).
  const inGraph = staged && options.exitPolicy && exitRules.has(options.exitPolicy.rule) && exitRuleLowerings.has(options.exitPolicy.rule) ? options.exitPolicy.rule : undefined;
  const ctrl = options.controller;
  const temporal = ctrl?.temporal;
  const featureSize = model.numClasses + 3 + (ctrl?.actions.length ?? 0);
  if (temporal && ctrl.network.inputShape.join() !== String(featureSize)) {
    throw new DynnError(`the temporal controller reads [${ctrl.network.inputShape}] features; this network's ${model.numClasses} classes and ${ctrl.actions.length} actions give [${featureSize}]`);
  }
  if (temporal && (!Number.isInteger(temporal.start) || temporal.start < 0 || temporal.start >= ctrl.actions.length)) {
    throw new DynnError(`the temporal controller's start action ${temporal.start} is not an index of its ${ctrl.actions.length} actions`);
  }
  // The controller was trained on each action run at the network's level for its u; a graph running an action at
  // another level (--levels leaving that level out) would feed it frames it never learned from. Every level (the
  // default) keeps them all.
  const drift = temporal ? ctrl.actions.find((u) => levels[levelIndexFor(levels, u)].level !== model.levelOf(u)) : undefined;
  if (drift !== undefined) {
    throw new DynnError(`the temporal controller's action u = ${drift} runs level ${model.levelOf(drift)}, which the exported levels (u = ${levels.map((l) => l.u).join(', ')}) leave out; export every level (no --levels) or include u = ${drift}`);
  }
  const resolutions = temporal?.resolutions;
  if (ctrl && String(ctrl.network.config.args.resolutions ?? '') !== String(resolutions ?? '')) {
    throw new DynnError(`the controller was trained over resolutions [${String(ctrl.network.config.args.resolutions ?? 'none')}], the export was given [${String(resolutions ?? 'none')}]`);
  }
  if (resolutions) checkOperatingPoints(ctrl!.actions, resolutions);
  // The network's branch per input resolution: the controller's, and the input's own (a plain run).
  const branchRs = resolutions ? [...new Set([...resolutions, h])].sort((a, b) => a - b) : [h];
  if (temporal && staged) throw new DynnError('a temporal controller is not exported with an early-exit model: it reads the whole network\'s scores');
  if (ctrl && !temporal && ctrl.network.inputShape.join() !== model.inputShape.join()) {
    throw new DynnError(`the controller reads [${ctrl.network.inputShape}] inputs, the network [${model.inputShape}]`);
  }
  if (ctrl && ctrl.network.numClasses !== ctrl.actions.length) {
    throw new DynnError(`the controller has ${ctrl.network.numClasses} outputs for ${ctrl.actions.length} actions`);
  }
  const clash = ctrl && ctrl.network.getWeights().find((cw) => model.weights().some((w) => w.name === cw.name));
  if (clash) throw new DynnError(`the controller's weight ${clash.name} has the name of one of the network's; name the controller's layers apart`);
  if (options.exitPolicy && !staged) throw new DynnError('an exit policy needs a model with early exits');
  if (options.exitPolicy && options.exitPolicy.thresholds.length !== heads.length) {
    throw new DynnError(`the exit policy has ${options.exitPolicy.thresholds.length} thresholds for ${heads.length} intermediate exits`);
  }

  // Built once the checks above have passed: they hold the network built at each lower resolution (freed
  // when the graph is built or lowering fails).
  const atRes = new Map<number, AtResolution>();
  try {
    for (const r of branchRs) if (r !== h) atRes.set(r, new AtResolution(model, r));
  } catch (err) {
    for (const at of atRes.values()) at.dispose();
    throw err;
  }
  let controller: OnnxMetadata['controller'];
  let graph: GraphMsg;
  try {
    const names = new NameScope();
    const main = new GraphBuilder('dynn', names);
    if (staged && segments.some((seg) => seg[0].inShape.length !== 3)) {
      throw new DynnError('an early-exit model exports per stage only when every exit follows an image-shaped layer ([H, W, C])');
    }
    main.input(
      staged
        ? floatValueInfo(ONNX_IO.images, ['batch', 'in_channels', 'in_height', 'in_width'], 'the stage input: images (NCHW float32) at stage 0, the previous stage\'s features after')
        : floatValueInfo(ONNX_IO.images, ['batch', c, h, w], 'images, NCHW float32'),
    );
    main.input(floatValueInfo(ONNX_IO.u, [], 'utilization in (0, 1]; clamped to the exported levels'));
    if (staged) main.input(floatValueInfo(ONNX_IO.stage, [], `the stage to run, 0 to ${heads.length} (the exit it ends at), -1 for the whole network${inGraph ? ', or -2 for every stage with the exit rule in the graph' : ''}`));
    if (inGraph) main.input(valueInfo(ONNX_IO.exitThresholds, DataType.DOUBLE, [heads.length], `float64: the ${inGraph} threshold of each intermediate exit at stage -2 (fed at every stage)`));
    if (temporal) main.input(floatValueInfo(ONNX_IO.action, ['batch'], 'the index of the controller action each sample ran at (float32)'));
    if (resolutions) main.input(floatValueInfo(ONNX_IO.resolution, [], `the input resolution (height) the batch runs at, one of ${branchRs.join(', ')}; images stay [${c}, ${h}, ${w}]`));
    const dims = new Map<string, number[]>();
    addWeights(main, [...model.getWeights(), ...(ctrl?.network.getWeights() ?? [])], dims);

    const scoresInfo = (name: string) => floatValueInfo(name, ['batch', model.numClasses]);
    const outInfo = (name: string, j: number) => (j === 0 ? scoresInfo(name) : j === 1 ? floatValueInfo(name, ['batch', 'out_channels', 'out_height', 'out_width']) : floatValueInfo(name, ['batch']));
    // Stage k of an early-exit model from its input: the exit's logits, and what the next stage reads (this
    // stage's input where the next recomputes it).
    const lowerStage = (ctx: BranchContext, k: number, input: string): { scores: string; handed: string } => {
      const from = starts[k];
      const body = lowerChain(segments.slice(from, k + 1).flat(), input, selBeforeStage(segments, from, fullSel(c), ctx.plan), ctx);
      if (k === heads.length) return { scores: body.y, handed: body.y };
      const head: ExitHead = heads[k];
      const scores = lowerChain(head.children(), body.y, body.sel, { ...ctx, prefix: `${ctx.prefix}/${head.name}` }).y;
      return { scores, handed: starts[k + 1] <= k ? input : body.y };
    };
    // What one (stage, level) computes: [scores] for a plain model, [scores, features] for a stage (and
    // `exits` with the rule in the graph); stage -1 of an early-exit model is the whole network without its
    // exits, in one branch (what `run` uses), stage -2 every stage with the exit rule (`runExits`).
    const lowerLevel = (g: GraphBuilder, stage: number, lv: OnnxLevel, r = h): string[] => {
      const plan = model.plan(lv.u);
      const prefix = !staged ? `${r === h ? '' : `R${r}`}L${lv.level}` : stage === -2 ? `X${lv.level}` : stage < 0 ? `W${lv.level}` : `S${stage}L${lv.level}`;
      const ctx = { g, plan, prefix, dims };
      const at = atRes.get(r);
      if (at) {
        // The network at a lower input resolution (`AtResolution`): its layers as built at that size.
        const { head, back, tail } = at.parts();
        const low = lowerChain(head, lowerResize(g, ONNX_IO.images, at.size[0], at.size[1], `${prefix}/resize`), fullSel(c), ctx);
        return [back ? lowerChain(tail, lowerResize(g, low.y, back[0], back[1], `${prefix}/resize_back`), low.sel, ctx).y : low.y];
      }
      // The last stage (and the whole network) has no next stage: its features are the scores as
      // [batch, classes, 1, 1], the rank of the others.
      const asFeatures = (y: string) => g.node('Unsqueeze', [y, g.int64Const(`${prefix}/axes`, [2, 3])], `${prefix}/features`);
      // Every sample's scores here come from one exit: `exit` ([batch] float32) where the graph has the rule.
      const withExits = (outs: string[], exit: number) => (inGraph ? [...outs, exitIndexOf(g, outs[0], exit, `${prefix}/exit`)] : outs);
      if (stage === -2) {
        const opts = { images: ONNX_IO.images, thresholds: ONNX_IO.exitThresholds, count: segments.length, classes: model.numClasses, rule: inGraph!, prefix };
        const { scores, exits } = lowerExitPolicy(g, opts, (sg, k, input) => lowerStage({ ...ctx, g: sg, prefix: `${prefix}/S${k}` }, k, input));
        return [scores, asFeatures(scores), exits];
      }
      if (!staged || stage < 0) {
        const y = lowerChain(model.layers, ONNX_IO.images, fullSel(c), ctx).y;
        return staged ? withExits([y, asFeatures(y)], heads.length) : [y];
      }
      const s = lowerStage(ctx, stage, ONNX_IO.images);
      if (stage === heads.length) return withExits([s.scores, asFeatures(s.scores)], stage);
      // A graph output cannot be the graph's own input: hand it on through an Identity.
      return withExits([s.scores, s.handed === ONNX_IO.images ? g.node('Identity', [ONNX_IO.images], `${prefix}/handed_on`) : s.handed], stage);
    };
    const outs = staged ? [ONNX_IO.scores, ONNX_IO.features, ...(inGraph ? [ONNX_IO.exits] : [])] : [ONNX_IO.scores];
    const levelConds = levels.map((lv, i) => (i === 0 ? '' : main.node('GreaterOrEqual', [ONNX_IO.u, main.floatConst(`min_u_${lv.level}`, [], [lv.minU])], `at_least_${lv.level}`)));
    // The level chain of one stage into `host`; its results are named `results` (exactly when `exact`).
    const levelChain = (host: GraphBuilder, stage: number, results: string[], exact: boolean, r = h): string[] => {
      const branch = (i: number): GraphMsg => {
        const g = new GraphBuilder(`${staged ? `stage_${stage}_` : ''}${r === h ? '' : `resolution_${r}_`}level_${levels[i].level}`, names);
        lowerLevel(g, stage, levels[i], r).forEach((y, j) => g.output(outInfo(y, j)));
        return g.build(`u in [${levels[i].minU}, ...): level ${levels[i].level}`);
      };
      if (levels.length > 1) return selectBranch(host, levelConds, branch, results, exact, outInfo, staged ? `stage_${stage}_levels` : r === h ? 'levels' : `resolution_${r}_levels`);
      return lowerLevel(host, stage, levels[0], r).map((y, j) => (exact ? host.nodeTo('Identity', [y], results[j]) : host.node('Identity', [y], results[j])));
    };

    if (!staged && branchRs.length > 1) {
      // Branch i runs at branchRs[i], taken when resolution is at least halfway from the one below.
      const resConds = branchRs.map((r, i) => (i === 0 ? '' : main.node('GreaterOrEqual', [ONNX_IO.resolution, main.floatConst(`resolution_${r}_from`, [], [(branchRs[i - 1] + r) / 2])], `at_resolution_${r}`)));
      const resBranch = (i: number): GraphMsg => {
        const r = branchRs[i];
        const g = new GraphBuilder(`resolution_${r}`, names);
        levelChain(g, 0, outs.map((o) => `resolution_${r}/${o}`), false, r).forEach((y, j) => g.output(outInfo(y, j)));
        return g.build(`input resolution ${r}`);
      };
      selectBranch(main, resConds, resBranch, outs, true, outInfo, 'resolutions');
    } else if (!staged) levelChain(main, 0, outs, true);
    else {
      // Branch i is stage k = i + low (low: -1, or -2 with the rule in the graph), taken when stage >= k - 0.5;
      // branch 0, the lowest stage (-1, the whole network, or -2, every stage with the rule), otherwise.
      const low = inGraph ? -2 : -1;
      const stageConds = Array.from({ length: segments.length - low }, (_, i) => (i === 0 ? '' : main.node('GreaterOrEqual', [ONNX_IO.stage, main.floatConst(`stage_${i + low}`, [], [i + low - 0.5])], `from_stage_${i + low}`)));
      const stageBranch = (i: number): GraphMsg => {
        const k = i + low;
        const name = k === -2 ? 'exit_policy' : k === -1 ? 'whole_network' : `stage_${k}`;
        const g = new GraphBuilder(name, names);
        levelChain(g, k, outs.map((o) => `${name}/${o}`), false).forEach((y, j) => g.output(outInfo(y, j)));
        return g.build(k === -2 ? `stage -2: every stage, the ${inGraph} rule deciding who leaves` : k === -1 ? 'stage -1: the whole network to its last exit' : `stage ${k}: the segment before exit ${k + 1}`);
      };
      selectBranch(main, stageConds, stageBranch, outs, true, outInfo, 'stages');
    }
    outs.forEach((o, j) => main.output(outInfo(o, j)));

    if (ctrl) {
      const cnet = ctrl.network;
      const plan = staticPlan();
      const K = ctrl.actions.length;
      const x = temporal ? lowerTemporalFeatures(main, ONNX_IO.scores, ONNX_IO.action, model.numClasses, K) : ONNX_IO.images;
      const y = lowerChain(cnet.layers, x, fullSel(temporal ? featureSize : c), { g: main, plan, prefix: 'controller', dims }).y;
      main.nodeTo('Identity', [y], ONNX_IO.controller);
      main.output(floatValueInfo(ONNX_IO.controller, ['batch', K], temporal ? 'temporal controller: each action\'s expected reward for the next frame' : 'controller action logits'));
      const cost = cnet.cost(plan);
      controller = {
        actions: [...ctrl.actions],
        flops: cost.flops,
        macs: cost.macs,
        flopsRatio: cost.flops / model.cost(1).flops,
        ...(temporal
          ? {
              temporal: {
                start: temporal.start,
                features: [...TEMPORAL_FEATURES],
                // Each action's input resolution and the network's FLOPs ratio there (the layers' own count).
                ...(resolutions && { resolutions: [...resolutions], actionFlopsRatios: ctrl.actions.map((u, k) => (atRes.get(resolutions[k])?.macs(model.plan(u)) ?? model.cost(u).macs) / model.cost(1).macs) }),
              },
            }
          : {}),
      };
    }
    if (staged) {
      for (const lv of levels) lv.exitFlops = stagedExitFlops(model, model.plan(lv.u), starts);
    }

    graph = main.build();
  } finally {
    for (const at of atRes.values()) at.dispose();
  }
  const metadata: OnnxMetadata = {
    format: ONNX_FORMAT,
    dynnVersion: VERSION,
    model: model.config,
    input: { name: ONNX_IO.images, layout: 'NCHW', shape: [c, h, w] },
    numClasses: model.numClasses,
    classNames,
    levels,
    ...(staged ? { exits: { count: segments.length, ...(options.exitPolicy ? { policy: options.exitPolicy } : {}), ...(inGraph ? { inGraph: { rule: inGraph } } : {}) } } : {}),
    ...(controller ? { controller } : {}),
    weightsSha256: weightsSha256(graph),
  };
  const bytes = encodeModel({
    ir_version: IR_VERSION,
    opset_import: [{ domain: '', version: OPSET_VERSION }],
    producer_name: 'dynn',
    producer_version: VERSION,
    doc_string: `${model.config.model}: a throttleable network; input u in (0, 1] picks one of ${levels.length} levels`,
    graph,
    metadata_props: metadataProps(metadata),
  });
  return { bytes, metadata };
}

/**
 * Exports a network to an ONNX file, written atomically (an existing file is replaced); returns the metadata
 * written. A folder at `file` is a DynnError.
 */
export async function saveOnnx(model: Network, file: string, options: ExportOptions = {}): Promise<OnnxMetadata> {
  if ((await fsp.stat(file).catch(() => null))?.isDirectory()) throw new DynnError(`${file} is a folder; give the ONNX file to write, e.g. ${path.join(file, 'model.onnx')}`);
  const { bytes, metadata } = exportOnnx(model, options);
  await writeFileAtomic(file, bytes);
  return metadata;
}
