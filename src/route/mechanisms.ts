import { DynnError } from '../util/errors.js';
import type { GateEstimator } from '../layers/types.js';
import { Registry } from '../util/registry.js';
import type { Layer } from '../layers/index.js';
import type { EfficiencyTarget, RoutingState } from './context.js';
import { DGGateNet, GateNet, PooledGate, SkipGate } from './gates.js';

/** What a gate is built from: the block it decides for tells it how many groups and how wide. */
export interface GateArgs {
  /** One output per group of channels decided on. */
  outputs: number;
  /** Channels of the gate's hidden layers. */
  width: number;
  /** Factor on the logits (default 1). */
  logitScale?: number;
}

/**
 * A mechanism's efficiency term, from its entry (the training step adds it without knowing which it is):
 * what the target measures, the option that sets it, and the term itself.
 */
export interface EfficiencyTerm {
  /** The training option (and its CLI flag) that sets the target. */
  option: 'flopsTarget' | 'skipTarget';
  flag: string;
  /** What the target is, for messages: "the FLOPs target", "the skip target". */
  what: string;
  /**
   * Adds `weight * deviation^2` to the pass's losses (soft mode) from what `routing` recorded; `macs` are the
   * network's `routedMacs`. Returns the measured quantity's value, or NaN when nothing was recorded.
   */
  add(routing: RoutingState, macs: { fixed: number; backbone: number }, target: EfficiencyTarget): number;
  /**
   * Whether the trainer fits each gate's bias after every epoch so that, with deterministic gates on training
   * samples, the gate executes the target fraction (`fitGateRates`): the target then holds at inference,
   * not only under training's sampled decisions.
   */
  fitsGates: boolean;
}

/** The ACS term: the batch's mean expected executed FLOPs ratio, gates included, against the target. */
const flopsTerm: EfficiencyTerm = {
  option: 'flopsTarget',
  flag: '--flops-target',
  what: 'the FLOPs target',
  add: (routing, macs, target) => routing.addEfficiencyLoss(macs.fixed, macs.backbone, target),
  fitsGates: false,
};

/**
 * ConvNet-AIG's target loss (its Eq. 4): each gate's execution rate over the batch against the target,
 * squared, averaged over gates. The rate is the sampled decisions' (what training executes) with the
 * gradient of their surrogate (straight-through).
 */
const rateTerm: EfficiencyTerm = {
  option: 'skipTarget',
  flag: '--skip-target',
  what: 'the skip target (the mean fraction of gated blocks executed)',
  add: (routing, _macs, target) => routing.addRateLoss(target),
  fitsGates: true,
};

/**
 * A per-sample mechanism: a gate and how its models train. Registering one is all a new mechanism needs;
 * the blocks that consult a gate, the dispatch, the losses and the cost accounting are shared.
 */
export interface Mechanism {
  /** One line for `dynn models` and the docs. */
  description: string;
  /** The gate of one gated block, named `name` (its weights are `<name>.*`). */
  gate(name: string, args: GateArgs): Layer;
  /** Gate width when the model does not set `gateWidth`: from the block's width (its input channels). */
  defaultWidth(channels: number): number;
  /**
   * Whether it decides whole residual blocks (run the block or only its shortcut: one group) instead of
   * groups of inner channels. Models then gate only the blocks that keep their shape; downsampling blocks
   * always run (ConvNet-AIG, SkipNet).
   */
  skipsBlocks?: boolean;
  /** Its efficiency term (the target it pulls toward and how). */
  efficiency: EfficiencyTerm;
  /** Training defaults: the efficiency term's target and weight, and the decisions' gradient estimator. */
  defaults: { target: number; efficiencyWeight: number; estimator?: GateEstimator };
}

/** Per-sample mechanisms by name (`dynn train --dynamic NAME`). */
export const mechanisms = new Registry<Mechanism>('mechanism');

mechanisms.register('acs-gn', {
  description: 'adaptive channel skipping with a gating network per block (1x1, 3x3/2, 3x3, GAP, FC): nested groups of inner channels per sample',
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // A quarter of the block's width keeps the gate's cost a few percent of the block's (ACS's 32-wide gates cost 0.29 of ResNet38).
  defaultWidth: (channels) => Math.max(4, Math.floor(channels / 4)),
  efficiency: flopsTerm,
  defaults: { target: 0.5, efficiencyWeight: 4 },
});

mechanisms.register('acs-dg', {
  description:
    'adaptive channel skipping with a DGConv gating network per block (1x1, DGConv 3x3/2, SE, DGConv 3x3, GAP, FC): acs-gn whose gate convolutions learn their grouping',
  gate: (name, a) => new DGGateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // acs-gn's quarter of the block's width, at the nearest power of two (DGConv's channel count).
  defaultWidth: (channels) => Math.max(4, 2 ** Math.round(Math.log2(Math.max(1, channels / 4)))),
  efficiency: flopsTerm,
  defaults: { ...mechanisms.get('acs-gn').defaults },
});

mechanisms.register('skip', {
  description:
    'layer skipping, ConvNet-AIG gates (GAP, FC, ReLU, FC, Gumbel straight-through): per sample, each residual block that keeps its shape runs or is the identity; a target execution rate per block',
  skipsBlocks: true,
  gate: (name, a) => new PooledGate(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // ConvNet-AIG's FC layer is 16 wide on CIFAR's 16-64-channel blocks: a quarter of the block, at least 8.
  defaultWidth: (channels) => Math.max(8, Math.floor(channels / 4)),
  efficiency: rateTerm,
  // ConvNet-AIG's two logits under Gumbel-softmax at temperature 1 with straight-through are one logit (their
  // difference) with logistic noise: the gumbel estimator on a single group, not a path of its own.
  defaults: { target: 0.6, efficiencyWeight: 2, estimator: 'gumbel' },
});

mechanisms.register('skip-ff', {
  description:
    'layer skipping, SkipNet feed-forward gates (FFGate-I: max pool, 3x3 conv, 3x3 conv stride 2, GAP, FC): per sample, each residual block that keeps its shape runs or is the identity; a target execution rate per block',
  skipsBlocks: true,
  gate: (name, a) => new SkipGate(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // SkipNet's FFGate-I is 10 channels wide on CIFAR.
  defaultWidth: () => 10,
  efficiency: rateTerm,
  defaults: { ...mechanisms.get('skip').defaults },
});

/** The name of a gated block's gate: its weights are `<block>.gate.*`. */
export const gateName = (block: string): string => `${block}.gate`;

/** Whether a weight belongs to a gate (a static backbone's run has none; `--init` lets gates start fresh). */
export const isGateWeight = (weight: string): boolean => weight.includes('.gate.');

/** Checks the settings of a dynamic run before any training: target in (0, 1], weight >= 0. */
export function checkEfficiency(target: number, weight: number, what = 'the FLOPs target'): void {
  if (!(target > 0 && target <= 1)) throw new DynnError(`${what} must be in (0, 1], got ${target}`);
  if (!(weight >= 0 && Number.isFinite(weight))) throw new DynnError(`the efficiency weight must be a non-negative number, got ${weight}`);
}
