import { escapeHtml, prose } from '../report/html.js';
import { lineChart, round, type Row } from '../report/charts.js';
import { renderSvg } from '../report/vega.js';
import { gatherRun, RUN_FILES } from '../report/sources.js';
import { sections } from '../report/sections.js';
import type { Chart } from '../report/types.js';
import { readProgress, type Progress } from './progress.js';
import type { RunEntry } from './runs.js';

function stepCharts(p: Progress): Chart[] {
  const rows: Row[] = [];
  const speed: Row[] = [];
  for (const s of p.steps) {
    const x = (s.epoch - 1) * p.stepsPerEpoch + s.step;
    rows.push({ step: x, value: round(s.loss), series: 'loss', epoch: `epoch ${s.epoch}` });
    speed.push({ step: x, samplesPerSec: round(s.samplesPerSec, 4), epoch: `epoch ${s.epoch}` });
  }
  const step = { field: 'step', title: 'step', as: 'int' as const };
  const loss = lineChart('Training loss (mean over the epoch so far)', rows, step, { field: 'value', title: 'loss' }, { field: 'epoch', title: '' });
  const sp = lineChart('Throughput (over the epoch so far)', speed, step, { field: 'samplesPerSec', title: 'samples / s' }, { field: 'epoch', title: '' });
  for (const spec of [loss, sp]) (spec as { mark: unknown }).mark = { type: 'line', point: p.steps.length <= 60, strokeWidth: 1.5 };
  return [
    { id: 'live-loss', title: 'loss per step', spec: loss },
    { id: 'live-speed', title: 'throughput per step', spec: sp },
  ];
}

/** Any value as HTML text (the fragment is assigned with innerHTML; run metadata is validated when read). */
const text = (x: unknown) => escapeHtml(String(x));

function statusLine(p: Progress | null, epochs: number): string {
  if (!p) {
    return `<p class="note">Epoch-level curves only: this run has no <code>${text(RUN_FILES.progress)}</code> (the trainer writes it step by step when run with the dashboard’s progress recorder). ${text(epochs)} epoch(s) in the checkpoint.</p>`;
  }
  const s = p.last;
  const age = Math.max(0, (Date.now() - Date.parse(p.updatedAt)) / 1000);
  const state = text(p.state);
  if (!s) return `<p class="status" id="live-state" data-state="${state}">${state}: no step yet (updated ${text(age.toFixed(0))} s ago)</p>`;
  const line = `${p.state}: epoch ${s.epoch} / ${p.epochs}, step ${s.step} / ${p.stepsPerEpoch}, loss ${s.loss.toFixed(4)}, ${s.samplesPerSec.toFixed(0)} samples/s, u = ${s.u.toFixed(3)}; updated ${age.toFixed(0)} s ago`;
  return `<p class="status" id="live-state" data-state="${state}">${text(line)}</p>`;
}

/** The live page's content: progress status, per-step curves (with a progress file), per-epoch curves. */
export async function liveFragment(run: RunEntry): Promise<string> {
  const parts: string[] = [];
  let progress: Progress | null = null;
  try {
    progress = await readProgress(run.dir);
  } catch (err) {
    parts.push(`<div class="missing-box">${escapeHtml((err as Error).message)}</div>`);
  }
  parts.push(statusLine(progress, run.epochs));
  const charts: Chart[] = progress && progress.steps.length ? stepCharts(progress) : [];
  if (run.model && !run.error) {
    const data = await gatherRun(run.dir, run.name, { sweep: false });
    const training = sections.get('training');
    const availability = training.available([data]);
    if (availability.ok) charts.push(...training.render([data]).charts);
    else parts.push(`<div class="note">${prose(availability.missing)}</div>`);
  } else if (run.error) {
    parts.push(`<div class="missing-box">${escapeHtml(run.error)}</div>`);
  } else {
    parts.push('<div class="note">No checkpoint yet: the epoch curves appear after the first epoch.</div>');
  }
  const figures = await Promise.all(charts.map(async (c) => `<figure class="chart" data-chart="${escapeHtml(c.id)}">${await renderSvg(c.spec)}</figure>`));
  parts.push(`<div class="charts">${figures.join('\n')}</div>`);
  return parts.join('\n');
}
