import { DynnError } from '../util/errors.js';
import type { GateEstimator } from '../layers/types.js';
import { Registry } from '../util/registry.js';
import type { Layer } from '../layers/index.js';
import type { EfficiencyTarget, RoutingState } from './context.js';
import { DGGateNet, GateNet, PooledGate, SkipGate, SpatialGate } from './gates.js';
import { MoeRouter } from './router.js';

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
  option: 'flopsTarget' | 'widthTarget' | 'skipTarget' | 'spatialTarget';
  flag: string;
  /** What the target is, for messages: "the FLOPs target", "the skip target". */
  what: string;
  /**
   * Adds `weight * deviation^2` to the pass's losses (soft mode) from what `routing` recorded; `macs` are the
   * network's `routedMacs`. Returns the measured quantity's value, or NaN when nothing was recorded.
   */
  add(routing: RoutingState, macs: { fixed: number; backbone: number }, target: EfficiencyTarget): number;
  /**
   * The registered gate fit (`train/fit.ts`) that sets the gates after each gated epoch so that the target
   * holds with deterministic decisions at the deployed threshold, not only under training's sampled ones;
   * absent: none (the target holds in expectation).
   */
  fit?: string;
  /** Whether the target is each gate's execution rate (1 - its skip rate), which training reports per epoch. */
  rate?: boolean;
}

/** The ACS term: the batch's mean expected executed FLOPs ratio, gates included, against the target. */
const flopsTerm: EfficiencyTerm = {
  option: 'flopsTarget',
  flag: '--flops-target',
  what: 'the FLOPs target',
  add: (routing, macs, target) => routing.addEfficiencyLoss(macs.fixed, macs.backbone, target),
};

/** DS-Net's complexity term: the ACS term, set by its own option (the mean FLOPs ratio, the gate included). */
const widthTerm: EfficiencyTerm = { ...flopsTerm, option: 'widthTarget', flag: '--width-target', what: 'the width target (the mean FLOPs ratio, the gate included)', fit: 'switch-target' };

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
  fit: 'gate-rates',
  rate: true,
};

/**
 * dynconv's sparsity criterion: each gated block's fraction of output positions computed over the batch
 * against the target, squared, averaged over blocks (ConvNet-AIG's rate term with positions for blocks).
 */
const spatialTerm: EfficiencyTerm = {
  option: 'spatialTarget',
  flag: '--spatial-target',
  what: 'the spatial target (the mean fraction of output positions each gated block computes)',
  add: rateTerm.add,
  // Each position's logit fitted as a block's is by the skip target: the fraction computed holds at the threshold.
  fit: 'gate-rates',
  rate: true,
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
  /**
   * Whether it decides, per sample, which output positions of a residual block that keeps its shape are
   * computed (dynconv: `route/spatial.ts`); its gate gives one logit per position. Like `skipsBlocks`,
   * downsampling blocks always run whole.
   */
  spatial?: boolean;
  /** Its efficiency term (the target it pulls toward and how). */
  efficiency: EfficiencyTerm;
  /** Training defaults: the efficiency term's target and weight, and the decisions' gradient estimator. */
  defaults: { target: number; efficiencyWeight: number; estimator?: GateEstimator };
  /** Whether the gate trains with the routes it picks between frozen (whole networks trained first: `WholeSwitch`). */
  frozenRoutes?: boolean;
  /**
   * Weight of DS-Net's supervised gate loss at a switch (`SwitchOptions.supervise`: each sample's target is
   * the cheapest route that classifies it right); 0 or absent: the efficiency term and the task alone.
   */
  gateLoss?: number;
  /**
   * The model this mechanism needs (`multi-branch` for `branch`), when it is not a gate inside any model
   * registered `dynamic`; or, with `wrapsModel`, none: the mechanism wraps whatever model it is given.
   */
  model?: string | readonly string[];
  /**
   * Whether the network is built around the registered model it is given (adaptive resolution runs any model
   * at K resolutions: `ResolutionSwitch`, which the zoo builds, as a layer that builds models must not be
   * imported by this registry).
   */
  wrapsModel?: boolean;
  /**
   * Whether its one gate sits at a width switch after the network's first stage and picks the width of the
   * rest (DS-Net, `route/width.ts`) instead of one gate per unit. Its gate trains with the supernet frozen.
   */
  widthSwitch?: boolean;
  /**
   * Whether its networks have no sub-network at a fixed plan (a mixture of experts: each sample runs its own
   * experts): they are evaluated with their gates deciding only, and export by segments only.
   */
  noSubnet?: boolean;
  /** Why its cost per sample is set by its settings, not learnt (a mixture's k): no efficiency target applies. */
  fixedCost?: string;
  /** What its masked baseline computes before the mask (default: every channel), for the sweep's line. */
  maskedWork?: string;
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

/**
 * What a gate picking whole networks at the input shares (a branch network, the network at a resolution): the
 * routes are frozen while it trains, so the gate alone learns, its logits at 10x so it moves in an epoch.
 */
const wholeNetworkGate: Omit<Mechanism, 'description'> = {
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale ?? 10 }),
  // A gate this narrow costs about 5% of vgg-w:widths=8,8,16,16 and under 1% of vgg-w on 28x28 inputs.
  defaultWidth: () => 4,
  efficiency: flopsTerm,
  defaults: { target: 0.5, efficiencyWeight: 4 },
  frozenRoutes: true,
  // The efficiency term alone pushed every sample to the smallest branch (target 0.3) or picked branches no
  // better than chance against the cascade (78.4% at 0.53 against 84.4% at 0.55); the gate then learns which
  // route each sample needs.
  gateLoss: 1,
};

mechanisms.register('branch', {
  maskedWork: 'the largest branch run on every sample',
  description:
    'gated multi-branch network (--model multi-branch --branches ...): an acs-gn gate on the input picks one branch network per sample; branches train first (--pretrain-epochs), the gate after with them frozen',
  ...wholeNetworkGate,
  model: 'multi-branch',
});

mechanisms.register('resolution', {
  maskedWork: 'every sample at the highest resolution',
  description:
    'adaptive resolution (--resolutions 28,21,14): an acs-gn gate on a glimpse at the smallest resolution picks the resolution each sample runs at; any model that pools globally (resnet-d, resnet38, densenet41)',
  ...wholeNetworkGate,
  wrapsModel: true,
});

mechanisms.register('width', {
  maskedWork: 'the full width on every sample',
  description:
    'dynamic width (DS-Net): one gate after the first stage picks per sample one of K widths of the rest of the network, whose samples run the sliced sub-network as one batch; the supernet trains first (sandwich rule or u per batch), then the gate with it frozen',
  // The gate trains alone on a frozen supernet: it starts undecided (logits 0, not open) and its logits at
  // 10x (see `GateNetArgs.logitScale`), so one short epoch moves it.
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale ?? 10, openLogit: 0 }),
  defaultWidth: (channels) => Math.max(4, Math.floor(channels / 4)),
  // DS-Net's gate loss pulls most samples to the narrowest width that is right; the complexity term, at a
  // larger weight than ACS's, holds the mean near the target.
  efficiency: widthTerm,
  defaults: { target: 0.5, efficiencyWeight: 8 },
  widthSwitch: true,
  frozenRoutes: true,
  gateLoss: 1,
});

mechanisms.register('skip', {
  maskedWork: 'every block computed',
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
  maskedWork: 'every block computed',
  description:
    'layer skipping, SkipNet feed-forward gates (FFGate-I: max pool, 3x3 conv, 3x3 conv stride 2, GAP, FC): per sample, each residual block that keeps its shape runs or is the identity; a target execution rate per block',
  skipsBlocks: true,
  gate: (name, a) => new SkipGate(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // SkipNet's FFGate-I is 10 channels wide on CIFAR.
  defaultWidth: () => 10,
  efficiency: rateTerm,
  defaults: { ...mechanisms.get('skip').defaults },
});

mechanisms.register('moe', {
  maskedWork: 'every expert run on every row',
  description:
    'sparse mixture of experts (--model vgg-moe, resnet-moe or mlp-moe, --experts E --top-k K --capacity-factor C): a router on the pooled input sends each sample to its k best of E experts (noisy top-k), each expert runs once on its rows, within its capacity',
  // The router's outputs are the experts' scores and noise scales (2E); it has no hidden layer.
  gate: (name, a) => new MoeRouter(name, { outputs: a.outputs }),
  defaultWidth: () => 0,
  // Its balance losses are the layer's own (`MoeBlock`); the FLOPs term never applies (`fixedCost`).
  efficiency: flopsTerm,
  fixedCost: 'a mixture runs k experts per sample, so its cost is set by --top-k (and --experts), not by a target',
  defaults: { target: 1, efficiencyWeight: 0 },
  model: ['vgg-moe', 'resnet-moe', 'mlp-moe'],
  noSubnet: true,
});

/** The models a mechanism is built into (none: it gates any model registered `dynamic`). */
export function mechanismModels(m: Mechanism): readonly string[] {
  return m.model === undefined ? [] : typeof m.model === 'string' ? [m.model] : m.model;
}
mechanisms.register('spatial', {
  maskedWork: 'every position computed',
  description:
    'spatially sparse convolution (dynconv): a 1x1 conv gate per residual block that keeps its shape picks, per sample, the output positions to compute (Gumbel straight-through); only those are computed (gathered 3x3 patches, one matrix product per conv), the rest pass through the residual; a target fraction of positions per block',
  spatial: true,
  gate: (name, a) => new SpatialGate(name, { logitScale: a.logitScale }),
  // No hidden layer: one 1x1 convolution to a logit per position.
  defaultWidth: () => 1,
  efficiency: spatialTerm,
  defaults: { target: 0.5, efficiencyWeight: 4, estimator: 'gumbel' },
});

/** Whether a mechanism gates only the residual blocks that keep their shape (whole, or position by position). */
export const gatesShapeKeeping = (m: Mechanism): boolean => m.skipsBlocks === true || m.spatial === true;

/** The name of a gated block's gate: its weights are `<block>.gate.*`. */
export const gateName = (block: string): string => `${block}.gate`;

/** Whether a weight belongs to a gate (a static backbone's run has none; `--init` lets gates start fresh). */
export const isGateWeight = (weight: string): boolean => weight.includes('.gate.');

/** Checks the settings of a dynamic run before any training: target in (0, 1], weight >= 0. */
export function checkEfficiency(target: number, weight: number, what = 'the FLOPs target'): void {
  if (!(target > 0 && target <= 1)) throw new DynnError(`${what} must be in (0, 1], got ${target}`);
  if (!(weight >= 0 && Number.isFinite(weight))) throw new DynnError(`the efficiency weight must be a non-negative number, got ${weight}`);
}
