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
    force: o.force === true,
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

/** `dynn compare RUN... [--json] [--out FILE]`: every run's operating points read from the files beside it. */
export async function compareCommand(runs: string[], o: Opts, io: Io, argv: string[]): Promise<void> {
  if (!runs.length) throw new DynnError('compare needs one or more run directories');
  const { gatherRuns, buildReport, checkPageTarget, writePage } = await import('../report/index.js');
  const { compareRuns, ratioTableRows, RATIO_TABLE_HEAD } = await import('../report/compare.js');
  const { table, pct } = await import('./io.js');
  const ratios = uListOption(o.at, 'at', 'a FLOPs ratio');
  if (o.out !== undefined && (typeof o.out !== 'string' || !o.out)) throw new DynnError('--out needs a file name (the HTML page to write)');
  if (typeof o.out === 'string') await checkPageTarget(o.out, o.force === true);
  const gathered = await gatherRuns(runs, { sweep: false });
  const c = compareRuns(gathered, ratios);
  if (typeof o.out === 'string') {
    const { commandLine } = await import('../report/commands.js');
    const page = await buildReport(gathered, { sections: ['compare'], title: `dynn compare: ${gathered.map((r) => r.name).join(', ')}`, command: commandLine(['dynn', ...argv]) });
    await writePage(o.out, page.html, o.force === true);
  }
  if (o.json) {
    io.out(JSON.stringify(c, null, 2) + '\n');
    return;
  }
  const lines = [`${c.series.length} series on ${c.dataset}${c.testSamples ? ` (${c.testSamples} test samples)` : ''}; FLOPs over each run's full network`];
  lines.push(
    table(
      ['run', 'mechanism', 'points', 'accuracy range', 'FLOPs ratio range'],
      c.series.map((s) => {
        const acc = s.points.map((p) => p.accuracy);
        const fr = s.points.map((p) => p.flopsRatio);
        return [s.run, s.mechanism, s.points.length, `${pct(Math.min(...acc))} - ${pct(Math.max(...acc))}`, `${Math.min(...fr).toFixed(3)} - ${Math.max(...fr).toFixed(3)}`];
      }),
    ).trimEnd(),
  );
  lines.push(`which mechanism wins at ${c.ratios.map((r) => `${Math.round(100 * r)}%`).join(', ')} of the full FLOPs (interpolated):`);
  lines.push(table(RATIO_TABLE_HEAD, ratioTableRows(c)).trimEnd());
  lines.push(...c.findings, ...c.notes.map((n) => `note: ${n}`));
  if (typeof o.out === 'string') lines.push(`wrote ${o.out}`);
  io.out(lines.join('\n') + '\n');
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

/** The viewing commands: report, compare, dashboard. */
export const viewCommands: CommandModule = (cli, io) => {
  cli
    .command('compare [...runs]', 'every run’s operating points on one test set: u curve, per-sample mechanisms, exits, controllers, oracle; which wins at 30/50/70% FLOPs')
    .option('--at <list>', 'FLOPs ratios of the table [default: 0.3,0.5,0.7]')
    .option('--out <file>', 'also write the charts as an HTML page')
    .option('--force', 'replace the --out file even if it is not a page dynn wrote')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn compare runs/fm-vgg runs/fm-r38-acs runs/fm-exits')
    .action(async (runs: string[], o: Opts) => compareCommand(runs, o, io, ['compare', ...runs, ...(o.at !== undefined ? ['--at', String(o.at)] : []), ...(typeof o.out === 'string' ? ['--out', o.out] : [])]));

  cli
    .command('report [...runs]', 'one self-contained HTML report of runs: accuracy vs u and FLOPs, latency, per-class, controllers, gates, exits, training')
    .option('--out <file>', 'the HTML file to write (required; written atomically; an existing file only if it is a page dynn wrote)')
    .option('--force', 'replace the --out file even if it is not a page dynn wrote')
    .option('--u <list>', 'utilizations of the sweeps the report runs [default: every level of the model]')
    .option('--dataset <name>', 'data set of the sweeps the report runs [default: each run’s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--test-limit <n>', 'sweeps the report runs use the first N test samples')
    .option('--no-sweep', 'never run a sweep: use RUN/sweep.json where present, say "missing" elsewhere')
    .option('--save-sweep', 'save each sweep the report runs as RUN/sweep.json (the next report reads it)')
    .option('--no-latency', 'sweeps the report runs skip the latency measurement')
    .option('--sections <list>', 'only these sections: training, accuracy-u, accuracy-flops, latency-u, u-distribution, per-class, dynamic, gates, exits, compare')
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
