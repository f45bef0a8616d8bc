import { DynnError } from '../util/errors.js';
import { InputTooSmallError, fullSel, type Layer, type Plan, type Shape } from '../layers/index.js';
import type { FrozenOp } from './subnet.js';
import { Network, type ModelConfig } from './network.js';
import { models, resolveModelArgs } from './registry.js';

/**
 * The registered model of `config` built for inputs of `shape`: its own (fresh) weights under the same names,
 * and each layer's shapes and cost at that size. What adaptive resolution reads a lower resolution's shapes from.
 */
export function networkAt(config: ModelConfig, shape: Shape, extra: Record<string, unknown> = {}, seed = 0): Network {
  const args = resolveModelArgs(config.model, { ...config.args, ...extra, inputShape: shape });
  try {
    return new Network({ model: config.model, args }, shape, models.get(config.model).layers(args as never), seed);
  } catch (err) {
    if (err instanceof InputTooSmallError) throw new DynnError(`${config.model} cannot run at ${shape[0]}x${shape[1]} (--resolutions): ${err.message}`, { cause: err });
    throw err;
  }
}

const shapesOf = (layers: Layer[]) => layers.flatMap((l) => l.weights()).map((w) => `${w.name}:${w.variable.shape.join('x')}`).join();

/**
 * A trained network run on its input resized to a lower resolution (NaviSlim's input-layer slimming), its
 * weights unchanged: every layer up to the classifier runs at the lower resolution, which is where a CNN's
 * FLOPs are. A network that pools globally runs on the resized input as it is; one that flattens a feature map
 * (vgg-w) resizes that map back to the size its dense layer was trained on just before the flatten (bilinear,
 * a few operations per value), so its convolutions still run small. Resizing the input back up instead would
 * save nothing. Costs are the layers' own (`Layer.cost`) at the shape each runs at.
 */
export class AtResolution {
  /** [height, width] the network runs at. */
  readonly size: [number, number];
  /** The network built at `size` (shapes and costs; its weights are never used). */
  private readonly low: Network;
  /** Index of the top-level Flatten layer, -1 when the network pools globally. */
  private readonly flatten: number;

  constructor(
    readonly model: Network,
    /** The height; the width follows the input's aspect. */
    readonly resolution: number,
  ) {
    const [h, w, c] = model.inputShape;
    if (model.inputShape.length !== 3) throw new DynnError(`a resolution needs an image model ([H, W, C] input), got [${model.inputShape}]`);
    if (!Number.isInteger(resolution) || resolution < 1) throw new DynnError(`a resolution must be a positive integer, got ${resolution}`);
    if (resolution > h) throw new DynnError(`resolution ${resolution} is larger than the input (${h}x${w}); a network runs at most at its input's resolution`);
    this.size = [resolution, Math.max(1, Math.round((resolution * w) / h))];
    this.low = networkAt(model.config, [...this.size, c], { numClasses: model.numClasses });
    this.flatten = model.layers.findIndex((l) => l.className === 'Flatten');
    const upTo = this.flatten < 0 ? model.layers.length : this.flatten;
    if (shapesOf(this.low.layers.slice(0, upTo)) !== shapesOf(model.layers.slice(0, upTo))) {
      this.low.dispose();
      throw new DynnError(`${model.config.model} cannot run at resolution ${resolution}: its weights before the classifier depend on the input size`);
    }
    if (resolution < h && this.macs(model.plan(1)) >= model.cost(1).macs) {
      this.low.dispose();
      throw new DynnError(`${model.config.model} computes nothing before it flattens its input: resolution ${resolution} would save no compute (a convolutional model, such as vgg-w or resnet-d, does)`);
    }
  }

  /** The frozen ops of a full-resolution subnet, run at this resolution (the input resized first). */
  ops(ops: FrozenOp[]): FrozenOp[] {
    const [h, w] = this.size;
    const out: FrozenOp[] = [{ op: 'resize', height: h, width: w }, ...ops];
    if (this.flatten < 0) return out;
    const at = out.findIndex((o) => o.op === 'flatten');
    if (at < 0) throw new DynnError(`internal: ${this.model.config.model}'s subnet has no flatten op`);
    const [fh, fw] = this.model.layers[this.flatten].inShape;
    out.splice(at, 0, { op: 'resize', height: fh, width: fw });
    return out;
  }

  /**
   * The layers as they run (what export lowers): `head`, built at this resolution (the same weight names),
   * up to the flatten (or all); then, for a network that flattens, the map resized `back` to [h, w] and the
   * trained network's `tail` from its flatten.
   */
  parts(): { head: Layer[]; back?: [number, number]; tail: Layer[] } {
    if (this.flatten < 0) return { head: this.low.layers, tail: [] };
    const [fh, fw] = this.model.layers[this.flatten].inShape;
    return { head: this.low.layers.slice(0, this.flatten), back: [fh, fw], tail: this.model.layers.slice(this.flatten) };
  }

  /** MACs of one sample at `plan`: the layers before the flatten at this resolution, the rest as trained. */
  macs(plan: Plan): number {
    let sel = fullSel(this.model.inputShape[2]);
    let macs = 0;
    this.model.layers.forEach((l, i) => {
      const at = this.flatten >= 0 && i >= this.flatten ? l : this.low.layers[i];
      macs += at.cost(sel, plan).reduce((a, x) => a + x.macs, 0);
      sel = l.outSel(sel, plan);
    });
    return macs;
  }

  dispose(): void {
    this.low.dispose();
  }
}
