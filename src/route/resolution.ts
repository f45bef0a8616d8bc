import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { fullSel, layerClasses } from '../layers/index.js';
import type { Layer, Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import type { SwitchRoute } from './switch.js';
import type { Network } from '../models/network.js';
import { networkAt } from '../models/at-resolution.js';
import { WholeSwitch, type WholeSwitchArgs } from './whole.js';

/** What an adaptive-resolution switch is built from. */
export interface ResolutionSwitchArgs extends WholeSwitchArgs {
  /** The registered model that runs at every resolution, and its arguments. */
  backbone: string;
  backboneArgs: Record<string, unknown>;
  /** Heights the network runs at (the width scales with the input's aspect), any order; each at most the input's. */
  resolutions: number[];
}

/** The resolutions of `--resolutions`, checked against an input of `inShape`, ascending. */
export function checkResolutions(resolutions: unknown, inShape: Shape): number[] {
  const rs = Array.isArray(resolutions) ? resolutions : [resolutions];
  if (rs.length < 2 || rs.some((r) => !Number.isInteger(r) || r < 1)) {
    throw new DynnError(`--resolutions needs at least two positive integers, got ${rs.join(',')}`);
  }
  const sorted = [...(rs as number[])].sort((a, b) => a - b);
  if (sorted.some((r, i) => i > 0 && r === sorted[i - 1])) throw new DynnError(`--resolutions lists ${sorted.find((r, i) => i > 0 && r === sorted[i - 1])} twice`);
  const top = sorted[sorted.length - 1];
  if (top > inShape[0]) throw new DynnError(`resolution ${top} is larger than the input (${inShape[0]}x${inShape[1]}); a network runs at most at its input's resolution`);
  return sorted;
}

/**
 * Adaptive resolution (spatial adaptation, the survey): one network run at K input resolutions, and a gate
 * that reads a glimpse of the input at the smallest one and picks each sample's resolution. Samples are
 * grouped by resolution, each group resized once (bilinear, half-pixel centres) and run as one batch. BatchNorm keeps a row
 * per resolution (route k normalizes at the backbone's full level less K - 1 - k), so each resolution has its
 * own statistics, as slimmable networks keep one per width. The backbone keeps its weight names (a static
 * run of it starts one with `--init`).
 */
export class ResolutionSwitch extends WholeSwitch<ResolutionSwitchArgs> {
  readonly className = 'ResolutionSwitch';
  private net!: Network;
  private plans: Plan[] = [];
  private sizes: [number, number][] = [];

  get routes(): number {
    return this.args.resolutions.length;
  }

  routeLabel(k: number): string {
    return `${this.sizes[k][0]}x${this.sizes[k][1]}`;
  }

  /** [height, width] of route k. */
  size(k: number): [number, number] {
    return this.sizes[k];
  }

  protected buildRoutes(inShape: Shape): Shape {
    const rs = checkResolutions(this.args.resolutions, inShape);
    this.sizes = rs.map((r) => [r, Math.max(1, Math.round((r * inShape[1]) / inShape[0]))]);
    const { backbone } = this.args;
    const at = (shape: Shape) => this.backboneAt(shape);
    const [th, tw] = this.sizes[this.routes - 1];
    this.net = at([th, tw, inShape[2]]);
    const full = this.net.plan(1);
    if (full.level < this.routes - 1) {
      throw new DynnError(`${backbone} keeps ${full.level + 1} BatchNorm rows, fewer than the ${this.routes} resolutions need (one each); use fewer resolutions or more --groups`);
    }
    this.plans = this.sizes.map((_, k) => ({ ...full, level: full.level - (this.routes - 1 - k) }));
    const shapes = (n: Network) => n.weights().map((w) => `${w.name}:${w.variable.shape.join('x')}`).join();
    this.routeCosts = this.sizes.map(([h, w], k) => {
      if (k === this.routes - 1) return this.net.cost(this.plans[k]).layers;
      const probe = at([h, w, inShape[2]]);
      try {
        if (shapes(probe) !== shapes(this.net)) {
          throw new DynnError(`${backbone}'s weights depend on its input size (it flattens a feature map); adaptive resolution needs a model that pools globally, such as resnet-d or resnet38`);
        }
        return probe.cost(this.plans[k]).layers;
      } finally {
        probe.dispose();
      }
    });
    return this.net.outputShape;
  }

  /** The backbone built for inputs of `shape` (its own weights, the same names): each resolution's layer shapes. */
  private backboneAt(shape: Shape): Network {
    return networkAt({ model: this.args.backbone, args: this.args.backboneArgs }, shape, { numClasses: this.args.numClasses, seed: this.seed }, this.seed);
  }

  /**
   * The backbone's layers as built for route k's size (a 'same' convolution's padding depends on it), whose
   * weights export reads by name from this network's; a lower resolution's are a throwaway copy.
   */
  exportRoute(k: number): SwitchRoute {
    const [h, w] = this.sizes[k];
    const same = h === this.net.inputShape[0] && w === this.net.inputShape[1];
    const net = same ? this.net : this.backboneAt([h, w, this.inShape[2]]);
    const resize: [number, number] | undefined = h === this.inShape[0] && w === this.inShape[1] ? undefined : [h, w];
    return { layers: net.layers, plan: this.plans[k], resize, label: `${this.routeLabel(k)} inputs`, release: same ? undefined : () => net.dispose() };
  }

  override gateResize(): [number, number] | undefined {
    const [h, w] = this.sizes[0];
    return h === this.inShape[0] && w === this.inShape[1] ? undefined : [h, w];
  }

  protected override gateShape(inShape: Shape): Shape {
    return [...this.sizes[0], inShape[2]];
  }

  protected override gateInput(x: tf.Tensor): tf.Tensor {
    return this.resized(x, 0);
  }

  private resized(x: tf.Tensor, k: number): tf.Tensor {
    const [h, w] = this.sizes[k];
    return x.shape[1] === h && x.shape[2] === w ? x : tf.image.resizeBilinear(x as tf.Tensor4D, [h, w], false, true);
  }

  protected routeNets(): Network[] {
    return [this.net];
  }

  protected runRoute(k: number, x: tf.Tensor, ctx: RunContext): tf.Tensor {
    const inner: RunContext = { plan: this.plans[k], training: ctx.training, moments: ctx.moments };
    let sel = fullSel(this.net.inputShape[2]);
    let y = this.resized(x, k);
    for (const l of this.net.layers) ({ y, sel } = l.call(y, sel, inner));
    return y;
  }

  protected freezeRoute(k: number): FrozenOp[] {
    const [h, w] = this.sizes[k];
    const ops: FrozenOp[] = h === this.inShape[0] && w === this.inShape[1] ? [] : [{ op: 'resize', height: h, width: w }];
    let sel = fullSel(this.net.inputShape[2]);
    for (const l of this.net.layers as Layer[]) {
      ops.push(...l.freeze(sel, this.plans[k]));
      sel = l.outSel(sel, this.plans[k]);
    }
    return ops;
  }
}

layerClasses.register('ResolutionSwitch', ResolutionSwitch);
