/**
 * The option table of `dynn train`. It lives below the CLI because the report rebuilds a run's command line
 * from it: a new training option then appears in both without a second list.
 */

/** The training options of width and depth scaling. */
const SCALING_FLAGS: [string, string][] = [
  ['--sandwich-widths <n>', 'with --schedule sandwich: random widths per step besides the widest and the narrowest [default: 2]'],
  ['--no-inplace-distill', 'with --schedule sandwich: narrower widths learn from the labels, not from the widest width'],
  ['--inplace-alpha <a>', 'with --schedule sandwich: weight of the widest width’s soft predictions, the rest on the labels [default: 0.5]'],
  ['--teacher <run>', 'distill from a trained run: (1-a) CE(y) + a T^2 KL(teacher_T || student_T)'],
  ['--distill-alpha <a>', 'distillation weight a in [0, 1] [default: 0.5]'],
  ['--distill-t <T>', 'distillation temperature T [default: 4]'],
  ['--exit-weights <list>', 'early-exit models: loss weight of each exit, the last included [default: 1 each]'],
];

/** The training options of dynamic models, whose gates decide per sample (`--dynamic NAME`). */
const DYNAMIC_FLAGS: [string, string][] = [
  ['--dynamic <mechanism>', 'gates inside the network decide per sample (acs-gn, or acs-dg with DGConv gates: adaptive channel skipping; resnet38, resnet-d, densenet41, densenet53; skip (ConvNet-AIG) or skip-ff (SkipNet FFGate-I): layer skipping; resnet-d, resnet38; spatial: spatially sparse convolution (dynconv), resnet-d, resnet38; width: a width per sample, DS-Net; vgg-w, resnet38; branch: --model multi-branch; resolution: any model that pools globally); see `dynn models`'],
  ['--decisions <form>', 'with --dynamic: nested (the first k groups, skipped channels not computed) or channel (one decision per channel, as the ACS paper: run masked, every channel computed; FLOPs count the channels on) [default: nested]'],
  ['--gate-width <n>', 'with --dynamic: channels of each gate’s hidden layers [default: the mechanism’s]'],
  ['--gate-scale <s>', 'with --dynamic: factor on the gates’ logits; larger makes the gates learn faster than the backbone (with a smaller --lr when fine-tuning) [default: 1]'],
  ['--flops-target <r>', 'with --dynamic: mean executed FLOPs over the backbone’s, gates included, in (0, 1] [default: 0.5]'],
  ['--skip-target <r>', 'with --dynamic skip or skip-ff: mean fraction of the gated blocks each sample executes, per block, in (0, 1]; holds with deterministic gates [default: 0.6]'],
  ['--spatial-target <r>', 'with --dynamic spatial: mean fraction of output positions each gated block computes, per block, in (0, 1) [default: 0.5]'],
  ['--efficiency-weight <a>', 'with --dynamic: weight of (FLOPs ratio - target)^2 in the loss [default: the mechanism’s]'],
  ['--width-target <r>', 'with --dynamic width: mean FLOPs over the full network’s, the gate included, in (0, 1] (DS-Net’s complexity target) [default: 0.5]'],
  ['--width-routes <K>', 'with --dynamic width: the widths a sample can take (the k-th runs ceil(kD/K) of D groups) [default: 4]'],
  ['--pretrain-epochs <n>', 'with --dynamic: the first N of --epochs train the backbone without skipping (two-step training) [default: 0]'],
  ['--gate-estimator <name>', 'with --dynamic: gradients of the binary decisions: sigmoid (the probability as surrogate, as ACS) or gumbel (Gumbel-sigmoid straight-through) [default: the mechanism’s: sigmoid for acs, gumbel for skip]'],
  ['--branches <list>', 'with --model multi-branch: the branch networks, cheapest first, e.g. vgg-w:widths=8,8,16,16:hidden=64,vgg-w (a model name starts a branch, :key=value sets its arguments)'],
  ['--resolutions <list>', 'with --dynamic resolution: input heights the network runs at, each at most the input’s, e.g. 28,21,14'],
  ['--experts <E>', 'with --model vgg-moe, resnet-moe or mlp-moe: experts per mixture-of-experts block [default: 4; mlp-moe 10]; with vgg-condconv, resnet-condconv: expert kernels mixed per sample in each conditional convolution [default: 4]'],
  ['--top-k <k>', 'with a mixture of experts: experts each sample runs, 1..E (noisy top-k in training) [default: 1]'],
  ['--capacity-factor <c>', 'with a mixture of experts: an expert takes at most ceil(c k n / E) rows of a batch of n in training [default: 1.25]'],
  ['--eval-capacity-factor <c>', 'with a mixture of experts: the capacity factor at evaluation, export and serving [default: none, no limit: a served batch merges requests]'],
  ['--overflow <policy>', 'with a mixture of experts: a row that finds its expert full passes through the residual (residual) or takes its next choice with room (next) [default: next]'],
  ['--priority <order>', 'with a mixture of experts: which rows an expert serves first when it has not room for all, batch order (batch) or the rows the router is surest of (score, V-MoE\'s batch priority routing) [default: score]'],
  ['--importance-weight <w>', 'with a mixture of experts: weight of the importance loss, CV(sum of gates)^2 (Shazeer et al.) [default: 0]'],
  ['--load-weight <w>', 'with a mixture of experts: weight of the load loss, CV(smooth load)^2 (Shazeer et al.) [default: 0]'],
  ['--switch-weight <w>', 'with a mixture of experts: weight of Switch’s balance loss E sum_i f_i P_i [default: 0.01]'],
  ['--gate-threshold <t>', 'with --dynamic: inference threshold of the gates for evaluation and calibration [default: 0.5]'],
];

/** The training options of dynamic-parameter models (`--model vgg-condconv`, `resnet-condconv`). */
const CONDCONV_FLAGS: [string, string][] = [
  ['--routing <name>', 'vgg-condconv, resnet-condconv: sigmoid (CondConv) or softmax (dynamic convolution) mixing weights [default: sigmoid]'],
  ['--temperature <T>', 'with --routing softmax: softmax temperature, > 0 (dynamic convolution starts at 30) [default: 1]'],
  ['--anneal-epochs <n>', 'with --temperature: epochs over which the temperature falls linearly to 1 [default: 0, fixed]'],
];

/** Every option of `dynn train` (and `dynn demo`): flag and help text, declared once for the CLI and the report. */
export const TRAIN_FLAGS: [string, string][] = [
  ['--model <name>', 'registered model (see `dynn models`) [default: vgg-w]'],
  ['--dataset <name>', 'mnist (embedded), fashion-mnist, cifar10, synthetic [default: mnist]'],
  ['--data-dir <dir>', 'where the data set files are (else $DYNN_DATA, else the system location)'],
  ['--train-limit <n>', 'use the first N training samples'],
  ['--test-limit <n>', 'use the first N test samples'],
  ['--val-samples <n>', 'hold the last N training samples out as a validation split [default: 0]'],
  ['--epochs <n>', 'epochs [default: 3]'],
  ['--batch-size <n>', 'batch size [default: 128]'],
  ['--optimizer <name>', 'adam or sgd (momentum 0.9) [default: adam]'],
  ['--lr <x>', 'base learning rate [default: 1e-3 adam, 0.05 sgd]'],
  ['--lr-schedule <name>', 'cosine or constant [default: cosine]'],
  ['--schedule <name>', 'how u is drawn per batch: uniform, curriculum, vanilla [default: uniform]'],
  ['--curriculum', 'same as --schedule curriculum: u ~ U(0, uMax], uMax rising to 1 over the first half'],
  ['--vanilla', 'same as --schedule vanilla: always u = 1 (the baseline)'],
  ['--full-width <p>', 'probability that a batch trains the full network instead of a drawn u [default: 0.2]'],
  ['--gating <mode>', 'nested or independent [default: nested]'],
  ['--groups <D>', 'groups per throttleable block [default: 8]'],
  ['--channel-multiple <m>', 'vgg-w, vgg-exits, mlp-w: round each level’s active channels to a multiple of m (16: whole AVX-512 blocks of ONNX Runtime’s convolution, so every exported level’s time follows its FLOPs); saved with the run [default: 1, exact group counts]'],
  ['--throttle-stem', 'vgg-w: throttle the stem’s output channels in place of c2’s (c2 keeps its full output, a wide block ONNX Runtime runs at full speed; with --channel-multiple 16 every exported level’s time follows its FLOPs); saved with the run'],
  ['--throttle-both', 'vgg-w: throttle both the stem’s and c2’s output channels: the widest range of levels (the cheapest at 0.15 of the FLOPs with --channel-multiple 16, against 0.25-0.27 with one of them), for a server that sheds load under overload; saved with the run'],
  ['--seed <n>', 'seed of weights, data order and sampled u [default: 0]'],
  ['--init <run>', 'start from a trained run’s weights (fine-tuning; a dynamic model’s gates start open when the run has none)'],
  ['--workers <n>', 'gradient worker threads; 0 trains in the main thread [default: one per core]'],
  ['--engine <name>', 'auto, tensorflow, wasm or cpu [default: auto]'],
  ...SCALING_FLAGS,
  ...DYNAMIC_FLAGS,
  ...CONDCONV_FLAGS,
  ['--json', 'machine-readable output on stdout'],
];

/** How a model argument's value is read from its flag: text, a switch (present or not), integers separated by commas, or a number in bounds. */
export type ModelArgFlag = 'text' | 'switch' | 'int-list' | { int?: boolean; min?: number; max?: number };

/**
 * The model arguments `dynn train` takes as flags (each flag is its argument's name in kebab case, with its help
 * in the table above): the CLI reads a run's `modelArgs` through it and the report writes a run's arguments back
 * as flags through it, so a new model argument gets both from one entry.
 */
export const MODEL_ARG_FLAGS: Readonly<Record<string, ModelArgFlag>> = {
  groups: { int: true, min: 1 },
  channelMultiple: { int: true, min: 1 },
  throttleStem: 'switch',
  throttleBoth: 'switch',
  dynamic: 'text',
  decisions: 'text',
  gateWidth: { int: true, min: 1 },
  gateScale: { min: Number.MIN_VALUE },
  branches: 'text',
  resolutions: 'int-list',
  widthRoutes: { int: true, min: 2 },
  experts: { int: true, min: 1 },
  topK: { int: true, min: 1 },
  capacityFactor: { min: Number.MIN_VALUE },
  evalCapacityFactor: { min: Number.MIN_VALUE },
  overflow: 'text',
  priority: 'text',
  importanceWeight: { min: 0 },
  loadWeight: { min: 0 },
  switchWeight: { min: 0 },
  routing: 'text',
  temperature: { min: Number.MIN_VALUE },
  annealEpochs: { int: true, min: 0 },
};

/** What a flag of the table says of itself, in the form the CLI parser (cac) gives its options. */
export interface FlagSpec {
  /** camelCase name, as the parsed options object holds it (`--no-inplace-distill` is `inplaceDistill`). */
  name: string;
  /** A `--no-` flag: it sets its option to false. */
  negated: boolean;
}

/** Reads a flag of the table (`--lr <x>`, `--no-latency`). */
export function flagSpec(flag: string): FlagSpec {
  const word = flag.split(/\s/)[0].replace(/^--/, '');
  const negated = word.startsWith('no-');
  const name = (negated ? word.slice(3) : word).replace(/-([a-z])/g, (_, ch: string) => ch.toUpperCase());
  return { name, negated };
}

/** An option's flag word from its camelCase name (`flagSpec`'s name read back). */
export { kebab } from '../util/format.js';

/** Trainer option fields whose flag is spelled differently (`--val-samples` sets `validationSamples`). */
const FIELD_FLAGS: Record<string, string> = { validationSamples: '--val-samples' };

/** The `dynn train` flag that sets a trainer option field (`lrSchedule` is `--lr-schedule`); else the field's name. */
export function optionFlag(field: string): string {
  if (FIELD_FLAGS[field]) return FIELD_FLAGS[field];
  const flag = TRAIN_FLAGS.map(([f]) => f.split(/\s/)[0]).find((f) => flagSpec(f).name === field);
  return flag ? flag.replace(/^--no-/, '--') : field;
}
