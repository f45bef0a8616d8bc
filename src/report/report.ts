import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VERSION } from '../version.js';
import { writeFileAtomic } from '../util/fs.js';
import { isCheckpointFile } from '../checkpoint/checkpoint.js';
import { DynnError } from '../util/errors.js';
import { GENERATOR_META, escapeHtml, pageHtml, prose, tableHtml } from './html.js';
import { percent } from './charts.js';
import { SECTION_ORDER, sections } from './sections.js';
import { gatherRuns, type GatherOptions } from './sources.js';
import { renderSvg } from './vega.js';
import type { Availability, ReportSection, RunData, SectionContent } from './types.js';

/** Options of `buildReport`. */
export interface BuildOptions {
  /** Page title (default: "dynn report: " and the run names). */
  title?: string;
  /** The command line that made the report, shown at the top and in the reproduce list. */
  command?: string;
  /** Only these sections, in page order (default: every registered section). */
  sections?: string[];
}

/** What one section of a built report holds. */
export interface SectionSummary {
  name: string;
  title: string;
  available: boolean;
  /** Why it could not draw. */
  missing?: string;
  /** Chart ids drawn. */
  charts: string[];
  notes: string[];
}

/** A built report: the page and what it contains. */
export interface Report {
  html: string;
  sections: SectionSummary[];
}

function safeId(text: string): string {
  return text.replace(/[^A-Za-z0-9_-]+/g, '-');
}

function latestAccuracy(run: RunData): string {
  const last = run.meta.history[run.meta.history.length - 1];
  if (!last) return '-';
  const us = Object.keys(last.testAccuracy).sort((a, b) => Number(a) - Number(b));
  return us.map((u) => `${percent(last.testAccuracy[u])} @u=${u}`).join(', ');
}

function runsTable(runs: RunData[]): string {
  return tableHtml({
    caption: 'Runs',
    head: ['run', 'folder', 'model', 'data set', 'schedule', 'gating', 'epochs', 'train samples', 'seed', 'last test accuracy'],
    rows: runs.map((r) => [r.name, r.dir, r.model, r.meta.dataset, r.schedule, r.gating, r.meta.epoch, r.meta.trainSamples, r.meta.seed, latestAccuracy(r)]),
  });
}

function commandsHtml(commands: string[]): string {
  if (!commands.length) return '';
  return `<details class="commands"><summary>Command lines</summary><pre>${escapeHtml([...new Set(commands)].join('\n'))}</pre></details>`;
}

async function sectionHtml(section: ReportSection, availability: Availability, content: SectionContent | null): Promise<string> {
  const id = `sec-${safeId(section.name)}`;
  const head = `<h2>${escapeHtml(section.title)}</h2>\n<p class="desc">${prose(section.description)}</p>`;
  if (!availability.ok || !content) {
    const why = availability.ok ? 'nothing to draw' : availability.missing;
    return `<section id="${id}" data-section="${escapeHtml(section.name)}" data-available="false">${head}\n<div class="missing-box"><strong>Not available.</strong> ${prose(why)}</div></section>`;
  }
  const figures: string[] = [];
  for (const chart of content.charts) {
    const svg = await renderSvg(chart.spec);
    figures.push(`<figure class="chart" id="chart-${safeId(chart.id)}" data-chart="${escapeHtml(chart.id)}" aria-label="${escapeHtml(chart.title)}">${svg}</figure>`);
  }
  const notes = content.notes.map((n) => `<div class="note">${prose(n)}</div>`).join('\n');
  const tables = content.tables.length ? `<details class="numbers"><summary>The numbers behind the charts</summary>${content.tables.map(tableHtml).join('\n')}</details>` : '';
  return `<section id="${id}" data-section="${escapeHtml(section.name)}" data-available="true">${head}\n<div class="charts">${figures.join('\n')}</div>\n${notes}\n${tables}\n${commandsHtml(content.commands)}</section>`;
}

/** JSON for a script element: `<` escaped so no string inside can close the element. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c');
}

/**
 * Builds the report page of gathered runs: every section that has data draws its charts (Vega-Lite rendered
 * to inline SVG in Node), every other says what is missing. The page fetches nothing.
 */
export async function buildReport(runs: RunData[], options: BuildOptions = {}): Promise<Report> {
  const names = options.sections ?? SECTION_ORDER;
  for (const n of names) sections.get(n);
  const parts: string[] = [];
  const summaries: SectionSummary[] = [];
  const specs: Record<string, unknown> = {};
  const commands: string[] = [];
  for (const name of SECTION_ORDER.filter((n) => names.includes(n))) {
    const section = sections.get(name);
    const availability = section.available(runs);
    const content = availability.ok ? section.render(runs) : null;
    if (content && !content.charts.length) content.notes.unshift('Nothing to draw for these runs.');
    parts.push(await sectionHtml(section, availability, content));
    summaries.push({
      name,
      title: section.title,
      available: availability.ok && content !== null && content.charts.length > 0,
      ...(availability.ok ? {} : { missing: availability.missing }),
      charts: content?.charts.map((c) => c.id) ?? [],
      notes: content?.notes ?? [],
    });
    for (const c of content?.charts ?? []) specs[c.id] = c.spec;
    commands.push(...(content?.commands ?? []));
  }
  const title = options.title ?? `dynn report: ${runs.map((r) => r.name).join(', ')}`;
  const toc = summaries.map((s) => `<a href="#sec-${safeId(s.name)}"${s.available ? '' : ' class="missing" title="not available"'}>${escapeHtml(s.title)}</a>`).join('');
  const reproduce = [...commands, ...(options.command ? [options.command] : [])];
  const body = `<header class="page"><h1>${escapeHtml(title)}</h1>
<p>Generated ${escapeHtml(new Date().toISOString())} by dynn ${escapeHtml(VERSION)}${options.command ? ` with <code>${escapeHtml(options.command)}</code>` : ''}.</p>
<p>Charts are drawn only from data the runs have; a section without data says what is missing and which command makes it.</p></header>
<nav class="toc">${toc}<a href="#sec-reproduce">Reproduce</a></nav>
<main>
<section id="sec-runs">${runsTable(runs)}</section>
${parts.join('\n')}
<section id="sec-reproduce"><h2>Reproduce</h2><p class="desc">The command lines that produced the data above, in order.</p><pre>${escapeHtml([...new Set(reproduce)].join('\n'))}</pre></section>
</main>
<script type="application/json" id="dynn-report-data">${scriptJson({ dynnVersion: VERSION, runs: runs.map((r) => ({ name: r.name, dir: r.dir, model: r.model, dataset: r.meta.dataset })), sections: summaries, specs })}</script>`;
  return { html: pageHtml(title, body), sections: summaries };
}

/** Options of `writeReport`: how to gather the runs' data and how to build the page. */
export type ReportOptions = GatherOptions & BuildOptions;

/** Gathers the runs' data, builds the report and writes it to `out` atomically. */
export async function writeReport(dirs: string[], out: string, options: ReportOptions & { force?: boolean } = {}): Promise<Report & { runs: RunData[] }> {
  if (!out) throw new DynnError('the report needs an output file');
  for (const n of options.sections ?? []) sections.get(n);
  // Before the sweeps: a refused --out should not cost their minutes.
  await checkPageTarget(out, options.force);
  const runs = await gatherRuns(dirs, options);
  const report = await buildReport(runs, options);
  await writePage(out, report.html, options.force);
  return { ...report, runs };
}

/**
 * Refuses an --out that is a folder, not a regular file (a FIFO would block the read), or a run's own file whatever
 * `force` says; and an existing file that is not a page dynn wrote unless `force`, so anyone's notes are not lost.
 */
export async function checkPageTarget(out: string, force = false): Promise<void> {
  let stat: import('node:fs').Stats;
  try {
    stat = await fsp.stat(out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (stat.isDirectory()) throw new DynnError(`--out ${out} is a folder; give the HTML file to write, e.g. ${path.join(out, 'report.html')}`);
  if (!stat.isFile()) throw new DynnError(`--out ${out} is not a regular file; give the HTML file to write`);
  if (isCheckpointFile(out)) throw new DynnError(`--out ${out} is a file of the run in ${path.dirname(out)}; give the HTML file to write, e.g. ${path.join(path.dirname(out), 'report.html')}`);
  if (force) return;
  const file = await fsp.open(out, 'r');
  try {
    const head = Buffer.alloc(1024);
    const { bytesRead } = await file.read(head, 0, head.length, 0);
    const text = head.subarray(0, bytesRead).toString('utf8');
    // Pages from before the generator tag carry dynn's title.
    if (!text.includes(GENERATOR_META) && !/<title>dynn (report|compare):/.test(text)) {
      throw new DynnError(`${out} exists and is not a page dynn wrote; give another --out, or --force to replace it`);
    }
  } finally {
    await file.close();
  }
}

/** Writes a page to `out` atomically, after {@link checkPageTarget}. */
export async function writePage(out: string, html: string, force = false): Promise<void> {
  await checkPageTarget(out, force);
  await writeFileAtomic(out, html);
}

/** Summary line of a built report's sections, e.g. for the CLI. */
export function sectionLine(s: SectionSummary): string {
  return s.available ? `${s.title}: ${s.charts.length} chart${s.charts.length === 1 ? '' : 's'}` : `${s.title}: not available (${s.missing ?? 'nothing to draw'})`;
}

