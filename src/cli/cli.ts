import { cac, type CAC, type Command } from 'cac';
import { VERSION } from '../version.js';
import { DynnError } from '../util/errors.js';
import { processIo, type Io } from './io.js';
import { controlCommands } from './control-commands.js';
import { deployCommands } from './deploy-commands.js';
import { scalingCommands } from './scaling-commands.js';
import { TRAIN_FLAGS } from '../train/flags.js';
import type { CommandModule } from './types.js';
import { viewCommands } from './view-commands.js';
import { serveCommands } from './serve-commands.js';

export type { CommandModule } from './types.js';

/** Adds the shared training options to a command. */
export function withTrainOptions(cmd: Command): Command {
  for (const [flag, desc] of TRAIN_FLAGS) cmd.option(flag, desc);
  return cmd;
}

/** The core commands: demo, train, sweep, info, models. */
const coreCommands: CommandModule = (cli, io) => {
  withTrainOptions(cli.command('demo', 'train a small throttleable network on embedded digits and sweep u (about a minute)'))
    .option('--out <dir>', 'also save the run here')
    .option('--force', 'replace the run (or the non-empty directory) in --out')
    .option('--u <list>', 'utilizations to report [default: 0.125,0.25,0.5,0.75,1]')
    .action(async (o) => (await import('./commands.js')).demoCommand(o, io));

  withTrainOptions(cli.command('train', 'train a throttleable network; a checkpoint is written after every epoch'))
    .option('--out <dir>', 'run directory (required)')
    .option('--resume', 'continue the run in --out from its last checkpoint, with the options it recorded')
    .option('--force', 'replace the run in --out, or train into a non-empty directory that holds none')
    .example('dynn train --model vgg-w --dataset fashion-mnist --epochs 3 --out runs/fm-vgg')
    .action(async (o) => (await import('./commands.js')).trainCommand(o, io));

  cli
    .command('sweep <run>', 'accuracy, per-class accuracy, FLOPs and measured latency at each u')
    .option('--u <list>', 'utilizations [default: 0.125,0.25,0.5,0.75,1]')
    .option('--dataset <name>', 'evaluation data set [default: the run’s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--test-limit <n>', 'use the first N test samples')
    .option('--gating <mode>', 'nested or independent [default: nested]')
    .option('--seed <n>', 'seed of independent gating choices [default: 0]')
    .option('--no-latency', 'skip the latency measurement')
    .option('--thresholds <list>', 'early-exit models: sweep exit thresholds instead (each one number, or one per exit joined by :)')
    .option('--rule <name>', 'with --thresholds: entropy (BranchyNet) or confidence (top probability) [default: entropy]')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn sweep runs/fm-vgg --dataset fashion-mnist --u 0.125,0.25,0.5,0.75,1 --json')
    .example('dynn sweep runs/fm-exits --thresholds 0.05,0.1,0.2,0.4 --json')
    .action(async (run, o) => (await import('./commands.js')).sweepCommand(run, o, io));

  cli
    .command('info <run>', 'architecture, cost per u (FLOPs, MACs, active parameters) and training history of a run')
    .option('--u <list>', 'utilizations [default: 0.125,0.25,0.5,0.75,1]')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'machine-readable output on stdout')
    .action(async (run, o) => (await import('./commands.js')).infoCommand(run, o, io));

  cli
    .command('models', 'list the registered models')
    .option('--json', 'machine-readable output on stdout')
    .action(async (o) => (await import('./commands.js')).modelsCommand(o, io));
};

/** Every command group, in help order. A new group is one module and one entry here. */
const COMMAND_MODULES: CommandModule[] = [coreCommands, deployCommands, controlCommands, scalingCommands, viewCommands, serveCommands];

/** Builds the command-line interface; `io` receives all output. */
export function buildCli(io: Io = processIo): CAC {
  const cli = cac('dynn');
  for (const register of COMMAND_MODULES) register(cli, io);
  cli.help();
  cli.version(VERSION);
  return cli;
}

/**
 * Runs the CLI on `argv` (without the node and script entries) and returns the exit code: 0 on success,
 * 1 for an error a user caused (its message, no stack), 2 for a usage error.
 */
export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  const cli = buildCli(io);
  try {
    cli.parse(['node', 'dynn', ...argv], { run: false });
    if (!cli.matchedCommand) {
      if (cli.options.help || cli.options.version) return 0;
      if (cli.args.length) throw new DynnError(`unknown command "${cli.args[0]}"; expected one of ${cli.commands.map((c) => c.name).filter(Boolean).join(', ')}`);
      cli.outputHelp();
      return 0;
    }
    await cli.runMatchedCommand();
    return 0;
  } catch (err) {
    if (err instanceof DynnError) {
      io.err(`dynn: ${err.message}\n`);
      return 1;
    }
    if (err instanceof Error && err.name === 'CACError') {
      io.err(`dynn: ${err.message}\n(see dynn --help)\n`);
      return 2;
    }
    throw err;
  }
}
