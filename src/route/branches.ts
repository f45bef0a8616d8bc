import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { InputTooSmallError, fullSel, layerClasses, layerFromConfig } from '../layers/index.js';
import type { Plan, RunContext, Shape } from '../layers/index.js';
import type { FrozenOp } from '../models/subnet.js';
import { Network } from '../models/network.js';
import { models, resolveModelArgs } from '../models/registry.js';
import { WholeSwitch, type SwitchRoute, type WholeSwitchArgs } from './whole.js';

/** One branch of a gated multi-branch network: a registered model and the arguments it differs in. */
export interface BranchSpec {
  model: string;
  args: Record<string, number | number[]>;
}

/** Model arguments a branch may set besides its model's own defaults. */
const COMMON_KEYS = ['groups', 'inputShape', 'numClasses', 'seed'];

/**
 * Reads a branch list (`--branches`): branches separated by commas, each a registered model name with
 * `:key=value` arguments, a list value continuing over the commas that follow it until the next model name
 * or key. `vgg-w:widths=8,8,16,16:hidden=64,vgg-w,resnet-d:width=8` is three branches. An array of
 * `BranchSpec` (a run's recorded config) is checked and returned as it is.
 */
export function parseBranches(list: unknown): BranchSpec[] {
  const specs: BranchSpec[] = [];
  if (Array.isArray(list)) {
    for (const b of list) {
      if (!b || typeof b !== 'object' || typeof (b as BranchSpec).model !== 'string') throw new DynnError(`a branch must be {model, args}, got ${JSON.stringify(b)}`);
      specs.push(checkSpec({ model: (b as BranchSpec).model, args: { ...((b as BranchSpec).args ?? {}) } }));
    }
  } else {
    if (typeof list !== 'string' || list.trim() === '') throw new DynnError('--branches needs a list of models, e.g. vgg-w:widths=8,8,16,16,vgg-w');
    let key: string | null = null;
    const put = (v: string) => {
      const b = specs[specs.length - 1];
      const n = Number(v);
      if (v.trim() === '' || !Number.isFinite(n)) throw new DynnError(`--branches: ${b.model}:${key}=${v} is not a number`);
      const had = b.args[key!];
      b.args[key!] = had === undefined ? n : [...(Array.isArray(had) ? had : [had]), n];
    };
    for (const token of list.split(',')) {
      const [head, ...pairs] = token.trim().split(':');
      if (models.has(head)) {
        specs.push({ model: head, args: {} });
        key = null;
      } else if (key !== null && head !== '' && Number.isFinite(Number(head))) put(head);
      else throw new DynnError(`--branches: unknown model "${head}"; expected one of ${models.list().filter((m) => m !== 'multi-branch').join(', ')}`);
      for (const pair of pairs) {
        const at = pair.indexOf('=');
        if (at < 1) throw new DynnError(`--branches: "${pair}" after ${head} is not key=value`);
        key = pair.slice(0, at);
        if (key in specs[specs.length - 1].args) throw new DynnError(`--branches: ${key} is set twice for one branch`);
        put(pair.slice(at + 1));
      }
    }
    specs.forEach(checkSpec);
  }
  if (specs.length < 2) throw new DynnError(`a multi-branch network needs at least 2 branches, got ${specs.length}`);
  return specs;
}

/** Refuses a branch whose model is not a plain registered one or whose keys that model does not take. */
function checkSpec(spec: BranchSpec): BranchSpec {
  if (spec.model === 'multi-branch') throw new DynnError('a branch cannot itself be a multi-branch network');
  const def = models.get(spec.model);
  const keys = [...Object.keys(def.defaults), ...COMMON_KEYS];
  for (const [k, v] of Object.entries(spec.args)) {
    if (!keys.includes(k)) throw new DynnError(`--branches: ${spec.model} takes no argument "${k}"; expected one of ${keys.join(', ')}`);
    const list = Array.isArray(def.defaults[k]) || k === 'inputShape';
    if (list !== Array.isArray(v)) spec.args[k] = list ? [v as number] : (v as number[])[0];
    if (!list && Array.isArray(v) && v.length > 1) throw new DynnError(`--branches: ${spec.model}'s ${k} is one number, got ${v.join(',')}`);
  }
  return spec;
}

/** What a multi-branch switch is built from. */
export interface MultiBranchArgs extends WholeSwitchArgs {
  /** The branches, cheapest first. */
  branches: BranchSpec[];
}

/**
 * A gated multi-branch network (the overview's first family): B independent networks of increasing cost and
 * one cheap gate on the input that picks a branch per sample; each branch runs only on its samples. Branch i's
 * weights are `<name>.b<i>.*`, so two branches of one model do not share any.
 */
export class MultiBranch extends WholeSwitch<MultiBranchArgs> {
  readonly className = 'MultiBranch';
  private nets: Network[] = [];
  private plans: Plan[] = [];

  get routes(): number {
    return this.args.branches.length;
  }

  protected buildRoutes(inShape: Shape): Shape {
    this.nets = this.args.branches.map((spec, i) => buildBranch(spec, i, `${this.name}.b${i}`, inShape, this.args.numClasses, this.seed));
    this.plans = this.nets.map((n) => n.plan(1));
    this.routeCosts = this.nets.map((n, i) => n.cost(this.plans[i]).layers);
    const macs = this.routeCosts.map((c) => c.reduce((a, l) => a + l.macs, 0));
    if (macs.some((m, i) => i > 0 && m <= macs[i - 1])) {
      const list = this.args.branches.map((b, i) => `${b.model} ${(2 * macs[i] / 1e6).toFixed(2)} MFLOPs`).join(', ');
      throw new DynnError(`branches must be listed cheapest first, each costing more than the one before: ${list}`);
    }
    return this.nets[0].outputShape;
  }

  protected routeNets(): Network[] {
    return this.nets;
  }

  protected runRoute(k: number, x: tf.Tensor, ctx: RunContext): tf.Tensor {
    return this.nets[k].forward(x, this.plans[k], { training: ctx.training, moments: ctx.moments });
  }

  exportRoute(k: number): SwitchRoute {
    return { layers: this.nets[k].layers, plan: this.plans[k], label: `branch ${this.routeLabel(k)}` };
  }

  protected freezeRoute(k: number): FrozenOp[] {
    const net = this.nets[k];
    let sel = fullSel(net.inputShape[2]);
    const ops: FrozenOp[] = [];
    for (const l of net.layers) {
      ops.push(...l.freeze(sel, this.plans[k]));
      sel = l.outSel(sel, this.plans[k]);
    }
    return ops;
  }

  routeLabel(k: number): string {
    const { model, args } = this.args.branches[k];
    const set = Object.entries(args).map(([key, v]) => `${key}=${Array.isArray(v) ? v.join(',') : v}`);
    return [model, ...set].join(':');
  }

  /** Branch k's network (its layers are this switch's). */
  branch(k: number): Network {
    return this.nets[k];
  }
}

layerClasses.register('MultiBranch', MultiBranch);

/**
 * Branch `i` as its own network on the switch's input, its layers renamed under `prefix`. A branch that says
 * it takes other inputs or classes than the model's, or that cannot take these inputs, is refused here,
 * before any training.
 */
function buildBranch(spec: BranchSpec, i: number, prefix: string, inShape: Shape, numClasses: number, seed: number): Network {
  const what = `branch ${i + 1} (${spec.model})`;
  const { inputShape, numClasses: classes, ...rest } = spec.args as Record<string, unknown>;
  if (inputShape !== undefined && (inputShape as number[]).join('x') !== inShape.join('x')) {
    throw new DynnError(`${what} takes ${(inputShape as number[]).join('x')} inputs; the multi-branch network takes ${inShape.join('x')} (the data set's), as must every branch`);
  }
  if (classes !== undefined && classes !== numClasses) {
    throw new DynnError(`${what} predicts ${classes} classes; the multi-branch network predicts ${numClasses} (the data set's), as must every branch`);
  }
  // A branch runs whole (its own full plan): one group, unless the list says otherwise.
  const args = resolveModelArgs(spec.model, { groups: 1, ...rest, inputShape: inShape, numClasses, seed: (rest.seed as number | undefined) ?? seed });
  const layers = models.get(spec.model).layers(args as never);
  const renamed = layers.map((l) => layerFromConfig({ ...l.getConfig(), name: `${prefix}.${l.name}` }));
  try {
    const net = new Network({ model: spec.model, args }, inShape, renamed, args.seed as number);
    if (net.outputShape.join() !== String(numClasses)) throw new DynnError(`${what} gives [${net.outputShape}], not ${numClasses} class scores (a branch is a plain classifier)`);
    return net;
  } catch (err) {
    if (err instanceof InputTooSmallError) throw new DynnError(`${what} cannot take ${inShape.join('x')} inputs: ${err.message}`, { cause: err });
    throw err;
  }
}
