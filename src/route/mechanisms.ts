import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';
import type { Layer } from '../layers/index.js';
import { DGGateNet, GateNet } from './gates.js';

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
  /** Training defaults: the mean executed FLOPs ratio to reach and the weight of the efficiency term. */
  defaults: { flopsTarget: number; efficiencyWeight: number };
  /** Whether the gate trains with the routes it picks between frozen (whole networks trained first: `WholeSwitch`). */
  frozenRoutes?: boolean;
  /**
   * Weight of DS-Net's supervised gate loss at a switch (`SwitchOptions.supervise`: each sample's target is
   * the cheapest route that classifies it right); 0 or absent: the efficiency term and the task alone.
   */
  gateLoss?: number;
  /**
   * The model this mechanism needs (`multi-branch` for `branch`), when it is not a gate inside any model
   * registered `dynamic`; or, with `wrap`, none: the mechanism wraps whatever model it is given.
   */
  model?: string;
  /** Builds the whole network around a registered model (adaptive resolution runs any model at K resolutions). */
  wrap?: (model: string, args: Record<string, unknown>) => Layer[];
  /**
   * Whether its one gate sits at a width switch after the network's first stage and picks the width of the
   * rest (DS-Net, `route/width.ts`) instead of one gate per unit. Its gate trains with the supernet frozen.
   */
  widthSwitch?: boolean;
}

/** Per-sample mechanisms by name (`dynn train --dynamic NAME`). */
export const mechanisms = new Registry<Mechanism>('mechanism');

mechanisms.register('acs-gn', {
  description: 'adaptive channel skipping with a gating network per block (1x1, 3x3/2, 3x3, GAP, FC): nested groups of inner channels per sample',
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // A quarter of the block's width keeps the gate's cost a few percent of the block's (ACS's 32-wide gates cost 0.29 of ResNet38).
  defaultWidth: (channels) => Math.max(4, Math.floor(channels / 4)),
  defaults: { flopsTarget: 0.5, efficiencyWeight: 4 },
});

mechanisms.register('acs-dg', {
  description:
    'adaptive channel skipping with a DGConv gating network per block (1x1, DGConv 3x3/2, SE, DGConv 3x3, GAP, FC): acs-gn whose gate convolutions learn their grouping',
  gate: (name, a) => new DGGateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale }),
  // acs-gn's quarter of the block's width, at the nearest power of two (DGConv's channel count).
  defaultWidth: (channels) => Math.max(4, 2 ** Math.round(Math.log2(Math.max(1, channels / 4)))),
  defaults: { ...mechanisms.get('acs-gn').defaults },
});

mechanisms.register('branch', {
  description:
    'gated multi-branch network (--model multi-branch --branches ...): an acs-gn gate on the input picks one branch network per sample; branches train first (--pretrain-epochs), the gate after with them frozen',
  // The routes are frozen while it trains, so the gate alone learns: a logit scale of 10 lets it move in an epoch.
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale ?? 10 }),
  // A gate this narrow costs about 5% of vgg-w:widths=8,8,16,16 and under 1% of vgg-w on 28x28 inputs.
  defaultWidth: () => 4,
  defaults: { flopsTarget: 0.5, efficiencyWeight: 4 },
  frozenRoutes: true,
  // The efficiency term alone pushed every sample to the smallest branch (target 0.3) or picked branches no
  // better than chance against the cascade (78.4% at 0.53 against 84.4% at 0.55); the gate then learns which
  // branch each sample needs.
  gateLoss: 1,
  model: 'multi-branch',
});

mechanisms.register('width', {
  description:
    'dynamic width (DS-Net): one gate after the first stage picks per sample one of K widths of the rest of the network, whose samples run the sliced sub-network as one batch; the supernet trains first (sandwich rule or u per batch), then the gate with it frozen',
  // The gate trains alone on a frozen supernet: it starts undecided (logits 0, not open) and its logits at
  // 10x (see `GateNetArgs.logitScale`), so one short epoch moves it.
  gate: (name, a) => new GateNet(name, { width: a.width, outputs: a.outputs, logitScale: a.logitScale ?? 10, openLogit: 0 }),
  defaultWidth: (channels) => Math.max(4, Math.floor(channels / 4)),
  // DS-Net's gate loss pulls most samples to the narrowest width that is right; the complexity term, at a
  // larger weight than ACS's, holds the mean near the target.
  defaults: { flopsTarget: 0.5, efficiencyWeight: 8 },
  widthSwitch: true,
  frozenRoutes: true,
});

/** The name of a gated block's gate: its weights are `<block>.gate.*`. */
export const gateName = (block: string): string => `${block}.gate`;

/** Whether a weight belongs to a gate (a static backbone's run has none; `--init` lets gates start fresh). */
export const isGateWeight = (weight: string): boolean => weight.includes('.gate.');

/** Checks the settings of a dynamic run before any training: target in (0, 1], weight >= 0. */
export function checkEfficiency(target: number, weight: number): void {
  if (!(target > 0 && target <= 1)) throw new DynnError(`the FLOPs target must be in (0, 1], got ${target}`);
  if (!(weight >= 0 && Number.isFinite(weight))) throw new DynnError(`the efficiency weight must be a non-negative number, got ${weight}`);
}
