import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';
import type { BlockInfo, ChannelSel, LayerCost, Plan, RunContext, Shape, Weight } from './types.js';
import type { FrozenOp } from '../models/subnet.js';

let nextUid = 0;

/**
 * How a kernel starts: `fan-in-uniform` (U(+-1/sqrt(fanIn)), PyTorch's default; the better choice before
 * a BatchNorm), `he-normal` (N(0, 2/fanIn), for plain ReLU stacks without normalization) or `zeros` (a
 * gate's output layer, which then starts at its bias whatever the input).
 */
export type KernelInit = 'fan-in-uniform' | 'he-normal' | 'zeros';

/** The serializable description of a layer: enough to construct it again. */
export interface LayerConfig {
  className: string;
  name: string;
  args: Record<string, unknown>;
}

/**
 * A layer of a throttleable network. Weights are created lazily in `build` at full width; `call` runs
 * the layer on whatever channels its input holds (`ChannelSel`) and on the groups the plan activates,
 * slicing weights rather than masking outputs.
 */
export abstract class Layer<A extends object = object> {
  /** The class name under which the layer is registered for serialization. */
  abstract readonly className: string;
  /** Full-width input and output shapes, known after `build`. */
  inShape: Shape = [];
  outShape: Shape = [];
  protected readonly own: Weight[] = [];
  private built = false;
  // tf.Variable names are global to the engine; the uid keeps two instances of one model apart.
  private readonly uid = nextUid++;

  constructor(
    readonly name: string,
    readonly args: A,
  ) {}

  /** Seed of the initial weights, set by `build`. */
  protected seed = 0;

  /** Creates the weights for a full-width input of `inShape` and returns the output shape. */
  build(inShape: Shape, seed = 0): Shape {
    if (this.built) throw new DynnError(`layer ${this.name} is already built`);
    this.inShape = inShape;
    this.seed = seed;
    this.outShape = this.doBuild(inShape);
    // A too-small input shrinks to nothing (a 1x1 image through a 2x2 pooling); the kernels would then read
    // out of bounds or loop forever, so the model refuses it here, when it is built.
    if (this.outShape.some((d) => !Number.isInteger(d) || d < 1)) {
      throw new InputTooSmallError(`layer ${this.name}: an input of ${inShape.join('x')} leaves an output of ${this.outShape.join('x')}; the input is too small for this model`);
    }
    this.built = true;
    return this.outShape;
  }

  protected abstract doBuild(inShape: Shape): Shape;

  /** Runs the layer on `x`, which holds the channels `sel` names. Call inside `tf.tidy`. */
  abstract call(x: tf.Tensor, sel: ChannelSel, ctx: RunContext): { y: tf.Tensor; sel: ChannelSel };

  /** Which channels the output holds for input channels `sel` under `plan`. */
  abstract outSel(sel: ChannelSel, plan: Plan): ChannelSel;

  /** The layer's inference ops at a plan, weights sliced to the active channels. Call inside `tf.tidy`. */
  abstract freeze(sel: ChannelSel, plan: Plan): FrozenOp[];

  /** MACs and active parameters at an operating point, one entry per leaf layer. */
  abstract cost(sel: ChannelSel, plan: Plan): LayerCost[];

  /** Sub-layers, for composite layers. */
  children(): Layer[] {
    return [];
  }

  /**
   * Sub-layers the network's plan reaches (default: all of them). A switch over whole networks returns none:
   * each route runs its own network at that network's full plan.
   */
  plannedChildren(): Layer[] {
    return this.children();
  }

  /** Frees what the layer keeps beside its weights (a cache); the network's `dispose` calls it on every layer. */
  releaseCaches(): void {}

  /** The throttleable unit this layer is, if any. */
  block(): BlockInfo | null {
    return null;
  }

  /** This layer's own weights and those of its sub-layers, in a fixed order. */
  weights(): Weight[] {
    return [...this.own, ...this.children().flatMap((c) => c.weights())];
  }

  getConfig(): LayerConfig {
    return { className: this.className, name: this.name, args: { ...this.args } as Record<string, unknown> };
  }

  /**
   * Initial kernel values, uniform in +-1/sqrt(fanIn) (PyTorch's default for convolutions and dense
   * layers), seeded by the build seed and the weight's name. Against He's larger scale it trains faster
   * here: most kernels feed a BatchNorm, and under Adam a scale-invariant weight's relative step grows as
   * its norm shrinks.
   */
  protected initKernel(suffix: string, shape: number[], fanIn: number, init: KernelInit = 'fan-in-uniform'): tf.Tensor {
    const seed = seedFor(`${this.name}.${suffix}`, this.seed);
    if (init === 'he-normal') return tf.randomNormal(shape, 0, Math.sqrt(2 / fanIn), 'float32', seed);
    if (init === 'zeros') return tf.zeros(shape);
    const bound = 1 / Math.sqrt(fanIn);
    return tf.randomUniform(shape, -bound, bound, 'float32', seed);
  }

  /** Creates a weight named `<layer>.<suffix>`. */
  protected addWeight(suffix: string, value: tf.Tensor, trainable = true): tf.Variable {
    const name = `${this.name}.${suffix}`;
    const variable = tf.variable(value, trainable, `${name}#${this.uid}`);
    value.dispose();
    this.own.push({ name, variable, trainable });
    return variable;
  }
}

/** A layer's input shrinks to nothing on the way through it: the model cannot take inputs that small. */
export class InputTooSmallError extends DynnError {}

type LayerCtor = new (name: string, args: never) => Layer;

/** Layer classes by class name, for rebuilding layers from their configs. */
export const layerClasses = new Registry<LayerCtor>('layer class');

/** Constructs a layer from its config. */
export function layerFromConfig(config: LayerConfig): Layer {
  const Ctor = layerClasses.get(config.className) as unknown as new (name: string, args: object) => Layer;
  return new Ctor(config.name, config.args);
}

/** A stable seed per weight name, so initial weights do not depend on construction order elsewhere. */
export function seedFor(name: string, base: number): number {
  let h = 2166136261 ^ base;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}
