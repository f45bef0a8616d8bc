import * as tf from '@tensorflow/tfjs-core';
// tfjs-core alone registers no gradients; the union package's Node bundle registers them all on the shared core.
import '@tensorflow/tfjs';
import { DynnError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import {
  activeGroupCount,
  checkGatingMode,
  depthNestedCounts,
  selectGroups,
  type GatingMode,
} from '../gating/gating.js';
import { fullSel } from '../layers/select.js';
import type { Layer } from '../layers/layer.js';
import type { BlockInfo, LayerCost, MixtureSink, MomentSink, Plan, Routing, Shape, Weight } from '../layers/types.js';
import { fuseOps, opTensors, Subnet, type FrozenOp } from './subnet.js';

/** What rebuilds a network: a registered model name and its arguments. */
export interface ModelConfig {
  model: string;
  args: Record<string, unknown>;
}

/** A named float32 array: the unit of checkpoints and weight transfer. */
export interface NamedArray {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Options for turning a utilization into a plan. */
export interface PlanOptions {
  /** Nested (default) or independent gating. */
  gating?: GatingMode;
  /** Random source for independent gating; required for it. */
  rng?: Rng;
}

/** Cost of a network at one operating point. */
export interface CostReport {
  u: number;
  macs: number;
  /** 2 x MACs (DTNN Appendix A.1). */
  flops: number;
  /** Active parameters. */
  params: number;
  layers: LayerCost[];
}

function collectBlocks(layers: Layer[]): BlockInfo[] {
  return layers.flatMap((l) => {
    const b = l.block();
    return [...(b ? [b] : []), ...collectBlocks(l.plannedChildren())];
  });
}

/** Every layer of `layers`, composites' children included, each before its children. */
export function allLayers(layers: Layer[]): Layer[] {
  return layers.flatMap((l) => [l, ...allLayers(l.children())]);
}

/**
 * A throttleable network: layers built at full width, run at any operating point by slicing. The plan
 * (which groups and blocks run) travels with each call; the network holds no global operating state.
 */
export class Network {
  readonly outputShape: Shape;
  private readonly blockList: BlockInfo[];

  constructor(
    /** How to rebuild this network (registry name and arguments). */
    readonly config: ModelConfig,
    /** Per-sample input shape, NHWC. */
    readonly inputShape: Shape,
    readonly layers: Layer[],
    seed = 0,
  ) {
    let shape = inputShape;
    for (const l of layers) shape = l.build(shape, seed);
    this.outputShape = shape;
    this.blockList = collectBlocks(layers);
    const names = new Set<string>();
    for (const w of this.weights()) {
      if (names.has(w.name)) throw new DynnError(`duplicate weight name ${w.name}`);
      names.add(w.name);
    }
  }

  get numClasses(): number {
    return this.outputShape[0];
  }

  /** The throttleable units, in network order. */
  blocks(): BlockInfo[] {
    return this.blockList;
  }

  /** Operating levels: active groups for widthwise networks, active blocks for depth-gated ones. */
  get numLevels(): number {
    const width = this.blockList.filter((b) => b.kind === 'width') as { groups: number }[];
    if (width.length) return Math.max(...width.map((b) => b.groups)) + 1;
    return this.blockList.length + 1;
  }

  /** The level a utilization runs at (the BatchNorm statistics row). */
  levelOf(u: number): number {
    const width = this.blockList.filter((b) => b.kind === 'width') as { groups: number }[];
    if (width.length) return activeGroupCount(u, Math.max(...width.map((b) => b.groups)));
    // No throttleable unit (dynamic parameters, SE): one level.
    if (this.blockList.length === 0) return 0;
    return activeGroupCount(u, this.blockList.length, 0);
  }

  /** One utilization per level, the smallest-cost representative (1 for the top level). */
  levelUtilizations(): number[] {
    const n = this.numLevels;
    const width = this.blockList.some((b) => b.kind === 'width');
    const us: number[] = [];
    for (let level = width ? 1 : 0; level < n; level++) us.push(level === n - 1 ? 1 : Math.max(level, 0.5) / n);
    return us;
  }

  /** The plan for utilization u: d = min(D, floor(u*(D+1))) groups per widthwise block, depth-nested blocks. */
  plan(u: number, options: PlanOptions = {}): Plan {
    const gating = options.gating ?? 'nested';
    checkGatingMode(gating);
    const groups = new Map<string, Int32Array>();
    const depth = new Map<string, boolean>();
    const depthBlocks = this.blockList.filter((b) => b.kind === 'depth') as { name: string; stage: number }[];
    for (const b of this.blockList) {
      if (b.kind === 'width') groups.set(b.name, selectGroups(b.groups, activeGroupCount(u, b.groups), gating, options.rng));
    }
    if (depthBlocks.length) {
      if (gating === 'nested') {
        const stages: number[] = [];
        for (const b of depthBlocks) stages[b.stage] = (stages[b.stage] ?? 0) + 1;
        const counts = depthNestedCounts(Array.from(stages, (n) => n ?? 0), u);
        const seen = stages.map(() => 0);
        for (const b of depthBlocks) depth.set(b.name, seen[b.stage]++ < counts[b.stage]);
      } else {
        const d = activeGroupCount(u, depthBlocks.length, 0);
        const on = new Set(selectGroups(depthBlocks.length, d, gating, options.rng));
        depthBlocks.forEach((b, i) => depth.set(b.name, on.has(i)));
      }
    }
    return { u, groups, depth, level: this.levelOf(u) };
  }

  /** Throws a clear error unless x is a batch of this network's inputs. */
  checkInput(x: tf.Tensor): void {
    const want = this.inputShape;
    if (x.rank !== want.length + 1 || want.some((n, i) => x.shape[i + 1] !== n)) {
      throw new DynnError(`input shape [${x.shape}] does not match the model's [batch, ${want.join(', ')}]`);
    }
  }

  /**
   * Class scores for a batch at one operating point. Call inside `tf.tidy` (training needs the
   * intermediate tensors for gradients).
   */
  forward(x: tf.Tensor, plan: Plan, options: { training?: boolean; moments?: MomentSink; routing?: Routing; mixtures?: MixtureSink } = {}): tf.Tensor2D {
    this.checkInput(x);
    const ctx = { plan, training: options.training ?? false, moments: options.moments, routing: options.routing, mixtures: options.mixtures };
    let sel = fullSel(this.inputShape[this.inputShape.length - 1]);
    let y = x;
    for (const l of this.layers) ({ y, sel } = l.call(y, sel, ctx));
    return y as tf.Tensor2D;
  }

  /** Inference: class scores at utilization u (or a plan), as a new tensor the caller disposes. */
  predict(x: tf.Tensor, at: number | Plan, options: PlanOptions = {}): tf.Tensor2D {
    const plan = typeof at === 'number' ? this.plan(at, options) : at;
    return tf.tidy(() => this.forward(x, plan));
  }

  /**
   * The fixed-size sub-network of one operating point, BatchNorm folded and activations fused: the fast
   * inference path (and what export writes). It holds copies of the weights; dispose it when done.
   */
  subnet(at: number | Plan, options: PlanOptions = {}): Subnet {
    const plan = typeof at === 'number' ? this.plan(at, options) : at;
    let ops: FrozenOp[] = [];
    const kept = tf.tidy(() => {
      let sel = fullSel(this.inputShape[this.inputShape.length - 1]);
      const raw: FrozenOp[] = [];
      for (const l of this.layers) {
        raw.push(...l.freeze(sel, plan));
        sel = l.outSel(sel, plan);
      }
      ops = fuseOps(raw);
      return opTensors(ops);
    });
    if (kept.length !== opTensors(ops).length) throw new DynnError('internal: subnet tensors were not kept');
    return new Subnet(plan, this.inputShape, ops);
  }

  /** Active output channels (units) of each top-level layer at utilization u (or a plan), by layer name. */
  channels(at: number | Plan): Map<string, number> {
    const plan = typeof at === 'number' ? this.plan(at) : at;
    const out = new Map<string, number>();
    let sel = fullSel(this.inputShape[this.inputShape.length - 1]);
    for (const l of this.layers) {
      sel = l.outSel(sel, plan);
      out.set(l.name, sel.count);
    }
    return out;
  }

  /** MACs, FLOPs and active parameters at utilization u (or a plan), per layer and in total. */
  cost(at: number | Plan, options: PlanOptions = {}): CostReport {
    const plan = typeof at === 'number' ? this.plan(at, options) : at;
    let sel = fullSel(this.inputShape[this.inputShape.length - 1]);
    const layers: LayerCost[] = [];
    for (const l of this.layers) {
      layers.push(...l.cost(sel, plan));
      sel = l.outSel(sel, plan);
    }
    const macs = layers.reduce((a, c) => a + c.macs, 0);
    const params = layers.reduce((a, c) => a + c.params, 0);
    return { u: plan.u, macs, flops: 2 * macs, params, layers };
  }

  /** Whether gates inside the network decide per sample (a dynamic model): some cost is a gate's. */
  get gated(): boolean {
    return this.cost(1).layers.some((c) => c.gate);
  }

  /**
   * The MACs that per-sample decisions split: `fixed`, what every sample runs at the plan (the layers no
   * gate decides on), and `backbone`, the whole network at u = 1 with nothing skipped and no gate (the
   * denominator of a dynamic model's FLOPs ratio). A sample's executed MACs are `fixed` plus what its gated
   * blocks report through `Routing.spend`.
   */
  routedMacs(at: number | Plan = 1, options: PlanOptions = {}): { fixed: number; backbone: number } {
    const sum = (cs: LayerCost[]) => cs.reduce((a, c) => a + c.macs, 0);
    return { fixed: sum(this.cost(at, options).layers.filter((c) => !c.routed)), backbone: sum(this.cost(1).layers.filter((c) => !c.gate)) };
  }

  /**
   * The largest batch, up to `requested`, whose forward pass keeps under `budget` bytes of activations when
   * every layer's output, composites' included, is held to the end (as inside one `tf.tidy`): the batch of
   * evaluation and calibration passes. A DenseNet's concatenations hold far more than a VGG's (densenet41 on
   * 28x28 images about 25 MB a sample), and the WebAssembly engine has 4 GB in all.
   */
  batchFor(requested: number, budget = 2 ** 30): number {
    const perSample = 4 * allLayers(this.layers).reduce((a, l) => a + l.outShape.reduce((p, d) => p * d, 1), 0);
    return Math.max(1, Math.min(requested, Math.floor(budget / Math.max(1, perSample))));
  }

  /** All weights with their dotted names, trainable and not, in a fixed order. */
  weights(): Weight[] {
    return this.layers.flatMap((l) => l.weights());
  }

  /** The trainable variables, in the order of `weights()`. */
  trainableWeights(): Weight[] {
    return this.weights().filter((w) => w.trainable);
  }

  /** A copy of every weight as named float32 arrays (for checkpoints and workers). */
  getWeights(): NamedArray[] {
    return this.weights().map((w) => ({
      name: w.name,
      shape: w.variable.shape.slice(),
      data: (w.variable.dataSync() as Float32Array).slice(),
    }));
  }

  /** Loads named arrays into the weights; names and shapes must match exactly. */
  setWeights(arrays: NamedArray[]): void {
    const byName = new Map(arrays.map((a) => [a.name, a]));
    for (const w of this.weights()) {
      const a = byName.get(w.name);
      if (!a) throw new DynnError(`no value for weight ${w.name}`);
      if (a.shape.join() !== w.variable.shape.join()) {
        throw new DynnError(`weight ${w.name} has shape [${a.shape}], the model needs [${w.variable.shape}]`);
      }
      tf.tidy(() => w.variable.assign(tf.tensor(a.data, a.shape)));
    }
  }

  /** Frees what layers keep beside the weights (a mixture's stacked experts); they rebuild it when next run. */
  releaseCaches(): void {
    const release = (l: Layer): void => {
      l.releaseCaches();
      l.children().forEach(release);
    };
    this.layers.forEach(release);
  }

  /** Frees every weight and every cache. */
  dispose(): void {
    this.releaseCaches();
    for (const w of this.weights()) w.variable.dispose();
  }
}

/** A plan as plain data, to send to a worker thread or store as JSON. */
export interface PlanData {
  u: number;
  groups: [string, number[]][];
  depth: [string, boolean][];
  level: number;
}

/** The plan of a network with no throttleable block (a controller, a gate MLP): everything runs. */
export function staticPlan(): Plan {
  return { u: 1, groups: new Map(), depth: new Map(), level: 0 };
}

export function planToData(plan: Plan): PlanData {
  return {
    u: plan.u,
    groups: [...plan.groups].map(([k, v]) => [k, Array.from(v)]),
    depth: [...plan.depth],
    level: plan.level,
  };
}

export function planFromData(data: PlanData): Plan {
  return {
    u: data.u,
    groups: new Map(data.groups.map(([k, v]) => [k, Int32Array.from(v)])),
    depth: new Map(data.depth),
    level: data.level,
  };
}
