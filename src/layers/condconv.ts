import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Layer, layerClasses } from './layer.js';
import { fullSel } from './select.js';
import type { ChannelSel, LayerCost, RunContext, Shape } from './types.js';
import { condConv, condRouteWeights, condRoutings, type CondConvParams } from './condconv-ops.js';
import type { FrozenOp } from '../models/subnet.js';

export interface CondConv2DArgs {
  /** Output channels. */
  filters: number;
  /** Square kernel size. */
  kernelSize: number;
  /** Number of expert kernels E mixed per sample. */
  experts: number;
  /** Stride (default 1). */
  strides?: number;
  /** Padding (default 'same'). */
  padding?: 'same' | 'valid';
  /** A registered routing: `sigmoid` (CondConv, the default) or `softmax` (dynamic convolution). */
  routing?: string;
  /** Softmax temperature (default 1); Chen et al. start at 30 and anneal to 1 (`annealEpochs`). */
  temperature?: number;
  /** Epochs over which the softmax temperature falls linearly from `temperature` to 1 (default 0: fixed). */
  annealEpochs?: number;
  /** Per-expert biases, mixed like the kernels (default false: a BatchNorm usually follows). */
  useBias?: boolean;
}


/**
 * A conditionally parameterized convolution (CondConv; dynamic convolution with softmax routing): per sample,
 * the kernel is sum_e r_e(x) W_e with r from the globally pooled input through one FC. The survey's "dynamic
 * parameters": (x * W) (x) a = x * (W (x) a) computed on the right, one mixed kernel per sample.
 * Not throttleable: it takes and gives all of its channels.
 */
export class CondConv2D extends Layer<CondConv2DArgs> {
  readonly className = 'CondConv2D';
  private kernel!: tf.Variable;
  private bias: tf.Variable | null = null;
  private routeKernel!: tf.Variable;
  private routeBias!: tf.Variable;
  /**
   * Softmax routing's temperature in force, a non-trainable weight: annealing changes it between epochs, and
   * as a weight it reaches the training workers, the checkpoint and the ONNX graph like BatchNorm statistics.
   */
  private temp: tf.Variable | null = null;

  protected doBuild(inShape: Shape): Shape {
    const { filters, kernelSize: k, experts: e, strides = 1, padding = 'same' } = this.args;
    checkCondArgs(this.args, this.name);
    if (inShape.length !== 3) throw new DynnError(`${this.name}: CondConv2D needs an [H, W, C] input, got [${inShape}]`);
    const [h, w, c] = inShape;
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [e, c * k * k, filters], k * k * c));
    if (this.args.useBias) this.bias = this.addWeight('bias', tf.zeros([e, filters]));
    this.routeKernel = this.addWeight('route.kernel', this.initKernel('route.kernel', [c, e], c));
    this.routeBias = this.addWeight('route.bias', tf.zeros([e]));
    if (this.args.routing === 'softmax') this.temp = this.addWeight('temperature', tf.tensor1d([this.temperatureAt(0)]), false);
    const out = (n: number) => (padding === 'same' ? Math.ceil(n / strides) : Math.floor((n - k) / strides) + 1);
    return [out(h), out(w), filters];
  }

  /** The temperature at the start of `epoch` (0-based): linear from `temperature` to 1 over `annealEpochs`. */
  temperatureAt(epoch: number): number {
    const t0 = this.args.temperature ?? 1;
    const span = this.args.annealEpochs ?? 0;
    return span > 0 ? 1 + (t0 - 1) * Math.max(0, 1 - epoch / span) : t0;
  }

  /** Sets the softmax temperature for `epoch`; true when it changed. */
  setEpoch(epoch: number): boolean {
    if (!this.temp) return false;
    const t = this.temperatureAt(epoch);
    if (this.temp.dataSync()[0] === Math.fround(t)) return false;
    tf.tidy(() => this.temp!.assign(tf.tensor1d([t])));
    return true;
  }

  outSel(): ChannelSel {
    return fullSel(this.args.filters);
  }

  private params(): CondConvParams {
    return {
      kernel: this.kernel as tf.Tensor as tf.Tensor3D,
      bias: this.bias as tf.Tensor as tf.Tensor2D | null,
      routeKernel: this.routeKernel as tf.Tensor as tf.Tensor2D,
      routeBias: this.routeBias as tf.Tensor as tf.Tensor1D,
      routing: this.args.routing ?? 'sigmoid',
      temperature: this.temp as tf.Tensor as tf.Tensor1D | null,
      kernelSize: this.args.kernelSize,
      strides: this.args.strides ?? 1,
      padding: this.args.padding ?? 'same',
    };
  }

  private checkSel(sel: ChannelSel): void {
    if (sel.count !== this.inShape[2] || sel.index !== null) {
      throw new DynnError(`${this.name}: a conditional convolution takes all of its ${this.inShape[2]} input channels, got ${sel.count}`);
    }
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    this.checkSel(sel);
    const p = this.params();
    const weights = condRouteWeights(x as tf.Tensor4D, p);
    ctx.mixtures?.add(this.name, weights);
    return { y: condConv(x as tf.Tensor4D, p, weights), sel: this.outSel() };
  }

  freeze(sel: ChannelSel): FrozenOp[] {
    this.checkSel(sel);
    const p = this.params();
    return [
      {
        ...p,
        op: 'condconv',
        name: this.name,
        kernel: tf.clone(p.kernel),
        bias: p.bias ? tf.clone(p.bias) : null,
        routeKernel: tf.clone(p.routeKernel),
        routeBias: tf.clone(p.routeBias),
        temperature: p.temperature ? tf.clone(p.temperature) : null,
        relu: false,
      },
    ];
  }

  /**
   * The convolution a sample runs (one mixed kernel: a static convolution's MACs), and apart from it the
   * routing's cost: the router FC and the mixing of E kernels (and biases) into one.
   */
  cost(sel: ChannelSel): LayerCost[] {
    this.checkSel(sel);
    const { filters, kernelSize: k, experts: e } = this.args;
    const [oh, ow] = this.outShape;
    const c = this.inShape[2];
    const perKernel = k * k * c * filters + (this.bias ? filters : 0);
    return [
      { name: this.name, kind: this.className, macs: oh * ow * k * k * c * filters, params: e * perKernel },
      { name: `${this.name}.route`, kind: 'CondConvRouting', macs: c * e + e * perKernel, params: c * e + e },
    ];
  }
}

/** Checks a conditional convolution's arguments, with errors that say what was expected. */
export function checkCondArgs(a: Partial<CondConv2DArgs>, where = 'condconv'): void {
  if (a.experts !== undefined && !(Number.isInteger(a.experts) && a.experts >= 1)) {
    throw new DynnError(`${where}: experts (--experts) must be a positive integer, got ${a.experts}`);
  }
  if (a.routing !== undefined) {
    if (!condRoutings.has(a.routing)) throw new DynnError(`${where}: unknown routing "${a.routing}"; expected one of ${condRoutings.list().join(', ')}`);
  }
  if (a.temperature !== undefined && !(a.temperature > 0 && Number.isFinite(a.temperature))) {
    throw new DynnError(`${where}: temperature (--temperature) must be a positive number, got ${a.temperature}`);
  }
  if (a.temperature !== undefined && a.temperature !== 1 && a.routing !== 'softmax') {
    throw new DynnError(`${where}: a temperature needs --routing softmax`);
  }
  if (a.annealEpochs !== undefined && !(Number.isInteger(a.annealEpochs) && a.annealEpochs >= 0)) {
    throw new DynnError(`${where}: annealEpochs (--anneal-epochs) must be a non-negative integer, got ${a.annealEpochs}`);
  }
}

/**
 * For a new run only (a checkpoint saved before this check still loads): `annealEpochs` moves a softmax temperature
 * to 1, so without one other than 1 it would do nothing, silently.
 */
export function checkAnnealing(a: Partial<CondConv2DArgs>, where = 'condconv'): void {
  if ((a.annealEpochs ?? 0) > 0 && !(a.routing === 'softmax' && (a.temperature ?? 1) !== 1)) {
    throw new DynnError(`${where}: annealEpochs (--anneal-epochs) moves a softmax temperature to 1; give --routing softmax and a --temperature other than 1`);
  }
}

/**
 * Sets the softmax temperature of every conditional convolution among `layers` and their sub-layers for
 * `epoch` (the trainer calls it at each epoch's start); true when one changed (the workers must reload).
 */
export function annealTemperatures(layers: Layer[], epoch: number): boolean {
  let changed = false;
  for (const l of layers) {
    if (l instanceof CondConv2D) changed = l.setEpoch(epoch) || changed;
    changed = annealTemperatures(l.children(), epoch) || changed;
  }
  return changed;
}

/** A conditional convolution. */
export function condconv2d(name: string, args: CondConv2DArgs): CondConv2D {
  return new CondConv2D(name, args);
}

layerClasses.register('CondConv2D', CondConv2D);
