import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Composite, Conv2D, DGConv2D, Dense, GlobalAvgPool, Layer, MaxPool, ReLU, SqueezeExcite, fullSel, layerClasses, take } from '../layers/index.js';
import type { ChannelSel, LayerCost, Routing, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import { logitCut, nestedCounts } from './count.js';

export interface GateNetArgs {
  /** Channels of the gate's hidden convolutions. */
  width: number;
  /** Outputs: one logit per group of channels the gate decides on. */
  outputs: number;
  /**
   * The logits at the start, whatever the input (default 5: sigmoid 0.993, so a nested gate of 8 groups
   * keeps them all with probability 0.95). Gates that start open let step 2 of two-step training start where
   * step 1 ended, instead of switching half the channels off at random (the output layer's kernel starts
   * at zero for that).
   */
  openLogit?: number;
  /**
   * Factor on the output logits (default 1). Larger factors make the gates learn faster than the backbone
   * under Adam, which moves a weight about one learning rate per step. Measured on Fashion-MNIST, target
   * 0.5, after one epoch without skipping: with 4,096 images and 2 gated epochs, 10 reached the target but
   * fell to 38% accuracy, 3 reached 0.74 at 59%, 1 stayed at 0.93 (78%); with 16,384 images and 1 gated
   * epoch, 1 reached 0.49 at 58.7%, level with the backbone sliced to u = 0.5 (57.7% at 0.52).
   */
  logitScale?: number;
}

/**
 * What every gating network ends with: global average pooling and a dense layer with one logit per group,
 * starting open (zero kernel, bias `openLogit / logitScale`) and multiplied by `logitScale`. Subclasses give
 * the feature layers in front. A gate reads the block's input, whatever channels it holds, and runs at full
 * width: gates are not throttled.
 */
export abstract class LogitGate extends Composite<GateNetArgs> {
  /** The layers before the pooling, named `<name>.*`; `width` has been checked to be a positive integer. */
  protected abstract features(width: number): Layer[];

  /** Layers between the pooling and the output layer (none by default). */
  protected pooled(_width: number): Layer[] {
    return [];
  }

  protected doBuild(inShape: Shape): Shape {
    const { width, outputs, openLogit = 5, logitScale = 1 } = this.args;
    if (!Number.isInteger(width) || width < 1) throw new DynnError(`${this.name}: gate width must be a positive integer, got ${width}`);
    this.layers = [
      ...this.features(width),
      new GlobalAvgPool(`${this.name}.gap`, {}),
      ...this.pooled(width),
      new Dense(`${this.name}.fc`, { units: outputs, init: 'zeros', biasInit: openLogit / logitScale }),
    ];
    return this.buildChain(this.layers, inShape);
  }

  outSel(): ChannelSel {
    return fullSel(this.args.outputs);
  }

  /**
   * Adds `delta` to every logit the gate gives, whatever the input: through the output layer's bias, in
   * units of the logits (the bias is multiplied by `logitScale`). What fitting a gate to its target moves.
   */
  shiftLogits(delta: number): void {
    const bias = this.weights().find((w) => w.name === `${this.name}.fc.bias`);
    if (!bias) throw new DynnError(`${this.name}: no output bias to shift`);
    tf.tidy(() => bias.variable.assign(tf.add(bias.variable, delta / (this.args.logitScale ?? 1))));
  }

  call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext) {
    const { y, sel: out } = this.runChain(this.layers, x, sel, ctx);
    return { y: tf.mul(y, this.args.logitScale ?? 1), sel: out };
  }

  freeze(): FrozenOp[] {
    throw new DynnError(`${this.name}: a gate has no frozen form; it runs inside its gated block`);
  }

  cost(sel: ChannelSel, plan: RunContext['plan']): LayerCost[] {
    return this.chainCost(this.layers, sel, plan);
  }
}

/**
 * ACS's gating network (ACS-GN): a 1x1 bottleneck, a 3x3 convolution with stride 2, a 3x3 convolution,
 * global average pooling and a dense layer with one logit per group.
 */
export class GateNet extends LogitGate {
  readonly className = 'GateNet';

  protected features(width: number): Layer[] {
    const n = this.name;
    return [
      new Conv2D(`${n}.reduce`, { filters: width, kernelSize: 1, useBias: true }),
      new ReLU(`${n}.relu0`, {}),
      new Conv2D(`${n}.conv1`, { filters: width, kernelSize: 3, strides: 2, useBias: true }),
      new ReLU(`${n}.relu1`, {}),
      new Conv2D(`${n}.conv2`, { filters: width, kernelSize: 3, useBias: true }),
      new ReLU(`${n}.relu2`, {}),
    ];
  }
}

/**
 * ACS's gating network with dynamic group convolutions (ACS-DG): GateNet's two 3x3 convolutions become
 * DGConv layers that learn their own channel grouping (so the gate costs less as it groups), with a
 * squeeze-and-excitation block between them. The 1x1 bottleneck gives the DGConvs `width` channels, which
 * must be a power of two.
 */
export class DGGateNet extends LogitGate {
  readonly className = 'DGGateNet';

  protected features(width: number): Layer[] {
    const n = this.name;
    if (width < 2 || (width & (width - 1)) !== 0) {
      throw new DynnError(`${n}: an acs-dg gate's width (gateWidth) must be a power of two >= 2, as its DGConv layers need, got ${width}`);
    }
    return [
      new Conv2D(`${n}.reduce`, { filters: width, kernelSize: 1, useBias: true }),
      new ReLU(`${n}.relu0`, {}),
      new DGConv2D(`${n}.conv1`, { filters: width, kernelSize: 3, strides: 2 }),
      new ReLU(`${n}.relu1`, {}),
      new SqueezeExcite(`${n}.se`, {}),
      new DGConv2D(`${n}.conv2`, { filters: width, kernelSize: 3 }),
      new ReLU(`${n}.relu2`, {}),
    ];
  }
}

/**
 * ConvNet-AIG's gate: global average pooling of the block's input, a small dense layer with ReLU, and the
 * logit (ConvNet-AIG puts a BatchNorm after the first dense layer; its bias stands in for it here, as in
 * every dynn gate, whose statistics would otherwise follow the routes).
 */
export class PooledGate extends LogitGate {
  readonly className = 'PooledGate';

  protected features(): Layer[] {
    return [];
  }

  protected override pooled(width: number): Layer[] {
    return [new Dense(`${this.name}.hidden`, { units: width }), new ReLU(`${this.name}.relu`, {})];
  }
}

/**
 * SkipNet's feed-forward gate FFGate-I: 2x2 max pooling, a 3x3 convolution, a 3x3 convolution with stride
 * 2 (ReLU after each), global average pooling and the logit (SkipNet's BatchNorms replaced by biases).
 */
export class SkipGate extends LogitGate {
  readonly className = 'SkipGate';

  protected features(width: number): Layer[] {
    const n = this.name;
    return [
      new MaxPool(`${n}.pool`, {}),
      new Conv2D(`${n}.conv1`, { filters: width, kernelSize: 3, useBias: true }),
      new ReLU(`${n}.relu1`, {}),
      new Conv2D(`${n}.conv2`, { filters: width, kernelSize: 3, strides: 2, useBias: true }),
      new ReLU(`${n}.relu2`, {}),
    ];
  }
}

layerClasses.register('GateNet', GateNet);
layerClasses.register('DGGateNet', DGGateNet);
layerClasses.register('PooledGate', PooledGate);
layerClasses.register('SkipGate', SkipGate);

/** A gate's decisions for the rows it saw: how many leading groups each sample runs. */
export interface NestedDecision {
  /** Probability that each sample runs at least g + 1 groups, [rows, G], non-increasing along g. */
  q: tf.Tensor2D;
  /** Groups each sample runs, in 0..G. */
  counts: Int32Array;
  /**
   * What the straight-through factor of `soft` decisions differentiates, [rows, G]: `q` itself with the
   * `sigmoid` estimator, the relaxed nested decision cumprod(sigmoid(z + noise)) with `gumbel`.
   */
  surrogate: tf.Tensor2D;
}

/** log prod_{j <= g} sigmoid(z_j) along the groups; log sigmoid(z) = -softplus(-z) (TF.js's logSigmoid loses its input before the backward pass). */
const logCumSigmoid = (z: tf.Tensor2D) => tf.cumsum(tf.neg(tf.softplus(tf.neg(z))), 1) as tf.Tensor2D;

/** Uniform numbers in [0, 1) per sample and output of gate `key`, row-major [n, outputs] (`Routing.random` per output). */
export function perGate(routing: Routing, key: string, n: number, outputs: number): Float32Array {
  const u = new Float32Array(n * outputs);
  for (let c = 0; c < outputs; c++) routing.random(`${key}#${c}`).forEach((v, i) => (u[i * outputs + c] = v));
  return u;
}

/** Logistic noise log(u) - log(1 - u) of uniforms (clamped off 0 and 1): z + noise > 0 has probability sigmoid(z). */
export function logisticNoise(u: Float32Array): Float32Array {
  return u.map((v) => {
    const w = Math.min(Math.max(v, 1e-6), 1 - 1e-6);
    return Math.log(w) - Math.log(1 - w);
  });
}

/**
 * Nested decisions from a gate's logits: q_g = prod_{j <= g} sigmoid(z_j) is the probability of running
 * groups 1..g, so decisions nest (group g only with every group before it) and a sample's active channels
 * are a prefix, which a sliced convolution runs without a mask. `hard` and `masked`: count =
 * #{g : q_g > threshold}, so one trained model has many operating points. `soft`, estimator `sigmoid`: one
 * uniform r per sample, count = #{g : q_g > r} (a sample of the nested distribution); estimator `gumbel`:
 * group j is on when z_j + L_j > 0 with logistic noise L_j, and the count is the run of leading groups on
 * (the same distribution, sampled per group). Call inside `tf.tidy`.
 */
export function nestedDecision(key: string, logits: tf.Tensor2D, routing: Routing): NestedDecision {
  const [n, G] = logits.shape;
  const q = tf.exp(logCumSigmoid(logits)) as tf.Tensor2D;
  if (routing.mode === 'soft' && routing.estimator === 'gumbel') {
    const counts = new Int32Array(n);
    const perturbed = tf.add(logits, tf.tensor2d(logisticNoise(perGate(routing, key, n, G)), [n, G])) as tf.Tensor2D;
    const zs = perturbed.dataSync();
    for (let i = 0; i < n; i++) {
      let k = 0;
      while (k < G && zs[i * G + k] > 0) k++;
      counts[i] = k;
    }
    return { q, counts, surrogate: tf.exp(logCumSigmoid(perturbed)) as tf.Tensor2D };
  }
  // The count rule shared with the ONNX Runtime dispatcher (`count.ts`): the same logits give the same route.
  const cut = routing.mode === 'soft' ? routing.random(key) : routing.threshold;
  return { q, counts: nestedCounts(logits.dataSync(), G, cut), surrogate: q };
}

/** 1 + p - stop_gradient(p): ones in value, p's gradient (TF.js has no stop-gradient op). */
export const onesWithGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: tf.onesLike(args[0] as tf.Tensor),
  gradFunc: (dy: tf.Tensor) => dy,
})) as (p: tf.Tensor) => tf.Tensor;

/**
 * Independent binary decisions, one per logit ([rows, K]). `hard` and `masked`: on when sigmoid(z) > the
 * threshold, compared as z > logitCut(threshold), as an exported graph decides. `soft`: on when sigmoid(z) > a
 * uniform number per row and logit (estimator `sigmoid`), or when z + logistic noise > 0 (`gumbel`, the same
 * distribution). `surrogate` is what the straight-through factor differentiates: sigmoid(z), or sigmoid(z +
 * noise) with `gumbel`. Per-channel decisions and spatial masks both decide so.
 */
export function binaryDecisions(key: string, logits: tf.Tensor2D, routing: Routing): { on: Float32Array; surrogate: tf.Tensor2D } {
  const [n, K] = logits.shape;
  if (routing.mode !== 'soft') {
    const at = logitCut(routing.threshold);
    return { on: Float32Array.from(logits.dataSync(), (z) => (z > at ? 1 : 0)), surrogate: tf.sigmoid(logits) as tf.Tensor2D };
  }
  const u = perGate(routing, key, n, K);
  const gumbel = routing.estimator === 'gumbel';
  const surrogate = tf.sigmoid(gumbel ? tf.add(logits, tf.tensor2d(logisticNoise(u), [n, K])) : logits) as tf.Tensor2D;
  return { on: Float32Array.from(surrogate.dataSync(), (v, i) => (v > (gumbel ? 0.5 : u[i]) ? 1 : 0)), surrogate };
}

export interface SpatialGateArgs {
  /** The logit at the start, at every position (default 2: sigmoid 0.88, most positions computed at first). */
  openLogit?: number;
  /** Factor on the logits (default 1; see `GateNetArgs.logitScale`). */
  logitScale?: number;
}

/**
 * dynconv's mask unit reduced to its core: a 1x1 convolution of the block's input to one logit per position
 * ([rows, H, W, 1]). Its kernel starts at zero and its bias at `openLogit`, so every position starts alike
 * and the gate learns where computing pays.
 */
export class SpatialGate extends Layer<SpatialGateArgs> {
  readonly className = 'SpatialGate';
  private kernel!: tf.Variable;
  private bias!: tf.Variable;

  protected doBuild(inShape: Shape): Shape {
    if (inShape.length !== 3) throw new DynnError(`${this.name}: a spatial gate needs an [H, W, C] input, got [${inShape}]`);
    const scale = this.args.logitScale ?? 1;
    this.kernel = this.addWeight('kernel', this.initKernel('kernel', [1, 1, inShape[2], 1], inShape[2], 'zeros'));
    this.bias = this.addWeight('bias', tf.fill([1], (this.args.openLogit ?? 2) / scale));
    return [inShape[0], inShape[1], 1];
  }

  outSel(): ChannelSel {
    return fullSel(1);
  }

  call(x: tf.Tensor, sel: ChannelSel) {
    const z = tf.add(tf.conv2d(x as tf.Tensor4D, take(this.kernel, 2, sel) as tf.Tensor4D, 1, 'same'), this.bias);
    return { y: tf.mul(z, this.args.logitScale ?? 1), sel: fullSel(1) };
  }

  /** Adds `delta` to every logit, whatever the input (as `LogitGate.shiftLogits`). */
  shiftLogits(delta: number): void {
    tf.tidy(() => this.bias.assign(tf.add(this.bias, delta / (this.args.logitScale ?? 1))));
  }

  freeze(): FrozenOp[] {
    throw new DynnError(`${this.name}: a gate has no frozen form; it runs inside its gated block`);
  }

  cost(sel: ChannelSel): LayerCost[] {
    const [h, w] = this.outShape;
    return [{ name: this.name, kind: this.className, macs: h * w * sel.count, params: sel.count + 1 }];
  }
}

layerClasses.register('SpatialGate', SpatialGate);
