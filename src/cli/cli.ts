import { cac, type CAC, type Command } from 'cac';
import { VERSION } from '../version.js';
import { DynnError, StoppedError } from '../util/errors.js';
import { processIo, type Io } from './io.js';
import { controlCommands } from './control-commands.js';
import { deployCommands } from './deploy-commands.js';
import { scalingCommands } from './scaling-commands.js';
import { TRAIN_FLAGS } from '../train/flags.js';
import type { CommandModule } from './types.js';
import { viewCommands } from './view-commands.js';
import { serveCommands } from './serve-commands.js';
import { splitCommands } from './split-commands.js';

export type { CommandModule } from './types.js';

/** Adds the shared training options to a command. */
export function withTrainOptions(cmd: Command): Command {
  for (const [flag, desc] of TRAIN_FLAGS) cmd.option(flag, desc);
  return cmd;
}

/** The core commands: demo, train, sweep, info, models. */
const coreCommands: CommandModule = (cli, io) => {
  withTrainOptions(cli.command('demo', 'train a small throttleable network on embedded digits and sweep u (about a minute; vgg-w on mnist for 2 epochs unless --model, --dataset or --epochs say otherwise)'))
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
const COMMAND_MODULES: CommandModule[] = [coreCommands, deployCommands, controlCommands, scalingCommands, viewCommands, serveCommands, splitCommands];

/** Builds the command-line interface; `io` receives all output. */
export function buildCli(io: Io = processIo): CAC {
  const cli = cac('dynn');
  for (const register of COMMAND_MODULES) register(cli, io);
  cli.help();
  cli.version(VERSION);
  return cli;
}

/**
 * The value options (`--u`, `--lr`, ...) of the command `argv` names, and the global ones: the flags that take
 * the next argument as their value, even when it starts with a dash.
 */
function valueFlags(cli: CAC, argv: string[]): Set<string> {
  const name = argv.find((a) => !a.startsWith('-'));
  const command = cli.commands.find((c) => c.name === name);
  const options = [...cli.globalCommand.options, ...(command ? command.options : cli.commands.flatMap((c) => c.options))];
  return new Set(options.filter((o) => !o.isBoolean).flatMap((o) => o.rawName.match(/--[\w-]+/g) ?? []));
}

/**
 * Prepares argv for the parser: a negative number after a value option is its value (`--u -1` would
 * otherwise be read as an unknown option `-1`), and an empty value is refused here, where it can be named
 * (the parser turns "" into 0). Arguments after `--` are left as they are.
 */
export function normalizeArgv(argv: string[], flags: Set<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    if (!flags.has(flag)) {
      out.push(argv[i]);
    } else if (inline !== undefined) {
      if (inline.trim() === '') throw new UsageError(`${flag} needs a value, got an empty one`);
      out.push(argv[i]);
    } else if (i + 1 < argv.length && argv[i + 1].trim() === '') {
      throw new UsageError(`${flag} needs a value, got an empty one`);
    } else if (i + 1 < argv.length && /^-(\d|\.\d|Infinity)/.test(argv[i + 1])) {
      out.push(`${flag}=${argv[++i]}`);
    } else {
      out.push(argv[i]);
    }
  }
  return out;
}

/** A command line that cannot be parsed: exit code 2, as for the parser's own errors. */
class UsageError extends DynnError {}

/** Whether an error is the operating system's answer to a user's request (a file missing, a disk full). */
function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && typeof (err as NodeJS.ErrnoException).syscall === 'string';
}

/**
 * Prints a failure the way a user should see it and returns the exit code: 1 with the message alone for an
 * error a user caused (dynn's own or the system's), 2 for a usage error, 70 (EX_SOFTWARE) with the stack
 * for anything else, which is a bug.
 */
export function reportFailure(err: unknown, io: Io = processIo): number {
  if (err instanceof UsageError || (err instanceof Error && err.name === 'CACError')) {
    io.err(`dynn: ${err.message}\n(see dynn --help)\n`);
    return 2;
  }
  if (err instanceof StoppedError) {
    io.err(`dynn: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof DynnError || isSystemError(err)) {
    io.err(`dynn: ${err.message}\n`);
    return 1;
  }
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  io.err(`dynn: internal error (a bug in dynn; please report it with the command that caused it):\n${detail}\n`);
  return 70;
}

/**
 * Makes every stray failure (a timer's, a worker's, a rejected promise nobody awaited) end the process through
 * {@link reportFailure}. Install it before TF.js's wasm backend loads: its Emscripten module adds a listener
 * that rethrows, which prints the error after a misleading `tf-backend-wasm ... throw ex`.
 */
export function installFailureHandlers(io: Io = processIo): void {
  const fail = (err: unknown) => process.exit(reportFailure(err, io));
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
}

/**
 * The command `argv` (without the node and script entries) runs, as the parser matches it, options before its
 * name included (`dynn --port 0 serve M`); undefined for help, the version, no command or a line that does not
 * parse (the run reports those). Nothing is printed or run.
 */
export function commandOf(argv: string[]): string | undefined {
  const own = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  if (own.some((a) => a === '--help' || a === '-h' || a === '--version' || a === '-v')) return undefined;
  const quiet: Io = { out: () => {}, err: () => {}, errIsTTY: false };
  try {
    const cli = buildCli(quiet);
    cli.parse(['node', 'dynn', ...normalizeArgv(argv, valueFlags(cli, argv))], { run: false });
    return cli.matchedCommand?.name;
  } catch {
    return undefined;
  }
}

/**
 * Runs the CLI on `argv` (without the node and script entries) and returns the exit code: 0 on success,
 * 1 for an error a user caused (its message, no stack), 2 for a usage error, 70 for a bug.
 */
export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  const cli = buildCli(io);
  try {
    cli.parse(['node', 'dynn', ...normalizeArgv(argv, valueFlags(cli, argv))], { run: false });
    if (!cli.matchedCommand) {
      if (cli.options.help || cli.options.version) return 0;
      if (cli.args.length) throw new UsageError(`unknown command "${cli.args[0]}"; expected one of ${cli.commands.map((c) => c.name).filter(Boolean).join(', ')}`);
      cli.outputHelp();
      return 0;
    }
    await cli.runMatchedCommand();
    return 0;
  } catch (err) {
    return reportFailure(err, io);
  }
}
