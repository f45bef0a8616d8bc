import type { CommandModule } from './types.js';
import { choiceOption, numberOption, uListOption, type Io } from './io.js';
import { DynnError } from '../util/errors.js';
import { httpFlags, httpOptions } from './http-options.js';

type Opts = Record<string, unknown>;

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;

/** `dynn report RUN... --out FILE`. */
export async function reportCommand(runs: string[], o: Opts, io: Io, argv: string[]): Promise<void> {
  if (!o.out || typeof o.out !== 'string') throw new DynnError('report needs --out FILE (the HTML file to write)');
  if (!runs.length) throw new DynnError('report needs one or more run directories');
  const { writeReport, sectionLine } = await import('../report/index.js');
  const { commandLine } = await import('../report/commands.js');
  const sectionNames = o.sections === undefined ? undefined : String(o.sections).split(',').map((s) => s.trim()).filter(Boolean);
  const report = await writeReport(runs, o.out, {
    sweep: o.sweep !== false,
    us: uListOption(o.u),
    dataset: o.dataset as string | undefined,
    dataDir: o.dataDir as string | undefined,
    testLimit: numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }),
    latency: o.latency !== false,
    saveSweep: Boolean(o.saveSweep),
    engine: choiceOption(o.engine, 'engine', ENGINES),
    title: o.title as string | undefined,
    sections: sectionNames,
    command: commandLine(['dynn', ...argv]),
    onProgress: (m) => {
      if (!o.json) io.err(m + '\n');
    },
  });
  if (o.json) io.out(JSON.stringify({ out: o.out, sections: report.sections }, null, 2) + '\n');
  else io.out(report.sections.map((s) => `  ${sectionLine(s)}\n`).join('') + `wrote ${o.out}\n`);
}

/** `dynn dashboard --runs DIR [--port N]`: serves until interrupted. */
export async function dashboardCommand(o: Opts, io: Io): Promise<void> {
  const http = httpOptions(o);
  const { startDashboard } = await import('../dashboard/index.js');
  const server = await startDashboard({
    ...http,
    runsDir: String(o.runs ?? 'runs'),
    port: numberOption(o.port, 'port', { int: true, min: 0, max: 65535 }) ?? 8080,
    host: String(o.host ?? '127.0.0.1'),
    dataDir: o.dataDir as string | undefined,
  });
  io.out(`dynn dashboard: ${server.url} (runs in ${o.runs ?? 'runs'}); Ctrl-C stops it\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

/** The viewing commands: report, dashboard. */
export const viewCommands: CommandModule = (cli, io) => {
  cli
    .command('report [...runs]', 'one self-contained HTML report of runs: accuracy vs u and FLOPs, latency, per-class, controllers, gates, exits, training')
    .option('--out <file>', 'the HTML file to write (required; written atomically)')
    .option('--u <list>', 'utilizations of the sweeps the report runs [default: every level of the model]')
    .option('--dataset <name>', 'data set of the sweeps the report runs [default: each run’s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--test-limit <n>', 'sweeps the report runs use the first N test samples')
    .option('--no-sweep', 'never run a sweep: use RUN/sweep.json where present, say "missing" elsewhere')
    .option('--save-sweep', 'save each sweep the report runs as RUN/sweep.json (the next report reads it)')
    .option('--no-latency', 'sweeps the report runs skip the latency measurement')
    .option('--sections <list>', 'only these sections: training, accuracy-u, accuracy-flops, latency-u, u-distribution, per-class, dynamic, gates, exits')
    .option('--title <text>', 'page title')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'print what each section drew (or why not) as JSON')
    .example('dynn report runs/fm-vgg runs/fm-vanilla --out report.html')
    .example('dynn report runs/fm-vgg --test-limit 2000 --save-sweep --out runs/fm-vgg/report.html')
    .action(async (runs: string[], o: Opts) => reportCommand(runs, o, io, reportArgv(runs, o)));

  const dashboard = cli
    .command('dashboard', 'local web app: runs and their reports, live training curves, and the ONNX model throttled in the browser')
    .option('--runs <dir>', 'folder of run directories [default: runs]')
    .option('--port <n>', 'port [default: 8080; 0 picks a free one]')
    .option('--host <addr>', 'address to bind [default: 127.0.0.1]')
    .option('--data-dir <dir>', 'where the data set files are (test images of the demo page)');
  httpFlags(dashboard)
    .example('dynn dashboard --runs runs/ --port 8080')
    .action(async (o: Opts) => dashboardCommand(o, io));
};

/** The report's own command line, for the page: runs and the options as given. */
function reportArgv(runs: string[], o: Opts): string[] {
  const args = ['report', ...runs];
  const flags: [string, string][] = [['u', 'u'], ['dataset', 'dataset'], ['dataDir', 'data-dir'], ['testLimit', 'test-limit'], ['sections', 'sections'], ['title', 'title'], ['engine', 'engine']];
  for (const [key, flag] of flags) if (o[key] !== undefined) args.push(`--${flag}`, String(o[key]));
  if (o.sweep === false) args.push('--no-sweep');
  if (o.saveSweep) args.push('--save-sweep');
  if (o.latency === false) args.push('--no-latency');
  args.push('--out', String(o.out));
  return args;
}
