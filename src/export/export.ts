import type { Network } from '../models/network.js';
import { planToData } from '../models/network.js';
import { fullSel } from '../layers/select.js';
import { checkGatingMode, checkUtilization, type GatingMode } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { VERSION } from '../version.js';
import { attr, floatValueInfo, GraphBuilder, NameScope } from './graph.js';
import { lowerChain } from './lower.js';
import { metadataProps, ONNX_FORMAT, ONNX_IO, type OnnxLevel, type OnnxMetadata } from './metadata.js';
import { encodeModel, IR_VERSION, OPSET_VERSION, type GraphMsg } from './onnx-proto.js';

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
 */
export function exportOnnx(model: Network, options: ExportOptions = {}): OnnxExport {
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

  const names = new NameScope();
  const main = new GraphBuilder('dynn', names);
  main.input(floatValueInfo(ONNX_IO.images, ['batch', c, h, w], 'images, NCHW float32'));
  main.input(floatValueInfo(ONNX_IO.u, [], 'utilization in (0, 1]; clamped to the exported levels'));
  const dims = new Map<string, number[]>();
  for (const wt of model.getWeights()) {
    const oihw = wt.shape.length === 4;
    const shape = oihw ? [wt.shape[3], wt.shape[2], wt.shape[0], wt.shape[1]] : wt.shape;
    main.floatInit(wt.name, shape, oihw ? hwioToOihw(wt.data, wt.shape) : wt.data, oihw ? 'OIHW (TF.js HWIO transposed)' : undefined);
    dims.set(wt.name, shape);
  }

  const scoresInfo = (name: string) => floatValueInfo(name, ['batch', model.numClasses]);
  const lowerLevel = (g: GraphBuilder, lv: OnnxLevel): string =>
    lowerChain(model.layers, ONNX_IO.images, fullSel(c), { g, plan: model.plan(lv.u), prefix: `L${lv.level}`, dims }).y;
  const branch = (i: number): GraphMsg => {
    const lv = levels[i];
    const g = new GraphBuilder(`level_${lv.level}`, names);
    g.output(scoresInfo(lowerLevel(g, lv)));
    return g.build(`u in [${lv.minU}, ...): level ${lv.level}`);
  };
  const cond = (i: number) => main.node('GreaterOrEqual', [ONNX_IO.u, main.floatConst(`min_u_${levels[i].level}`, [], [levels[i].minU])], `at_least_${levels[i].level}`);

  if (levels.length === 1) {
    const y = lowerLevel(main, levels[0]);
    main.nodeTo('Identity', [y], ONNX_IO.scores);
  } else {
    const conds = levels.map((_, i) => (i === 0 ? '' : cond(i)));
    let otherwise = branch(0);
    for (let i = 1; i < levels.length - 1; i++) {
      const g = new GraphBuilder(`up_to_level_${levels[i].level}`, names);
      const y = g.node('If', [conds[i]], `select_${levels[i].level}`, { then_branch: attr.graph(branch(i)), else_branch: attr.graph(otherwise) });
      g.output(scoresInfo(y));
      otherwise = g.build();
    }
    const top = levels.length - 1;
    main.nodeTo('If', [conds[top]], ONNX_IO.scores, { then_branch: attr.graph(branch(top)), else_branch: attr.graph(otherwise) });
  }
  main.output(scoresInfo(ONNX_IO.scores));

  const metadata: OnnxMetadata = {
    format: ONNX_FORMAT,
    dynnVersion: VERSION,
    model: model.config,
    input: { name: ONNX_IO.images, layout: 'NCHW', shape: [c, h, w] },
    numClasses: model.numClasses,
    classNames,
    levels,
  };
  const bytes = encodeModel({
    ir_version: IR_VERSION,
    opset_import: [{ domain: '', version: OPSET_VERSION }],
    producer_name: 'dynn',
    producer_version: VERSION,
    doc_string: `${model.config.model}: a throttleable network; input u in (0, 1] picks one of ${levels.length} levels`,
    graph: main.build(),
    metadata_props: metadataProps(metadata),
  });
  return { bytes, metadata };
}

/** Exports a network to an ONNX file, written atomically; returns the metadata written. */
export async function saveOnnx(model: Network, file: string, options: ExportOptions = {}): Promise<OnnxMetadata> {
  const { bytes, metadata } = exportOnnx(model, options);
  await writeFileAtomic(file, bytes);
  return metadata;
}
