import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { ResidualBlock, fullSel, layerClasses, type BatchNorm } from '../layers/index.js';
import type { ChannelSel, Layer, LayerCost, Plan, ResidualBlockArgs, RunContext, Shape } from '../layers/index.js';
import { binaryDecisions, onesWithGradient } from './gates.js';
import { gateMacsOf, innerContext, makeGate, routedCost, type GatedArgs } from './unit.js';

/**
 * Index arithmetic of spatially sparse 3x3 convolutions (stride 1, 'same' padding) on a batch of n maps of
 * H x W positions, flattened as p = (b * H + y) * W + x. TF-free, so the ONNX runtime can share it.
 */

/** Positions whose 3x3 neighbourhood holds a selected position: where the first conv must run for the second. */
export function dilate3(on: ArrayLike<number>, n: number, h: number, w: number): Uint8Array {
  const out = new Uint8Array(n * h * w);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (!on[(b * h + y) * w + x]) continue;
        for (let yy = Math.max(0, y - 1); yy <= Math.min(h - 1, y + 1); yy++) {
          for (let xx = Math.max(0, x - 1); xx <= Math.min(w - 1, x + 1); xx++) out[(b * h + yy) * w + xx] = 1;
        }
      }
    }
  }
  return out;
}

/** The flat indices of the nonzero entries, ascending. */
export function nonzero(mask: ArrayLike<number>): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < mask.length; i++) if (mask[i]) out.push(i);
  return Int32Array.from(out);
}

/** Each of `size` positions' row among `rows` (ascending positions), or `rows.length` (the zero row) when absent. */
export function inverseIndex(rows: Int32Array, size: number): Int32Array {
  const inv = new Int32Array(size).fill(rows.length);
  rows.forEach((p, j) => (inv[p] = j));
  return inv;
}

/**
 * The rows of the 3x3 patches around positions `rows`: for each, its 9 neighbours (row-major taps, as a
 * [3, 3, C, F] kernel is laid out) as rows of a source whose row of position p is `rowOf[p]`; outside the
 * map, `zero` (the source's appended zero row: the 'same' padding).
 */
export function patchIndex(rows: Int32Array, h: number, w: number, rowOf: Int32Array, zero: number): Int32Array {
  const out = new Int32Array(rows.length * 9);
  rows.forEach((p, j) => {
    const x = p % w;
    const y = Math.floor(p / w) % h;
    const base = p - y * w - x;
    for (let t = 0; t < 9; t++) {
      const yy = y + Math.floor(t / 3) - 1;
      const xx = x + (t % 3) - 1;
      out[j * 9 + t] = yy >= 0 && yy < h && xx >= 0 && xx < w ? rowOf[base + yy * w + xx] : zero;
    }
  });
  return out;
}

/** Rows `index` of `t` ([rows, C]) with a zero row appended (index `rows`): gathers patches and scatters results, with gradients. */
function rowsOrZero(t: tf.Tensor2D, index: Int32Array): tf.Tensor2D {
  return tf.gather(tf.concat([t, tf.zeros([1, t.shape[1]])]), tf.tensor1d(index, 'int32')) as tf.Tensor2D;
}

/** One 3x3 convolution at the positions whose patch rows `patches` index: a gather and one matrix product. */
function patchConv(source: tf.Tensor2D, patches: Int32Array, kernel: tf.Tensor): tf.Tensor2D {
  const [, , c, f] = kernel.shape;
  const cols = tf.reshape(rowsOrZero(source, patches), [patches.length / 9, 9 * c]) as tf.Tensor2D;
  return tf.matMul(cols, tf.reshape(kernel, [9 * c, f]) as tf.Tensor2D);
}

export interface SpatialResidualBlockArgs extends Omit<ResidualBlockArgs, 'gated' | 'strides'>, Pick<GatedArgs, 'mechanism' | 'gateWidth' | 'gateScale'> {}

/**
 * A residual block that computes, per sample, only the output positions its gate selects (dynconv, Verelst &
 * Tuytelaars 2020). The gate (a 1x1 convolution of the block's input) gives a logit per position; conv1 runs
 * on the selected positions dilated by its 3x3 kernel, conv2 on the selected positions, each as one gather
 * of 3x3 patches and one matrix product; the results are scattered back and the other positions keep the
 * shortcut: relu(x). BatchNorm normalizes the computed positions (training: their batch statistics).
 *
 * The block keeps its shape (stride 1, as many channels out as in) and is throttled in one group (`groups:
 * 1`, BatchNorm rows 0 and 1), as a block skipped whole: without routing (or in `full` mode) it is the dense
 * `ResidualBlock`, and a plan with no group leaves relu(x).
 */
export class SpatialResidualBlock extends ResidualBlock<SpatialResidualBlockArgs> {
  override readonly className = 'SpatialResidualBlock';
  private gateLayer!: Layer;

  protected override doBuild(inShape: Shape): Shape {
    const { filters, groups, levels } = this.args;
    if (inShape[2] !== filters) throw new DynnError(`${this.name}: a spatially gated block keeps its shape: ${inShape[2]} channels in, ${filters} out`);
    if (groups !== 1 || levels !== 2) throw new DynnError(`${this.name}: a spatially gated block runs in one group with 2 BatchNorm rows, got groups ${groups}, levels ${levels}`);
    const out = super.doBuild(inShape);
    this.gateLayer = makeGate(this.name, 1, this.args, inShape, this.seed);
    this.layers.push(this.gateLayer);
    return out;
  }

  get gate(): Layer {
    return this.gateLayer;
  }

  /** MACs per computed position of conv1 and of conv2. */
  positionMacs(sel: ChannelSel): { conv1: number; conv2: number } {
    const f = this.args.filters;
    return { conv1: 9 * sel.count * f, conv2: 9 * f * f };
  }

  override call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    if (!ctx.routing || ctx.routing.mode === 'full') return super.call(x, sel, ctx);
    return { y: this.sparse(x, sel, ctx), sel: this.outSel(sel, ctx.plan) };
  }

  private sparse(x: tf.Tensor, sel: ChannelSel, ctx: RunContext): tf.Tensor {
    const routing = ctx.routing!;
    const [n, h, w] = x.shape as [number, number, number, number];
    const P = h * w;
    const f = this.args.filters;
    const inner = innerContext(ctx, this, 1);
    const logits = tf.reshape(this.gateLayer.call(x, sel, ctx).y, [n, P]) as tf.Tensor2D;
    const { on, surrogate } = binaryDecisions(this.name, logits, routing);
    routing.observe(this.name, logits, true);
    const need = dilate3(on, n, h, w);
    const counts = (m: ArrayLike<number>) => Int32Array.from({ length: n }, (_, b) => {
      let k = 0;
      for (let p = b * P; p < (b + 1) * P; p++) k += m[p];
      return k;
    });
    const selected = counts(on);
    const needed = counts(need);
    const gateMacs = gateMacsOf(this.gateLayer, sel);
    const per = this.positionMacs(sel);
    routing.decide(this.name, selected, P);
    routing.spend(Array.from(selected, (k, b) => gateMacs + needed[b] * per.conv1 + k * per.conv2));
    if (routing.mode === 'soft') {
      routing.expect(tf.add(gateMacs, tf.mul(tf.sum(surrogate, 1), per.conv1 + per.conv2)) as tf.Tensor1D);
      routing.executes(this.name, selected, P, surrogate);
    }
    if (routing.mode === 'masked') {
      // The field's form, for timing only: every position computed, then multiplied by the mask.
      const main = this.runChain(this.back, this.runChain(this.front, x, sel, inner).y, fullSel(f), inner).y;
      return tf.relu(tf.add(x, tf.mul(main, tf.tensor4d(on, [n, h, w, 1]))));
    }
    const factor = routing.mode === 'soft' ? (tf.reshape(onesWithGradient(surrogate), [n * P]) as tf.Tensor1D) : undefined;
    return this.computeAt(x, on, inner, need, factor);
  }

  /**
   * The block on `x` computing only the positions `on` selects ([n * H * W], 0 or 1), at `inner` (its one
   * group); `need`, the dilated mask, when the caller has it; `factor` ([n * H * W], soft mode) multiplies
   * each computed position's residual. Fixed masks (benches) call it directly.
   */
  computeAt(x: tf.Tensor, on: ArrayLike<number>, inner: RunContext, need?: Uint8Array, factor?: tf.Tensor1D): tf.Tensor {
    const [n, h, w, c] = x.shape as [number, number, number, number];
    const P = h * w;
    const f = this.args.filters;
    const rows2 = nonzero(on);
    if (rows2.length === 0) return tf.relu(x);
    const rows1 = nonzero(need ?? dilate3(on, n, h, w));
    const identity = Int32Array.from({ length: n * P }, (_, p) => p);
    const [conv1, bn1, relu1] = this.front;
    const [conv2, bn2] = this.back;
    const flat = tf.reshape(x, [n * P, c]) as tf.Tensor2D;
    let hidden = patchConv(flat, patchIndex(rows1, h, w, identity, n * P), kernelOf(conv1));
    hidden = relu1.call(bn1.call(hidden, fullSel(f), inner).y, fullSel(f), inner).y as tf.Tensor2D;
    // conv2's patches lie inside conv1's positions (the dilation), so they are gathered from its rows directly.
    let residual = patchConv(hidden, patchIndex(rows2, h, w, inverseIndex(rows1, n * P), rows1.length), kernelOf(conv2));
    residual = bn2.call(residual, fullSel(f), inner).y as tf.Tensor2D;
    // Straight through: 1 in value, the gate's gradient through each computed position's soft mask.
    if (factor) residual = tf.mul(residual, tf.reshape(tf.gather(factor, tf.tensor1d(rows2, 'int32')), [rows2.length, 1]));
    const scattered = tf.reshape(rowsOrZero(residual, inverseIndex(rows2, n * P)), [n, h, w, f]);
    return tf.relu(tf.add(x, scattered));
  }

  /**
   * The block's inference weights folded for a sparse graph (the export): the gate as a [C] vector and bias
   * (logit scale applied), each convolution as a [9 * C_in, F] matrix in patch order (ky, kx, c) with its
   * BatchNorm (row 1, the one group's) folded into the columns and a bias.
   */
  folded(): { gate: { kernel: Float32Array; bias: number }; conv1: { matrix: Float32Array; bias: Float32Array }; conv2: { matrix: Float32Array; bias: Float32Array } } {
    const weights = new Map(this.weights().map((w) => [w.name, w.variable]));
    const read = (name: string) => weights.get(name)!.dataSync() as Float32Array;
    const scale = (this.gateLayer.args as { logitScale?: number }).logitScale ?? 1;
    const fold = (conv: Layer, bn: Layer) => {
      const matrix = Float32Array.from(read(`${conv.name}.kernel`));
      const f = this.args.filters;
      const eps = (bn.args as { epsilon?: number }).epsilon ?? 1e-5;
      const { mean, variance } = (bn as BatchNorm).readStats(1);
      const gamma = read(`${bn.name}.gamma`);
      const beta = read(`${bn.name}.beta`);
      const s = Float32Array.from(gamma, (g, j) => g / Math.sqrt(variance[j] + eps));
      for (let i = 0; i < matrix.length; i++) matrix[i] *= s[i % f];
      return { matrix, bias: Float32Array.from(beta, (b, j) => b - mean[j] * s[j]) };
    };
    return {
      gate: { kernel: read(`${this.gateLayer.name}.kernel`).map((v) => v * scale), bias: read(`${this.gateLayer.name}.bias`)[0] * scale },
      conv1: fold(this.front[0], this.front[1]),
      conv2: fold(this.back[0], this.back[1]),
    };
  }

  override cost(sel: ChannelSel, plan: Plan): LayerCost[] {
    return routedCost(this, sel, super.cost(sel, plan), new Set());
  }
}

/** A convolution layer's full kernel (the sparse path reads it whole: the block is not throttled in width). */
function kernelOf(conv: Layer): tf.Variable {
  const k = conv.weights().find((v) => v.name === `${conv.name}.kernel`);
  if (!k) throw new DynnError(`${conv.name}: no kernel`);
  return k.variable;
}

layerClasses.register('SpatialResidualBlock', SpatialResidualBlock);
