import { DynnError } from '../util/errors.js';
import { BatchNorm, CondConv2D, Conv2D, Dense, DenseHead, DenseTransition, DenseUnit, Flatten, GlobalAvgPool, MaxPool, ReLU, ResidualBlock, ResNeXtBlock, SqueezeExcite } from '../layers/index.js';
import { InputTooSmallError, type Layer } from '../layers/index.js';
import type { ModelArgs, ModelDef } from './types.js';
import { Network } from './network.js';
import { GatedResidualBlock } from '../route/residual.js';
import { GatedDenseUnit } from '../route/dense.js';
import { gatesShapeKeeping, mechanisms } from '../route/mechanisms.js';
import { SpatialResidualBlock } from '../route/spatial.js';
import { decisionForms } from '../route/unit.js';
import { withExits } from './exits.js';
import { MultiBranch, parseBranches } from '../route/branches.js';
import { withWidthSwitch } from '../route/width.js';
import { ResolutionSwitch } from '../route/resolution.js';
import { models, resolveModelArgs } from './registry.js';
import { MoeBlock, type MoeArgs } from '../route/moe.js';

export type { ModelArgs, ModelDef } from './types.js';

export { models, resolveModelArgs } from './registry.js';

function convBnRelu(name: string, filters: number, groups: number, levels: number, bn: boolean, multiple?: number): Layer[] {
  return [
    new Conv2D(`${name}.conv`, { filters, kernelSize: 3, groups, useBias: !bn, ...(multiple ? { multiple } : {}) }),
    ...(bn ? [new BatchNorm(`${name}.bn`, { levels })] : []),
    new ReLU(`${name}.relu`, {}),
  ];
}

models.register('vgg-w', {
  description: 'VGG-style CNN, widthwise-throttled: conv32 conv32 pool conv64 conv64 pool dense256 dense(classes)',
  defaults: { widths: [32, 32, 64, 64], hidden: 256 },
  switchAfter: 'stem.relu',
  channelMultiple: true,
  throttleStem: true,
  layers(a) {
    const [w1, w2, w3, w4] = a.widths as number[];
    const D = a.groups;
    const L = D + 1;
    const m = a.channelMultiple as number | undefined;
    const stem = a.throttleStem === true || a.throttleBoth === true;
    const c2 = a.throttleStem !== true;
    return [
      ...convBnRelu('stem', w1, stem ? D : 0, L, a.batchNorm, m),
      ...convBnRelu('c2', w2, c2 ? D : 0, L, a.batchNorm, m),
      new MaxPool('pool1', {}),
      ...convBnRelu('c3', w3, D, L, a.batchNorm, m),
      ...convBnRelu('c4', w4, D, L, a.batchNorm, m),
      new MaxPool('pool2', {}),
      new Flatten('flatten', {}),
      new Dense('fc1', { units: a.hidden as number, groups: D, ...(m ? { multiple: m } : {}) }),
      new ReLU('fc1.relu', {}),
      new Dense('classifier', { units: a.numClasses }),
    ];
  },
});

/** The expert settings of a model's conditional convolutions (unset ones left to the layer's defaults). */
function condArgs(a: ModelArgs) {
  const { experts, routing, temperature, annealEpochs } = a;
  const set = Object.entries({ routing, temperature, annealEpochs }).filter(([, v]) => v !== undefined);
  return { experts: experts as number, ...(Object.fromEntries(set) as { routing?: string; temperature?: number; annealEpochs?: number }) };
}

function condBnRelu(name: string, filters: number, a: ModelArgs): Layer[] {
  return [new CondConv2D(`${name}.conv`, { filters, kernelSize: 3, ...condArgs(a) }), new BatchNorm(`${name}.bn`, { levels: 1 }), new ReLU(`${name}.relu`, {})];
}

/** vgg-w's layout, not throttled, with `block` for each conv block past the stem (vgg-condconv, vgg-se). */
function staticVgg(a: Parameters<ModelDef['layers']>[0], block: (name: string, filters: number) => Layer[]): Layer[] {
  const [w1, w2, w3, w4] = a.widths as number[];
  return [
    ...convBnRelu('stem', w1, 0, 1, true),
    ...block('c2', w2),
    new MaxPool('pool1', {}),
    ...block('c3', w3),
    ...block('c4', w4),
    new MaxPool('pool2', {}),
    new Flatten('flatten', {}),
    new Dense('fc1', { units: a.hidden as number }),
    new ReLU('fc1.relu', {}),
    new Dense('classifier', { units: a.numClasses }),
  ];
}

models.register('vgg-condconv', {
  description:
    'vgg-w with conditional convolutions (CondConv / dynamic convolution): after the stem, each 3x3 kernel is a per-sample mixture of --experts kernels (--routing sigmoid|softmax); not throttleable',
  defaults: { widths: [32, 32, 64, 64], hidden: 256, experts: 4 },
  condconv: true,
  layers: (a) => staticVgg(a, (name, filters) => condBnRelu(name, filters, a)),
});

models.register('resnet-condconv', {
  description: 'resnet-d (3 stages, no gating) whose residual blocks run conditional convolutions: per sample, each 3x3 kernel a mixture of --experts kernels',
  defaults: { width: 16, blocksPerStage: 2, experts: 4 },
  condconv: true,
  layers(a) {
    const w = a.width as number;
    const n = a.blocksPerStage as number;
    const cond = condArgs(a);
    const layers: Layer[] = [...convBnRelu('stem', w, 0, 1, true)];
    for (let s = 0; s < 3; s++) {
      if (s > 0) layers.push(new ResidualBlock(`s${s}.down`, { filters: w << s, strides: 2, levels: 1, cond }));
      for (let i = 0; i < n; i++) layers.push(new ResidualBlock(`s${s}.b${i}`, { filters: w << s, levels: 1, cond }));
    }
    layers.push(new GlobalAvgPool('gap', {}), new Dense('classifier', { units: a.numClasses }));
    return layers;
  },
});

models.register('vgg-se', {
  description:
    'vgg-w (not throttled) with squeeze-and-excitation after each conv block past the stem: per-sample channel attention, the "dynamic features" counterpart of vgg-condconv',
  defaults: { widths: [32, 32, 64, 64], hidden: 256, ratio: 4 },
  layers: (a) => staticVgg(a, (name, filters) => [...convBnRelu(name, filters, 0, 1, true), new SqueezeExcite(`${name}.se`, { ratio: a.ratio as number })]),
});

models.register('resnet-d', {
  description: 'ResNet with depth-gated residual blocks (skipped blocks are the identity), 3 stages',
  defaults: { width: 16, blocksPerStage: 2 },
  dynamic: true,
  skippable: true,
  layers(a) {
    const w = a.width as number;
    const n = a.blocksPerStage as number;
    const gate = gatedForm(a);
    // Dynamic: the depth-gated blocks are gated per sample instead (BatchNorm rows per route, not per depth).
    const L = gate ? gate.groups + 1 : 3 * n + 1;
    const layers: Layer[] = [...convBnRelu('stem', w, 0, L, true)];
    for (let s = 0; s < 3; s++) {
      if (s > 0) layers.push(new ResidualBlock(`s${s}.down`, { filters: w << s, strides: 2, levels: L }));
      for (let i = 0; i < n; i++) {
        const name = `s${s}.b${i}`;
        layers.push(gate ? gatedBlock(name, { filters: w << s, levels: L }, gate) : new ResidualBlock(name, { filters: w << s, gated: true, stage: s, levels: L }));
      }
    }
    layers.push(new GlobalAvgPool('gap', {}), new Dense('classifier', { units: a.numClasses }));
    return layers;
  },
});

models.register('resnext-w', {
  description: 'ResNeXt-style CNN, widthwise-throttled: D paths per block aggregated by summation',
  defaults: { widths: [32, 64], pathWidth: [4, 8] },
  layers(a) {
    const [c1, c2] = a.widths as number[];
    const [p1, p2] = a.pathWidth as number[];
    const D = a.groups;
    const L = D + 1;
    return [
      ...convBnRelu('stem', c1, 0, L, true),
      new ResNeXtBlock('rx1', { groups: D, width: p1, levels: L }),
      new MaxPool('pool1', {}),
      new Conv2D('trans.conv', { filters: c2, kernelSize: 1 }),
      new BatchNorm('trans.bn', { levels: L }),
      new ReLU('trans.relu', {}),
      new ResNeXtBlock('rx2', { groups: D, width: p2, levels: L }),
      new MaxPool('pool2', {}),
      new GlobalAvgPool('gap', {}),
      new Dense('classifier', { units: a.numClasses }),
    ];
  },
});

models.register('mlp-w', {
  description: 'Multi-layer perceptron, widthwise-throttled hidden layers',
  defaults: { hidden: [256, 256] },
  channelMultiple: true,
  layers(a) {
    const D = a.groups;
    const m = a.channelMultiple as number | undefined;
    return [
      new Flatten('flatten', {}),
      ...(a.hidden as number[]).flatMap((units, i) => [
        new Dense(`fc${i + 1}`, { units, groups: D, ...(m ? { multiple: m } : {}) }),
        new ReLU(`fc${i + 1}.relu`, {}),
      ]),
      new Dense('classifier', { units: a.numClasses }),
    ];
  },
});

models.register(
  'vgg-exits',
  withExits(models.get('vgg-w'), 'vgg-w with early exits (pool, dense64, classifier) after stem, pool1 and c3: depth scaling per sample', {
    exits: ['stem.relu', 'pool1', 'c3.relu'],
    exitPool: [4, 2, 2],
    exitConv: 0,
    exitHidden: 64,
  }),
);

models.register(
  'resnet-exits',
  withExits(models.get('resnet-d'), 'resnet-d with early exits (pool, dense64, classifier) after stages 1 and 2', {
    exits: ['s0.b1', 's1.b1'],
    exitPool: [4, 2],
    exitConv: 0,
    exitHidden: 64,
  }),
);

models.register('resnet38', {
  description:
    'ResNet-38 (stem, 3 stages of 6 basic blocks, 16/32/64 wide, GAP, classifier: 1 + 36 + 1 weighted layers), widthwise-throttled inner channels of every block',
  defaults: { widths: [16, 32, 64], blocksPerStage: 6 },
  dynamic: true,
  switchAfter: 'stem.relu',
  skippable: true,
  layers(a) {
    const widths = a.widths as number[];
    const n = a.blocksPerStage as number;
    const gate = gatedForm(a);
    const skips = mechanisms.has(String(a.dynamic)) && gatesShapeKeeping(mechanisms.get(String(a.dynamic)));
    const D = a.groups;
    // Blocks skipped whole: one group, the rest of the network not throttled (two BatchNorm rows everywhere).
    const L = skips ? 2 : D + 1;
    const layers: Layer[] = [...convBnRelu('stem', widths[0], 0, L, true)];
    widths.forEach((w, s) => {
      for (let i = 0; i < n; i++) {
        const strides = s > 0 && i === 0 ? 2 : 1;
        const args = { filters: w, strides, groups: skips ? 0 : D, levels: L };
        const name = `s${s}.b${i}`;
        // Layer skipping gates only the blocks that keep their shape: downsampling blocks always run (ConvNet-AIG).
        const gated = gate && !(skips && strides !== 1);
        layers.push(gated ? gatedBlock(name, args, gate) : new ResidualBlock(name, args));
      }
    });
    layers.push(new GlobalAvgPool('gap', {}), new Dense('classifier', { units: a.numClasses }));
    return layers;
  },
});

function widthArgs(a: ModelArgs) {
  return { mechanism: String(a.dynamic), routes: a.widthRoutes as number | undefined, gateWidth: a.gateWidth as number | undefined, gateScale: a.gateScale as number | undefined };
}

/**
 * The arguments of a model's gated units, or null for a static model: the mechanism, gate width, scale and
 * decision form, and the groups its gate decides on (one, the whole block, for a mechanism that skips blocks).
 */
function gatedForm(a: ModelArgs) {
  if (a.dynamic === undefined) return null;
  const mechanism = String(a.dynamic);
  return { ...gatedArgs(a, mechanism), groups: gatesShapeKeeping(mechanisms.get(mechanism)) ? 1 : (a.groups as number) };
}

/** A residual block gated per sample by `gate`'s mechanism: its positions (spatial), or its inner groups (a whole block is one group). */
function gatedBlock(name: string, args: { filters: number; strides?: number; levels: number }, gate: NonNullable<ReturnType<typeof gatedForm>>): Layer {
  if (!mechanisms.get(gate.mechanism).spatial) return new GatedResidualBlock(name, { ...args, ...gate });
  const { decisions: _decisions, ...spatial } = gate;
  return new SpatialResidualBlock(name, { ...args, ...spatial });
}

/** The arguments a gated unit takes from the model's: its mechanism, gate width and decision form. */
function gatedArgs(a: ModelArgs, mechanism: string) {
  return { mechanism, gateWidth: a.gateWidth as number | undefined, gateScale: a.gateScale as number | undefined, decisions: a.decisions as string | undefined };
}

/**
 * DenseNet-BC for small images: a 3x3 stem to 2k channels, three dense blocks of `units` units (each
 * appending k channels, its bottleneck and new channels throttled in `groups` groups), BN-ReLU-1x1-avgpool
 * transitions halving the channels, a final BN-ReLU, GAP and the classifier. 6 * units + 4 weighted layers.
 * With `args.dynamic` (models registered `dynamic`), every unit is a `GatedDenseUnit`: a gate per 3x3
 * convolution picks each sample's bottleneck groups.
 */
function denseNet(a: Parameters<ModelDef['layers']>[0], gated: boolean): Layer[] {
  const k = a.growth as number;
  const units = a.units as number;
  const compression = a.compression as number;
  const D = a.groups;
  const L = D + 1;
  let c = 2 * k;
  const layers: Layer[] = [new Conv2D('stem.conv', { filters: c, kernelSize: 3 })];
  for (let b = 0; b < 3; b++) {
    for (let i = 0; i < units; i++) {
      const name = `d${b}.u${i}`;
      const dynamic = a.dynamic as string | undefined;
      layers.push(dynamic ? new GatedDenseUnit(name, { growth: k, groups: D, levels: L, ...gatedArgs(a, dynamic) }) : new DenseUnit(name, { growth: k, groups: D, gated, stage: b, levels: L }));
      c += k;
    }
    if (b < 2) {
      c = Math.floor(c * compression);
      layers.push(new DenseTransition(`t${b}`, { filters: c, levels: L }));
    }
  }
  layers.push(new DenseHead('final', { units: a.numClasses, levels: L }));
  return layers;
}

const DENSE_DEFAULTS: ModelArgs = { growth: 32, compression: 0.5 };

models.register('densenet41', {
  description:
    'DenseNet-BC, 3 blocks of 6 units, k=32: 40 weighted layers (stem, 36 unit convs, 2 transitions, classifier); widthwise-throttled new channels',
  defaults: { ...DENSE_DEFAULTS, units: 6 },
  dynamic: true,
  layers: (a) => denseNet(a, false),
});

models.register('densenet53', {
  description:
    'DenseNet-BC, 3 blocks of 8 units, k=32: 52 weighted layers (stem, 48 unit convs, 2 transitions, classifier); widthwise-throttled new channels',
  defaults: { ...DENSE_DEFAULTS, units: 8 },
  dynamic: true,
  layers: (a) => denseNet(a, false),
});

models.register('densenet-w', {
  description: 'Throttleable DenseNet-BC (DTNN): each unit\'s bottleneck and k new channels in groups; units per block set by `units` (default 6)',
  defaults: { ...DENSE_DEFAULTS, units: 6 },
  layers: (a) => denseNet(a, false),
});

models.register('densenet-dw', {
  description: 'densenet-w whose units are also depth-gated (nested per dense block); a skipped unit appends no channels',
  defaults: { ...DENSE_DEFAULTS, units: 6 },
  layers: (a) => denseNet(a, true),
});

models.register('multi-branch', {
  description:
    'gated multi-branch network: independent branch networks of increasing cost (--branches) and a gate on the input that picks one per sample (--dynamic branch)',
  defaults: { dynamic: 'branch', branches: 'vgg-w:widths=8,8,16,16:hidden=64,vgg-w' },
  dynamic: true,
  layers: (a) => [
    new MultiBranch('mb', { branches: parseBranches(a.branches), mechanism: String(a.dynamic), gateWidth: a.gateWidth as number | undefined, gateScale: a.gateScale as number | undefined, numClasses: a.numClasses }),
  ],
});

/** A mixture's defaults: 4 experts, top-1, Switch's capacity factors and balance loss. */
const MOE_DEFAULTS: ModelArgs = { dynamic: 'moe', experts: 4, topK: 1, capacityFactor: 1.25, overflow: 'next', priority: 'score', importanceWeight: 0, loadWeight: 0, switchWeight: 0.01 };

/** The mixture settings of a model's arguments (see `MoeArgs`). */
function moeArgs(a: ModelArgs, residual: boolean): MoeArgs {
  const { experts, topK, capacityFactor, evalCapacityFactor, overflow, priority, importanceWeight, loadWeight, switchWeight, stack } = a as ModelArgs & MoeArgs;
  return { experts, topK, capacityFactor, evalCapacityFactor, overflow, priority, importanceWeight, loadWeight, switchWeight, stack, residual, mechanism: String(a.dynamic) };
}

models.register('vgg-moe', {
  description:
    'vgg-w whose c4 is a residual sparse mixture of experts (each expert conv64-BN-ReLU; a router on the pooled input, noisy top-k): --experts E --top-k K --capacity-factor C',
  defaults: { ...models.get('vgg-w').defaults, ...MOE_DEFAULTS },
  dynamic: true,
  layers(a) {
    const [w1, w2, w3, w4] = a.widths as number[];
    const D = a.groups;
    const L = D + 1;
    // c3 is not throttled: the mixture adds its input to the experts' outputs, so it must hold every channel.
    return [
      ...convBnRelu('stem', w1, 0, L, a.batchNorm),
      ...convBnRelu('c2', w2, D, L, a.batchNorm),
      new MaxPool('pool1', {}),
      ...convBnRelu('c3', w3, 0, L, a.batchNorm),
      new MoeBlock('c4', moeArgs(a, w3 === w4), (prefix) => convBnRelu(prefix, w4, 0, L, a.batchNorm)),
      new MaxPool('pool2', {}),
      new Flatten('flatten', {}),
      new Dense('fc1', { units: a.hidden as number, groups: D }),
      new ReLU('fc1.relu', {}),
      new Dense('classifier', { units: a.numClasses }),
    ];
  },
});

models.register('resnet-moe', {
  description:
    'resnet-d whose last stage\'s residual blocks are sparse mixtures of experts (each expert a block\'s conv-BN-ReLU-conv-BN branch, the shortcut shared): --experts E --top-k K --capacity-factor C',
  defaults: { ...models.get('resnet-d').defaults, ...MOE_DEFAULTS },
  dynamic: true,
  layers(a) {
    const w = a.width as number;
    const n = a.blocksPerStage as number;
    const L = 3 * n + 1;
    const layers: Layer[] = [...convBnRelu('stem', w, 0, L, true)];
    for (let s = 0; s < 3; s++) {
      if (s > 0) layers.push(new ResidualBlock(`s${s}.down`, { filters: w << s, strides: 2, levels: L }));
      for (let i = 0; i < n; i++) {
        const name = `s${s}.b${i}`;
        const f = w << s;
        if (s < 2) layers.push(new ResidualBlock(name, { filters: f, gated: true, stage: s, levels: L }));
        else {
          const branch = (prefix: string) => [
            new Conv2D(`${prefix}.conv1`, { filters: f, kernelSize: 3, useBias: false }),
            new BatchNorm(`${prefix}.bn1`, { levels: L }),
            new ReLU(`${prefix}.relu1`, {}),
            new Conv2D(`${prefix}.conv2`, { filters: f, kernelSize: 3, useBias: false }),
            new BatchNorm(`${prefix}.bn2`, { levels: L }),
          ];
          layers.push(new MoeBlock(name, moeArgs(a, true), branch), new ReLU(`${name}.relu`, {}));
        }
      }
    }
    layers.push(new GlobalAvgPool('gap', {}), new Dense('classifier', { units: a.numClasses }));
    return layers;
  },
});

models.register('mlp-moe', {
  description:
    'a mixture-of-experts classifier: the flattened image into E MLP experts (dense hidden, ReLU, dense classes) and a router on the pixels, noisy top-k (the head task of the MoE bench)',
  defaults: { ...MOE_DEFAULTS, experts: 10, hidden: 64 },
  dynamic: true,
  layers(a) {
    const hidden = a.hidden as number;
    const expert = (prefix: string) => [new Dense(`${prefix}.fc1`, { units: hidden, groups: a.groups }), new ReLU(`${prefix}.relu`, {}), new Dense(`${prefix}.fc2`, { units: a.numClasses })];
    return [new Flatten('flatten', {}), new MoeBlock('moe', moeArgs(a, false), expert)];
  },
});

/** Adaptive resolution's network around registered model `model` (see `ResolutionSwitch`). */
function resolutionLayers(model: string, a: ModelArgs): Layer[] {
  if (a.resolutions === undefined) throw new DynnError('--dynamic resolution needs --resolutions, e.g. 28,21,14');
  const { dynamic, resolutions, gateWidth, gateScale, ...backboneArgs } = a;
  return [
    new ResolutionSwitch('res', {
      backbone: model,
      backboneArgs,
      resolutions: resolutions as number[],
      mechanism: String(dynamic),
      gateWidth: gateWidth as number | undefined,
      gateScale: gateScale as number | undefined,
      numClasses: a.numClasses as number,
    }),
  ];
}

/** Builds a registered model; unknown names fail with the list of known ones. */
export function createModel(name: string, args: ModelArgs = {}): Network {
  const resolved = resolveModelArgs(name, args);
  const def = models.get(name);
  const mechanism = resolved.dynamic === undefined ? null : mechanisms.get(String(resolved.dynamic));
  // A width switch wraps the static model's layers (same weight names) rather than gating its units; a
  // mechanism that wraps whole models (adaptive resolution) builds the network around the model.
  const layers = mechanism?.widthSwitch
    ? withWidthSwitch(def.layers({ ...resolved, dynamic: undefined } as Parameters<ModelDef['layers']>[0]), def.switchAfter!, widthArgs(resolved))
    : mechanism?.wrapsModel
      ? resolutionLayers(name, resolved)
      : def.layers(resolved as Parameters<ModelDef['layers']>[0]);
  const inputShape = resolved.inputShape as number[];
  let model: Network;
  try {
    model = new Network({ model: name, args: resolved }, inputShape, layers, resolved.seed as number);
  } catch (err) {
    if (!(err instanceof InputTooSmallError)) throw err;
    throw new DynnError(`model ${name} on ${inputShape.join('x')} inputs: ${err.message}`, { cause: err });
  }
  return model;
}
