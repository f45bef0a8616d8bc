import type { TrainMeta } from '../train/run.js';
import { MODEL_ARG_FLAGS, TRAIN_FLAGS, flagSpec, kebab } from '../train/flags.js';

/** Quotes one argument for a POSIX shell when it needs it. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A command line from its arguments, quoted for a shell. */
export function commandLine(args: (string | number)[]): string {
  return args.map((a) => shellQuote(String(a))).join(' ');
}

/** `dynn train` option names whose trainer field is spelled differently. */
const TRAIN_FIELD: Record<string, string> = { valSamples: 'validationSamples' };
/** Options that do not change what is trained, or that only matter with another option. */
const SKIP = new Set(['out', 'resume', 'json', 'engine', 'workers', 'dataDir', 'curriculum', 'vanilla']);
const ONLY_WITH: Record<string, (o: Record<string, unknown>) => boolean> = {
  sandwichWidths: (o) => o.schedule === 'sandwich',
  inplaceDistill: (o) => o.schedule === 'sandwich',
  inplaceAlpha: (o) => o.schedule === 'sandwich',
  distillAlpha: (o) => o.teacher !== undefined,
  distillT: (o) => o.teacher !== undefined,
};

/**
 * The `dynn train` command line that reproduces a run, built from the options its metadata recorded and the
 * train command's own option table (so a new training option appears here without a change).
 */
export function trainCommandLine(dir: string, meta: TrainMeta, modelArgs: Record<string, unknown>): string {
  const recorded: Record<string, unknown> = { ...meta.options };
  for (const key of Object.keys(MODEL_ARG_FLAGS)) recorded[key] = modelArgs[key];
  const args: (string | number)[] = ['dynn', 'train'];
  for (const opt of TRAIN_FLAGS.map(([flag]) => flagSpec(flag))) {
    if (SKIP.has(opt.name) || (ONLY_WITH[opt.name] && !ONLY_WITH[opt.name](recorded))) continue;
    const value = recorded[TRAIN_FIELD[opt.name] ?? opt.name];
    if (value === undefined || value === null) continue;
    if (opt.negated) {
      if (value === false) args.push(`--no-${kebab(opt.name)}`);
    } else if (Array.isArray(value)) {
      // A list of numbers or words; a value the API gave in another form (branches as objects) has no flag.
      if (value.every((v) => typeof v === 'string' || typeof v === 'number')) args.push(`--${kebab(opt.name)}`, value.join(','));
    } else if (typeof value === 'string' || typeof value === 'number') {
      args.push(`--${kebab(opt.name)}`, value);
    } else if (value === true) {
      args.push(`--${kebab(opt.name)}`);
    }
  }
  args.push('--out', dir);
  return commandLine(args);
}
