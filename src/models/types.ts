import type { Layer } from '../layers/index.js';

/** Arguments every model takes; each model adds its own. Unset fields take the model's defaults. */
export interface ModelArgs {
  /** Per-sample input shape [H, W, C] (default [28, 28, 1]; [32, 32, 3] for CIFAR-10). */
  inputShape?: number[];
  /** Number of classes (default 10). */
  numClasses?: number;
  /** Groups D of each throttleable block (default 8; depth-gated models ignore it). */
  groups?: number;
  /** Use BatchNorm after convolutions (default true). */
  batchNorm?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
  /** A registered per-sample mechanism (`acs-gn`, `acs-dg`): gates inside the network decide per input. */
  dynamic?: string;
  /** Channels of each gate's hidden layers (default: the mechanism's). */
  gateWidth?: number;
  /** Factor on each gate's logits (default 1): larger makes the gates learn faster than the backbone. */
  gateScale?: number;
  /** How the gates decide (a registered decision form: `nested`, the default, or `channel`, masked). */
  decisions?: string;
  /** `--dynamic width`: the widths K a sample can take (default 4). */
  widthRoutes?: number;
  /**
   * Round each level's active channels of the throttled layers to a multiple of this (`roundChannels`), the
   * same in training, evaluation, FLOPs and export: 16 fills ONNX Runtime's AVX-512 convolution blocks, so
   * every level's time follows its FLOPs (default: absent, 1, the group counts exactly).
   */
  channelMultiple?: number;
  /**
   * vgg-w: throttle the stem's output channels in place of c2's, so c2 keeps its full output and only its input
   * shrinks: ONNX Runtime's convolution is about 1.4x slower per FLOP at one block of 16 output channels than at
   * two, and c2, the costliest layer, ran one block at the cheap levels (default: absent, c2 throttled).
   */
  throttleStem?: boolean;
  /**
   * vgg-w: throttle the stem's output channels and c2's: the widest range of levels (with `channelMultiple` 16
   * the cheapest at 0.15 of the FLOPs, against 0.27 with throttleStem and 0.25 with c2 alone), for a server that sheds load
   * at the cost of c2 running one slower block of 16 channels there (default: absent, c2 throttled).
   */
  throttleBoth?: boolean;
  /** Dynamic-parameter models: expert kernels E per conditional convolution (default 4). */
  experts?: number;
  /** Dynamic-parameter models: `sigmoid` (CondConv) or `softmax` (dynamic convolution) mixing weights. */
  routing?: string;
  /** Dynamic-parameter models with softmax routing: the temperature (default 1). */
  temperature?: number;
  /** Dynamic-parameter models: epochs over which the temperature anneals to 1 (default 0). */
  annealEpochs?: number;
  [key: string]: unknown;
}

/** A model variant: fills in defaults and returns the layers. */
export interface ModelDef {
  /** One line for `dynn info` and the docs. */
  description: string;
  defaults: ModelArgs;
  /** Whether `args.dynamic` (a registered mechanism) puts gates inside it that decide per sample. */
  dynamic?: boolean;
  /**
   * Where a width switch (`--dynamic width`) goes: the last layer of its unthrottled first stage (the stem),
   * whose output the gate reads; everything after it is throttleable. Absent: no width switch fits it.
   */
  switchAfter?: string;
  /** Whether its widthwise layers take `channelMultiple`. */
  channelMultiple?: boolean;
  /** Whether it takes `throttleStem` and `throttleBoth`. */
  throttleStem?: boolean;
  /** Whether its convolutions are conditional (CondConv): it takes `experts`, `routing`, `temperature`, `annealEpochs`. */
  condconv?: boolean;
  /** Whether it has residual blocks that keep their shape, which a mechanism that skips blocks can gate (`skip`). */
  skippable?: boolean;
  layers(args: Required<Pick<ModelArgs, 'inputShape' | 'numClasses' | 'groups' | 'batchNorm'>> & ModelArgs): Layer[];
}
