import type { CAC } from 'cac';
import { choiceOption, numberOption, pct, table, uListOption, type Io } from './io.js';
import type { CommandModule } from './types.js';
import { intListOption } from './deploy-commands.js';
import { DynnError } from '../util/errors.js';
import type { Network } from '../models/network.js';
import type { TrainMeta } from '../train/run.js';
import type { Dataset, ImageSet } from '../data/types.js';
import type { ControllerReport, Candidate, LevelTable } from '../control/index.js';

type Opts = Record<string, unknown>;

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
const SPLITS = ['test', 'val'] as const;
const GATE_EVAL_US = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1];

const DATA_OPTIONS: [string, string][] = [
  ['--dataset <name>', 'data set [default: the run’s]'],
  ['--data-dir <dir>', 'where the data set files are'],
  ['--engine <name>', 'auto, tensorflow, wasm or cpu'],
  ['--json', 'machine-readable output on stdout'],
];

/** The adaptive-control commands: gates, controller, eval, select, latency-table. */
export const controlCommands: CommandModule = (cli: CAC, io: Io) => {
  const withData = (cmd: ReturnType<CAC['command']>) => {
    for (const [flag, desc] of DATA_OPTIONS) cmd.option(flag, desc);
    return cmd;
  };

  withData(cli.command('gates <action> <run>', 'learned gate functions g(u) of a trained run: `gates train` (DTNN phase 2) or `gates eval`'))
    .option('--out <dir>', 'train: where to save the gates (required; a new or empty folder, or earlier gates with --force)')
    .option('--force', 'train: replace the gates saved in --out')
    .option('--method <name>', 'train: reinforce or concrete [default: reinforce]')
    .option('--penalty <name>', 'train: hinge (max(0, c-u)^p) or dist (|c-u|^p) [default: dist]')
    .option('--p <n>', 'train: exponent of the penalty, 1 or 2 [default: 1]')
    .option('--lambda <x>', 'train: weight of the complexity penalty [default: 10]')
    .option('--steps <n>', 'train: gate updates [default: 600]')
    .option('--batch-size <n>', 'train: images per update [default: 32 reinforce, 64 concrete]')
    .option('--samples-per-step <n>', 'train: REINFORCE gate samples per update [default: 8]')
    .option('--lr <x>', 'train: learning rate [default: 0.02]')
    .option('--temperature <x>', 'train: CONCRETE temperature [default: 0.1]')
    .option('--u-min <x>', 'train: u is drawn from U(u-min, 1] [default: 0.125]')
    .option('--full-u <p>', 'train: probability that an update trains u = 1 [default: 0.1]')
    .option('--hidden <n>', 'train: hidden units of each gate MLP [default: 16]')
    .option('--seed <n>', 'train: seed [default: 0]')
    .option('--gates <dir>', 'eval: the gates checkpoint')
    .option('--u <list>', `eval: utilizations [default: ${GATE_EVAL_US.join(',')}]`)
    .option('--split <name>', 'eval: test or val (the run’s validation split) [default: test]')
    .option('--test-limit <n>', 'eval: use the first N test samples')
    .example('dynn gates train runs/fm-vgg --method reinforce --penalty dist --p 1 --lambda 10 --out runs/fm-vgg-gates')
    .example('dynn gates eval runs/fm-vgg --gates runs/fm-vgg-gates --dataset fashion-mnist')
    .action(async (action: string, run: string, o: Opts) => {
      if (action === 'train') return gatesTrain(run, o, io);
      if (action === 'eval') return gatesEval(run, o, io);
      throw new DynnError(`unknown gates action "${action}"; expected one of eval, train`);
    });

  withData(cli.command('controller <action> <run>', 'train the context-aware controller of a run as a contextual bandit (`controller train`)'))
    .option('--out <dir>', 'where to save the controller (required; a new or empty folder, or an earlier controller with --force)')
    .option('--force', 'replace the controller saved in --out')
    .option('--actions <list|K>', 'action set: K for u_k = k/K, or a list of utilizations in (0, 1] [default: 10]')
    .option('--epochs <n>', 'passes over the samples [default: 10]')
    .option('--batch-size <n>', 'samples per update [default: 128]')
    .option('--lr <x>', 'learning rate [default: 1e-3]')
    .option('--epsilon <x>', 'bandit feedback: final exploration rate (decays from 1 over the first half) [default: 0.1]')
    .option('--gamma1 <x>', 'reward: gamma1 of the wrong-answer penalty -(c+gamma1)(u+gamma2) [default: 4; the paper: 0.5]')
    .option('--gamma2 <x>', 'reward: gamma2 [default: 1.5]')
    .option('--cost <name>', 'reward cost: macs (measured MACs ratio) or u [default: macs]')
    .option('--feedback <name>', 'full (every action’s reward, known from the frozen network) or bandit (one epsilon-greedy action per image, the paper) [default: full; bandit with --objective policy-gradient]')
    .option('--objective <name>', 'reward (regress each action’s reward; act by argmax) or policy-gradient (-r log pi, the paper; bandit feedback) [default: reward]')
    .option('--train-samples <n>', 'training samples the bandit learns from [default: 20000]')
    .option('--temporal', 'a temporal controller: plans frame t+1’s u from what the network computed for frame t (a stream: --dataset fashion-mnist-stream); a full-feedback reward model, or with --objective policy-gradient REINFORCE over whole sequences')
    .option('--budget <x>', '--temporal --objective policy-gradient: maximize accuracy within this mean FLOPs ratio (NaviSlim Eq. 2)')
    .option('--beta <x>', '--temporal --objective policy-gradient: least compute at beta x the full network’s accuracy (NaviSlim Eq. 1)')
    .option('--lambda <x>', '--temporal --objective policy-gradient: weight of the budget’s or accuracy’s violation [default: 10]')
    .option('--resolutions <list>', '--temporal: input resolutions (heights) the controller also chooses; its actions are every (u, r) of --actions x --resolutions (NaviSlim’s input-layer slimming)')
    .option('--seed <n>', 'seed [default: 0]')
    .option('--no-eval', 'skip the evaluation on the run’s validation split')
    .example('dynn controller train runs/fm-vgg --dataset fashion-mnist --out runs/fm-ctrl')
    .example('dynn controller train runs/stream-vgg --temporal --dataset fashion-mnist-stream --out runs/stream-ctrl')
    .action(async (action: string, run: string, o: Opts) => {
      if (action === 'train') return controllerTrain(run, o, io);
      throw new DynnError(`unknown controller action "${action}"; expected train`);
    });

  withData(cli.command('eval <run>', 'accuracy and mean cost of a controller against the fixed-u curve and the oracle'))
    .option('--controller <dir|name>', 'a controller checkpoint directory, or fixed, resource, cascade, oracle')
    .option('--split <name>', 'test or val (the run’s validation split) [default: test]')
    .option('--test-limit <n>', 'use the first N test samples')
    .option('--actions <list|K>', 'actions of the fixed-u curve and oracle (and of resource/oracle) [default: 10]')
    .option('--u <x>', 'fixed: the utilization [default: 1]')
    .option('--stages <list>', 'cascade: stage utilizations [default: 0.25,0.5,1]')
    .option('--threshold <x>', 'cascade: confidence threshold [default: 0.9]')
    .option('--battery <x>', 'resource: battery level in [0, 1]')
    .option('--latency-budget <ms>', 'resource: latency budget per batch in ms (needs --latency-table)')
    .option('--latency-table <file>', 'latency table JSON, e.g. model.onnx.profile.json or from `dynn latency-table`')
    .option('--batch-size <n>', 'batch size [default: 256]')
    .example('dynn eval runs/fm-vgg --controller runs/fm-ctrl --dataset fashion-mnist --json')
    .example('dynn eval runs/fm-vgg --controller cascade --stages 0.25,1 --threshold 0.9')
    .action(async (run: string, o: Opts) => evalCommand(run, o, io));

  withData(cli.command('select <run>', 'choose an operating point on the run’s validation split: least cost for an accuracy, or least error for a budget'))
    .option('--objective <name>', 'min-cost (accuracy >= --min-accuracy x full) or min-error (cost within a budget)')
    .option('--min-accuracy <beta>', 'min-cost: the fraction of the full network’s accuracy to keep, e.g. 0.99')
    .option('--budget-flops <x>', 'min-error: mean FLOPs ratio budget, e.g. 0.4')
    .option('--budget-ms <ms>', 'min-error: mean latency budget per sample, from --latency-table')
    .option('--latency-table <file>', 'latency table JSON for ms costs')
    .option('--cost-unit <name>', 'min-cost: flops or ms (needs --latency-table) [default: flops]')
    .option('--batch <n>', 'batch size the latency costs are read at (per-sample share) [default: 1]')
    .option('--controller <dir>', 'also consider this bandit controller (with restricted action sets)')
    .option('--actions <list|K>', 'fixed levels and cascade stages considered [default: 10, or the controller’s]')
    .option('--thresholds <list>', 'cascade thresholds [default: 0.5,0.6,0.7,0.8,0.9,0.95,0.99]')
    .example('dynn select runs/fm-vgg --controller runs/fm-ctrl --objective min-cost --min-accuracy 0.99')
    .example('dynn select runs/fm-vgg --objective min-error --budget-flops 0.4')
    .action(async (run: string, o: Opts) => selectCommand(run, o, io));

  withData(cli.command('latency-table <run>', 'measure a latency table (ms per level and batch size) with TF.js'))
    .option('--out <file>', 'where to write the JSON (required)')
    .option('--batch <list>', 'batch sizes [default: 1,64]')
    .option('--actions <list|K>', 'levels [default: 10]')
    .option('--reps <n>', 'timed runs per entry (median) [default: 10]')
    .action(async (run: string, o: Opts) => latencyTableCommand(run, o, io));
};

/** Parses `--actions`: an integer K >= 2 for u_k = k/K, or a list of utilizations in (0, 1]. */
export async function actionsOption(value: unknown): Promise<number[] | undefined> {
  if (value === undefined) return undefined;
  const { actionSet, checkActions } = await import('../control/index.js');
  const s = String(value).trim();
  if (/^\d+$/.test(s) && Number(s) >= 2) return actionSet(Number(s));
  return checkActions(uListOption(s, 'actions') ?? []);
}

interface Opened {
  model: Network;
  meta: TrainMeta;
  data: Dataset;
  dataset: string;
}

/** Loads a run and its data set (the run's training limit and seed, so its validation split is the same). */
async function openRun(run: string, o: Opts): Promise<Opened> {
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  await initEngine(choiceOption(o.engine, 'engine', ENGINES));
  const { model, meta } = await loadRun(run);
  try {
    const dataset = String(o.dataset ?? meta.dataset);
    const trainLimit = meta.options?.trainLimit as number | undefined;
    const data = await loadDataset(dataset, {
      dataDir: o.dataDir as string | undefined,
      trainLimit,
      testLimit: numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }),
      seed: meta.seed,
    });
    const [h, w, c] = model.inputShape;
    const t = data.test;
    if (t.height !== h || t.width !== w || t.channels !== c) {
      throw new DynnError(`data set ${dataset} has ${t.height}x${t.width}x${t.channels} images; the run's model takes ${h}x${w}x${c}`);
    }
    return { model, meta, data, dataset };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/** The part of the training split the run trained on (its validation split excluded). */
async function trainPart(opened: Opened): Promise<ImageSet> {
  const { head } = await import('../data/imageset.js');
  const train = opened.data.train;
  return head(train, train.count - (opened.meta.validationSamples ?? 0));
}

async function evalSplit(opened: Opened, split: 'test' | 'val'): Promise<ImageSet> {
  if (split === 'test') return opened.data.test;
  const { validationSplit } = await import('../train/run.js');
  return validationSplit(opened.meta, opened.data.train);
}

function say(io: Io, o: Opts, text: string): void {
  if (!o.json) io.err(text);
}

async function gatesTrain(run: string, o: Opts, io: Io): Promise<void> {
  if (!o.out) throw new DynnError('gates train needs --out DIR (where to save the gates)');
  const { GateSet, gatedBlocks, trainGates, saveGates, runRef, complexity, GATE_METHODS, GATE_PENALTIES, checkCompanionTarget, GATES_KIND } = await import('../control/index.js');
  await checkCompanionTarget(String(o.out), GATES_KIND, o.force === true);
  const method = choiceOption(o.method ?? 'reinforce', 'method', GATE_METHODS)!;
  const options = {
    method,
    penalty: choiceOption(o.penalty, 'penalty', GATE_PENALTIES),
    p: numberOption(o.p, 'p', { int: true, min: 1, max: 2 }),
    lambda: numberOption(o.lambda, 'lambda', { min: 0 }),
    steps: numberOption(o.steps, 'steps', { int: true, min: 1 }),
    batchSize: numberOption(o.batchSize, 'batch-size', { int: true, min: 1 }),
    samplesPerStep: numberOption(o.samplesPerStep, 'samples-per-step', { int: true, min: 2 }),
    lr: numberOption(o.lr, 'lr', { min: Number.MIN_VALUE }),
    temperature: numberOption(o.temperature, 'temperature', { min: Number.MIN_VALUE }),
    uMin: numberOption(o.uMin, 'u-min', { min: Number.MIN_VALUE, max: 0.999 }),
    fullU: numberOption(o.fullU, 'full-u', { min: 0, max: 1 }),
    seed: numberOption(o.seed, 'seed', { int: true }),
  };
  const hidden = numberOption(o.hidden, 'hidden', { int: true, min: 1 });
  const opened = await openRun(run, o);
  const { model } = opened;
  let gates: InstanceType<typeof GateSet> | null = null;
  try {
    const g = (gates = new GateSet({ blocks: gatedBlocks(model), hidden, seed: options.seed }));
    const data = await trainPart(opened);
    const ref = runRef(model, run);
    const t0 = performance.now();
    const log = trainGates(model, g, data, {
      ...options,
      onLog: (s) => say(io, o, `step ${s.step}/${s.steps}: task loss ${s.taskLoss.toFixed(4)}, |c - u| ${s.gap.toFixed(3)}\n`),
    });
    const pattern = GATE_EVAL_US.map((u) => ({ u, complexity: complexity(g.plan(model, u), g.blocks), blocks: g.pattern(u) }));
    await saveGates(String(o.out), g, ref, { options: { ...options, penalty: options.penalty ?? 'dist', p: options.p ?? 1, lambda: options.lambda ?? 10 }, log, pattern, seconds: (performance.now() - t0) / 1000 });
    if (o.json) io.out(JSON.stringify({ out: o.out, method, log, pattern }, null, 2) + '\n');
    else io.out(`saved ${o.out} (${method} gates for ${run})\n` + patternTable(pattern));
  } finally {
    gates?.dispose();
    model.dispose();
  }
}

function patternTable(pattern: { u: number; complexity: number; blocks: Record<string, number> }[]): string {
  const names = Object.keys(pattern[0]?.blocks ?? {});
  return (
    'learned pattern: active fraction per block\n' +
    table(['u', 'c', ...names], pattern.map((p) => [p.u, p.complexity.toFixed(3), ...names.map((n) => p.blocks[n].toFixed(3))]))
  );
}

async function gatesEval(run: string, o: Opts, io: Io): Promise<void> {
  if (!o.gates) throw new DynnError('gates eval needs --gates DIR (a gates checkpoint)');
  const us = uListOption(o.u) ?? GATE_EVAL_US;
  const split = choiceOption(o.split ?? 'test', 'split', SPLITS)!;
  const { loadGates, gatedRunner, complexity, MixedRunner, scoreSet } = await import('../control/index.js');
  const opened = await openRun(run, o);
  const { model } = opened;
  let gates: import('../control/index.js').GateSet | null = null;
  try {
    gates = (await loadGates(String(o.gates), model, run)).gates;
    const set = await evalSplit(opened, split);
    const gated = gatedRunner(model, gates, await trainPart(opened));
    const nested = new MixedRunner(model);
    const accuracy = (runner: InstanceType<typeof MixedRunner>, u: number) => {
      const { predictions } = scoreSet(runner.subnet(u), set, model.batchFor(500));
      let right = 0;
      for (let i = 0; i < set.count; i++) if (predictions[i] === set.labels[i]) right++;
      return right / set.count;
    };
    try {
      const rows = us.map((u) => {
        const plan = gated.plan(u);
        const row = {
          u,
          complexity: complexity(plan, gates!.blocks),
          flopsRatio: gated.macs(u) / gated.fullMacs,
          accuracy: accuracy(gated, u),
          nested: { accuracy: accuracy(nested, u), flopsRatio: nested.macs(u) / nested.fullMacs },
          blocks: gates!.pattern(u),
        };
        say(io, o, `u=${u}: c=${row.complexity.toFixed(3)} gated ${pct(row.accuracy)}, nested ${pct(row.nested.accuracy)}\n`);
        return row;
      });
      if (o.json) io.out(JSON.stringify({ run, gates: o.gates, dataset: opened.dataset, split, points: rows }, null, 2) + '\n');
      else
        io.out(
          `${model.config.model} with learned gates ${o.gates} on ${opened.dataset} ${split} (${set.count} samples)\n` +
            table(
              ['u', 'c', '|c - u|', 'FLOPs ratio', 'accuracy', 'nested FLOPs', 'nested acc'],
              rows.map((r) => [r.u, r.complexity.toFixed(3), Math.abs(r.complexity - r.u).toFixed(3), r.flopsRatio.toFixed(3), pct(r.accuracy), r.nested.flopsRatio.toFixed(3), pct(r.nested.accuracy)]),
            ) +
            patternTable(rows),
        );
    } finally {
      gated.dispose();
      nested.dispose();
    }
  } finally {
    gates?.dispose();
    model.dispose();
  }
}

async function controllerTrain(run: string, o: Opts, io: Io): Promise<void> {
  if (!o.out) throw new DynnError('controller train needs --out DIR (where to save the controller)');
  const c = await import('../control/index.js');
  await c.checkCompanionTarget(String(o.out), c.CONTROLLER_KIND, o.force === true);
  const { head } = await import('../data/imageset.js');
  const actions = (await actionsOption(o.actions)) ?? c.actionSet();
  const options = {
    epochs: numberOption(o.epochs, 'epochs', { int: true, min: 1 }),
    batchSize: numberOption(o.batchSize, 'batch-size', { int: true, min: 1 }),
    lr: numberOption(o.lr, 'lr', { min: Number.MIN_VALUE }),
    epsilon: numberOption(o.epsilon, 'epsilon', { min: 0, max: 1 }),
    gamma1: numberOption(o.gamma1, 'gamma1'),
    gamma2: numberOption(o.gamma2, 'gamma2'),
    cost: choiceOption(o.cost, 'cost', c.BANDIT_COSTS),
    feedback: choiceOption(o.feedback, 'feedback', c.BANDIT_FEEDBACKS),
    objective: choiceOption(o.objective, 'objective', c.BANDIT_OBJECTIVES),
    seed: numberOption(o.seed, 'seed', { int: true }),
  };
  const samples = numberOption(o.trainSamples, 'train-samples', { int: true, min: 1 }) ?? 20000;
  const budget = numberOption(o.budget, 'budget', { min: Number.MIN_VALUE, max: 1 });
  const beta = numberOption(o.beta, 'beta', { min: Number.MIN_VALUE, max: 1 });
  const resolutions = intListOption(o.resolutions, 'resolutions');
  if (!o.temporal && resolutions) throw new DynnError('--resolutions are actions of a temporal controller (--temporal): it plans the next frame’s input resolution');
  if (!o.temporal && (budget !== undefined || beta !== undefined)) throw new DynnError('--budget and --beta are objectives of a temporal controller trained over sequences (--temporal --objective policy-gradient)');
  if (o.temporal) {
    if (options.feedback === 'bandit' || options.epsilon !== undefined) throw new DynnError('--temporal learns from every action’s reward or from whole sequences: --feedback bandit and --epsilon do not apply');
    const pg = options.objective === 'policy-gradient';
    if (pg && (budget === undefined) === (beta === undefined)) throw new DynnError('--temporal --objective policy-gradient needs exactly one of --budget B (accuracy within a FLOPs budget) or --beta B (least compute at B x the full network’s accuracy)');
    if (!pg && (budget !== undefined || beta !== undefined || o.lambda !== undefined)) throw new DynnError('--budget, --beta and --lambda need --objective policy-gradient (the reward model has gamma1 as its knob)');
    if (pg && (options.gamma1 !== undefined || options.gamma2 !== undefined || options.cost !== undefined)) throw new DynnError('--gamma1, --gamma2 and --cost shape the reward model’s reward; over sequences the objective is --budget or --beta');
    const sequence = pg ? { objective: budget !== undefined ? { kind: 'budget' as const, budget } : { kind: 'beta' as const, beta: beta! }, lambda: numberOption(o.lambda, 'lambda', { min: 0 }) } : undefined;
    return temporalTrain(run, o, io, actions, options, samples, sequence, resolutions);
  }
  const opened = await openRun(run, o);
  const { model } = opened;
  const runner = new c.MixedRunner(model);
  const policy = new c.Policy({ inputShape: model.inputShape, actions, seed: options.seed });
  try {
    const data = head(await trainPart(opened), samples);
    say(io, o, `frozen network's answers at ${actions.length} actions on ${data.count} training samples\n`);
    const table = c.levelTable(runner, data, actions, { onLevel: (u) => say(io, o, `  u=${u}\n`) });
    const history = c.trainBandit(policy, data, table, {
      ...options,
      onEpoch: (r) =>
        say(io, o, `epoch ${r.epoch}: reward ${r.meanReward.toFixed(3)}, eps ${r.epsilon.toFixed(2)}, greedy: accuracy ${pct(r.accuracy)}, mean u ${r.meanU.toFixed(3)}, FLOPs ratio ${r.meanFlopsRatio.toFixed(3)}\n`),
    });
    let validation: ControllerReport | undefined;
    if (o.eval !== false && (opened.meta.validationSamples ?? 0) > 0) {
      say(io, o, 'evaluating on the validation split\n');
      const val = await evalSplit(opened, 'val');
      validation = c.evaluateController(new c.BanditController(policy), runner, val, { curve: actions });
    }
    await c.saveController(String(o.out), policy, c.runRef(model, run), {
      actions,
      options: { ...c.resolveBanditOptions(options), trainSamples: data.count },
      history,
      policyMacs: policy.macs,
      fullMacs: runner.fullMacs,
      ...(validation ? { validation } : {}),
    });
    if (o.json) io.out(JSON.stringify({ out: o.out, actions, history, validation }, null, 2) + '\n');
    else {
      io.out(`saved ${o.out} (bandit controller over ${actions.length} actions; its own cost ${((100 * policy.macs) / runner.fullMacs).toFixed(2)}% of the full network)\n`);
      if (validation) io.out(await reportText(validation, 'validation split'));
    }
  } finally {
    runner.dispose();
    policy.dispose();
    model.dispose();
  }
}

async function temporalTrain(
  run: string,
  o: Opts,
  io: Io,
  actions: number[],
  options: Omit<import('../control/index.js').TemporalOptions, 'onEpoch'>,
  samples: number,
  sequence?: Pick<import('../control/index.js').SequenceOptions, 'objective' | 'lambda'>,
  resolutions?: number[],
): Promise<void> {
  const c = await import('../control/index.js');
  const { head } = await import('../data/imageset.js');
  const opened = await openRun(run, o);
  const { model } = opened;
  const runner = new c.MixedRunner(model);
  let policy: import('../control/index.js').Policy | undefined;
  try {
    // Every resolution is checked against the network (in range, runs) before anything trains.
    for (const r of resolutions ?? []) runner.resolution(r);
    policy = c.temporalPolicy(model.numClasses, actions, { seed: options.seed, resolutions });
    const points = { resolutions: policy.resolutions };
    const data = head(await trainPart(opened), samples);
    if (!data.sequence) throw new DynnError(`--temporal needs a stream, frames in sequences: ${opened.dataset} has none (use --dataset fashion-mnist-stream)`);
    say(io, o, `frozen network's answers at ${policy.actions.length} actions on ${data.count} training frames\n`);
    const table = c.levelTable(runner, data, policy.actions, { ...points, probabilities: true, onLevel: (u, r) => say(io, o, `  u=${u}${r ? ` at ${r}x${r}` : ''}\n`) });
    const history = sequence
      ? c.trainTemporalSequences(policy, data, table, {
          ...sequence,
          epochs: options.epochs,
          batchSize: options.batchSize,
          lr: options.lr,
          seed: options.seed,
          onEpoch: (r) => say(io, o, `epoch ${r.epoch}: return ${r.meanReturn.toFixed(3)}, sampled actions: accuracy ${pct(r.accuracy)}, FLOPs ratio ${r.meanFlopsRatio.toFixed(3)}\n`),
        })
      : c.trainTemporal(policy, data, table, {
          ...options,
          onEpoch: (r) => say(io, o, `epoch ${r.epoch}: loss ${r.loss.toFixed(4)}, reward ${r.meanReward.toFixed(3)}, next frame at the greedy action: accuracy ${pct(r.accuracy)}, FLOPs ratio ${r.meanFlopsRatio.toFixed(3)}\n`),
        });
    let validation: ControllerReport | undefined;
    if (o.eval !== false && (opened.meta.validationSamples ?? 0) > 0) {
      const val = await evalSplit(opened, 'val');
      if (val.sequence) {
        say(io, o, 'evaluating on the validation split\n');
        validation = c.reportRun(c.runTemporal(new c.TemporalController(policy), runner, val), val.labels, runner.fullMacs, c.levelTable(runner, val, policy.actions, points));
      }
    }
    await c.saveController(String(o.out), policy, c.runRef(model, run), {
      actions: policy.actions,
      ...points,
      temporal: true,
      // What really trained: the sequence objective with its own defaults, or the reward model's options.
      options: sequence
        ? { ...c.SEQUENCE_DEFAULTS, ...Object.fromEntries(Object.entries({ ...sequence, epochs: options.epochs, batchSize: options.batchSize, lr: options.lr, seed: options.seed }).filter(([, v]) => v !== undefined)), trainSamples: data.count }
        : { ...c.resolveBanditOptions(options), trainSamples: data.count },
      history,
      policyMacs: policy.macs,
      fullMacs: runner.fullMacs,
      ...(validation ? { validation } : {}),
    });
    if (o.json) io.out(JSON.stringify({ out: o.out, actions: policy.actions, ...points, temporal: true, history, validation }, null, 2) + '\n');
    else {
      io.out(`saved ${o.out} (temporal controller over ${policy.actions.length} actions${resolutions ? ` (u, r), r in ${resolutions.join(', ')}` : ''}; its own cost ${((100 * policy.macs) / runner.fullMacs).toFixed(3)}% of the full network per frame)\n`);
      if (validation) io.out(await reportText(validation, 'validation split'));
    }
  } finally {
    runner.dispose();
    policy?.dispose();
    model.dispose();
  }
}

async function reportText(r: ControllerReport, what: string): Promise<string> {
  const { describeGap } = await import('../control/index.js');
  const lines = [
    `controller on the ${what}: accuracy ${pct(r.accuracy)}, mean u ${r.meanU.toFixed(3)}, mean FLOPs ratio ${r.meanFlopsRatio.toFixed(3)} (its own cost included)`,
    describeGap('the controller', r.againstCurve, r.meanFlopsRatio),
    `oracle: accuracy ${pct(r.oracle.accuracy)}, mean u ${r.oracle.meanU.toFixed(3)}, mean FLOPs ratio ${r.oracle.meanFlopsRatio.toFixed(3)}`,
    `u histogram: ${Object.entries(r.uHistogram).map(([u, n]) => `${u}: ${n}`).join(', ')}`,
    ...(r.resolutionHistogram ? [`resolution histogram: ${Object.entries(r.resolutionHistogram).map(([x, n]) => `${x}: ${n}`).join(', ')}`] : []),
  ];
  const byRes = r.fixed.some((f) => f.resolution !== undefined);
  return lines.join('\n') + '\n' + table(['u', ...(byRes ? ['resolution'] : []), 'accuracy', 'FLOPs ratio'], r.fixed.map((f) => [f.u, ...(byRes ? [f.resolution ?? ''] : []), pct(f.accuracy), f.flopsRatio.toFixed(3)]));
}

async function evalCommand(run: string, o: Opts, io: Io): Promise<void> {
  const name = o.controller;
  if (name === undefined || name === true) throw new DynnError('eval needs --controller DIR|NAME (a controller checkpoint, or one of the registered controllers)');
  const split = choiceOption(o.split ?? 'test', 'split', SPLITS)!;
  const c = await import('../control/index.js');
  const { isCheckpointDir } = await import('../checkpoint/checkpoint.js');
  const dir = String(name);
  const isDir = isCheckpointDir(dir);
  if (!isDir && !c.controllers.has(dir)) {
    const { existsSync } = await import('node:fs');
    if (existsSync(dir)) throw new DynnError(`--controller ${dir} is not a controller checkpoint: it has no checkpoint.json (\`dynn controller train RUN --out DIR\` makes one)`);
    throw new DynnError(`unknown controller "${dir}"; expected a controller checkpoint directory or one of ${c.controllers.list().join(', ')}`);
  }
  const curve = await actionsOption(o.actions);
  const options = {
    u: numberOption(o.u, 'u', { min: Number.MIN_VALUE, max: 1 }),
    stages: o.stages === undefined ? undefined : c.checkActions(uListOption(o.stages, 'stages') ?? []),
    threshold: numberOption(o.threshold, 'threshold', { min: Number.MIN_VALUE, max: 1 }),
    actions: curve,
    latencyTable: o.latencyTable ? await c.loadLatencyTable(String(o.latencyTable)) : undefined,
  };
  const context = {
    battery: numberOption(o.battery, 'battery', { min: 0, max: 1 }),
    latencyBudgetMs: numberOption(o.latencyBudget, 'latency-budget', { min: Number.MIN_VALUE }),
  };
  const batchSize = numberOption(o.batchSize, 'batch-size', { int: true, min: 1 });
  const opened = await openRun(run, o);
  const { model } = opened;
  const runner = new c.MixedRunner(model);
  let policy: import('../control/index.js').Policy | undefined;
  try {
    if (isDir) policy = (await c.loadController(dir, model, run)).policy;
    const set = await evalSplit(opened, split);
    let report: ControllerReport;
    let controller: { name: string; dispose?: () => void };
    if (policy && c.isTemporal(policy)) {
      // Sequences run side by side, frame t planning frame t+1 (`runTemporal`); the curve and oracle as for any controller.
      const temporal = new c.TemporalController(policy);
      controller = temporal;
      const us = [...new Set([...(curve ?? c.actionSet()), ...policy.actions, 1])];
      // With resolutions: every fixed (u, r) of those u's and the controller's resolutions.
      const points: { actions: number[]; resolutions?: number[] } = policy.resolutions ? c.operatingPoints(us, [...new Set(policy.resolutions)]) : { actions: us };
      report = c.reportRun(c.runTemporal(temporal, runner, set), set.labels, runner.fullMacs, c.levelTable(runner, set, points.actions, { resolutions: points.resolutions }));
    } else {
      const created = c.createController(isDir ? 'bandit' : dir, { runner }, { ...options, policy });
      controller = created;
      report = c.evaluateController(created, runner, set, { curve: curve ?? policy?.actions, batchSize, context });
      created.dispose();
    }
    if (o.json) {
      const verdict = c.describeGap(`the ${controller.name} controller`, report.againstCurve, report.meanFlopsRatio);
      io.out(JSON.stringify({ controller: controller.name, dataset: opened.dataset, split, samples: set.count, verdict, ...report }, null, 2) + '\n');
    } else
      io.out(
        `${controller.name} controller, ${model.config.model} on ${opened.dataset} ${split} (${set.count} samples)\n` +
          (await reportText(report, `${split} split`)),
      );
  } finally {
    runner.dispose();
    policy?.dispose();
    model.dispose();
  }
}

const OBJECTIVES = ['min-cost', 'min-error'] as const;
const COST_UNITS = ['flops', 'ms'] as const;

async function selectCommand(run: string, o: Opts, io: Io): Promise<void> {
  const objectiveName = choiceOption(o.objective, 'objective', OBJECTIVES);
  if (!objectiveName) throw new DynnError('select needs --objective min-cost or min-error');
  const beta = numberOption(o.minAccuracy, 'min-accuracy', { min: Number.MIN_VALUE, max: 1 });
  const budgetFlops = numberOption(o.budgetFlops, 'budget-flops', { min: Number.MIN_VALUE });
  const budgetMs = numberOption(o.budgetMs, 'budget-ms', { min: Number.MIN_VALUE });
  if (objectiveName === 'min-cost' && beta === undefined) throw new DynnError('--objective min-cost needs --min-accuracy BETA (e.g. 0.99)');
  if (objectiveName === 'min-error' && (budgetFlops === undefined) === (budgetMs === undefined)) {
    throw new DynnError('--objective min-error needs exactly one of --budget-flops X or --budget-ms MS');
  }
  if (budgetMs !== undefined && !o.latencyTable) throw new DynnError('--budget-ms needs --latency-table FILE');
  const costUnit = choiceOption(o.costUnit ?? 'flops', 'cost-unit', COST_UNITS)!;
  // The unit costs are compared in: ms for a latency budget, else --cost-unit.
  const unit = budgetMs !== undefined ? 'ms' : costUnit;
  if (costUnit === 'ms' && !o.latencyTable) throw new DynnError('--cost-unit ms needs --latency-table FILE');
  const batch = numberOption(o.batch, 'batch', { int: true, min: 1 }) ?? 1;
  const thresholds = o.thresholds === undefined ? undefined : uListOption(o.thresholds, 'thresholds', 'a threshold');
  const c = await import('../control/index.js');
  const latency = o.latencyTable ? await c.loadLatencyTable(String(o.latencyTable)) : undefined;
  const asked = await actionsOption(o.actions);
  const opened = await openRun(run, o);
  const { model } = opened;
  const runner = new c.MixedRunner(model);
  let policy: import('../control/index.js').Policy | undefined;
  try {
    const { validationSplit } = await import('../train/run.js');
    const val = validationSplit(opened.meta, opened.data.train);
    if (o.controller) policy = (await c.loadController(String(o.controller), model, run)).policy;
    const base = asked ?? policy?.actions ?? c.actionSet();
    if (policy && asked && asked.join() !== policy.actions.join()) throw new DynnError(`--actions must match the controller's actions (${policy.actions.join(', ')})`);
    const actions = base[base.length - 1] === 1 ? base : [...base, 1];
    if (policy && actions.length !== policy.actions.length) throw new DynnError('the controller’s action set must include u = 1 for select');
    say(io, o, `evaluating ${actions.length} levels on the validation split (${val.count} samples)\n`);
    const levels: LevelTable = c.levelTable(runner, val, actions);
    const same = (a: number, b: number) => runner.key(a) === runner.key(b);
    const msOf = latency ? (k: number) => c.latencyOf(latency, actions[k], batch, same) / batch : undefined;
    const candidates = c.candidatesFromTable(levels, {
      thresholds,
      policyProbs: policy ? c.policyProbabilities(policy, val) : undefined,
      policyMacs: policy?.macs,
      msOf,
      policyMs: policy && latency ? c.measurePolicyLatency(policy, batch) / batch : undefined,
    });
    // An early-exit network's threshold settings are operating points too (at u = 1, FLOPs relative to it).
    const { exitCount } = await import('../models/exits.js');
    if (exitCount(model) > 1 && unit === 'flops') {
      const s = await import('../scaling/index.js');
      const exits = s.EarlyExitRunner.freeze(model, 1);
      try {
        candidates.push(...s.exitCandidates(s.exitTable(exits, val, 'entropy'), 'entropy'));
      } finally {
        exits.dispose();
      }
    }
    const fullAccuracy = c.fixedCurve(levels)[actions.length - 1].accuracy;
    const objective =
      objectiveName === 'min-cost'
        ? ({ kind: 'min-cost', beta: beta!, fullAccuracy, unit } as const)
        : ({ kind: 'min-error', budget: (budgetMs ?? budgetFlops)!, unit } as const);
    const { choice, front } = c.selectOperatingPoint(candidates, objective);
    if (o.json) {
      io.out(JSON.stringify({ run, split: 'validation', samples: val.count, objective, fullAccuracy, choice, front, candidates: candidates.length }, null, 2) + '\n');
      return;
    }
    const costHead = latency ? ['FLOPs ratio', 'ms/sample'] : ['FLOPs ratio'];
    const row = (x: Candidate) => [x === choice ? `* ${x.name}` : x.name, pct(x.accuracy), x.flopsRatio.toFixed(3), ...(latency ? [x.ms!.toFixed(3)] : [])];
    const goal =
      objective.kind === 'min-cost'
        ? `least mean cost with accuracy >= ${beta} x ${pct(fullAccuracy)} = ${pct(beta! * fullAccuracy)}`
        : `least error with mean ${unit === 'ms' ? 'latency' : 'FLOPs ratio'} <= ${objective.budget}${unit === 'ms' ? ' ms' : ''}`;
    io.out(
      `${goal} (validation split, ${val.count} samples, ${candidates.length} candidates)\n` +
        `chosen: ${choice.name}: accuracy ${pct(choice.accuracy)}, FLOPs ratio ${choice.flopsRatio.toFixed(3)}${choice.ms !== undefined ? `, ${choice.ms.toFixed(3)} ms/sample` : ''}\n` +
        `Pareto front (${unit === 'ms' ? 'latency' : 'FLOPs'} vs accuracy):\n` +
        table(['operating point', 'accuracy', ...costHead], front.map(row)),
    );
  } finally {
    runner.dispose();
    policy?.dispose();
    model.dispose();
  }
}

async function latencyTableCommand(run: string, o: Opts, io: Io): Promise<void> {
  if (!o.out) throw new DynnError('latency-table needs --out FILE');
  const batches = o.batch === undefined ? [1, 64] : String(o.batch).split(',').map((s) => numberOption(s.trim(), 'batch', { int: true, min: 1 })!);
  const reps = numberOption(o.reps, 'reps', { int: true, min: 1 });
  const c = await import('../control/index.js');
  const { writeFileAtomic } = await import('../util/fs.js');
  const us = (await actionsOption(o.actions)) ?? c.actionSet();
  const opened = await openRun(run, o);
  try {
    const t = c.measureLatencyTable(opened.model, us, batches, { reps });
    await writeFileAtomic(String(o.out), JSON.stringify(t, null, 2) + '\n');
    if (o.json) io.out(JSON.stringify(t, null, 2) + '\n');
    else io.out(`wrote ${o.out}\n` + table(['u', ...batches.map((b) => `ms @${b}`)], t.levels.map((l) => [l.u, ...batches.map((b) => l.latencyMs[String(b)].toFixed(3))])));
  } finally {
    opened.model.dispose();
  }
}
