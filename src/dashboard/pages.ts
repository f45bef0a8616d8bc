import { escapeHtml, pageHtml, prose } from '../report/html.js';
import { RUN_FILES } from '../report/sources.js';
import { commandLine } from '../report/commands.js';
import type { RunEntry } from './runs.js';

/** URL path of a run's pages. */
export function runPath(name: string): string {
  return `/runs/${encodeURIComponent(name)}`;
}

/** URL path of a run's API. */
export function apiPath(name: string): string {
  return `/api/runs/${encodeURIComponent(name)}`;
}

const DASHBOARD_CSS = `
.bar-top { display: flex; gap: 18px; align-items: baseline; }
.bar-top a { text-decoration: none; }
td.links a { margin-right: 10px; }
#runs td, #runs th { text-align: left; }
span.muted, td .muted { color: var(--muted); }
.status { color: var(--muted); margin: 6px 0; }
.status.error { color: #b3261e; }
.demo { display: grid; grid-template-columns: 300px 1fr; gap: 24px; align-items: start; }
#pad { width: 280px; height: 280px; border: 1px solid var(--line); border-radius: 6px; touch-action: none; cursor: crosshair; background: black; }
#samples { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 8px; max-width: 300px; }
canvas.sample { width: 32px; height: 32px; image-rendering: pixelated; cursor: pointer; border: 1px solid var(--line); }
.controls label { display: block; margin: 8px 0 2px; font-weight: 600; }
.controls input[type=range] { width: 360px; }
dl.readout { display: grid; grid-template-columns: 160px 1fr; gap: 4px 12px; margin: 12px 0; }
dl.readout dt { color: var(--muted); }
dl.readout dd { margin: 0; font-variant-numeric: tabular-nums; }
#prediction { font-size: 20px; font-weight: 600; }
.prob { display: grid; grid-template-columns: 120px 240px 60px; gap: 8px; align-items: center; font-size: 13px; }
.prob .bar { background: #eef1f4; height: 12px; border-radius: 3px; overflow: hidden; display: block; }
.prob .bar span { background: var(--accent); height: 100%; display: block; }
.prob .val { text-align: right; font-variant-numeric: tabular-nums; }
`;

function dashboardPage(title: string, body: string, extraHead = ''): string {
  return pageHtml(title, body, `<style>${DASHBOARD_CSS}</style>${extraHead}`);
}

function header(title: string, sub: string, run?: string): string {
  const nav = run
    ? `<p class="bar-top"><a href="/">all runs</a><a href="${escapeHtml(runPath(run))}/report">report</a><a href="${escapeHtml(runPath(run))}/live">live training</a><a href="${escapeHtml(runPath(run))}/demo">demo</a></p>`
    : '';
  return `<header class="page"><h1>${escapeHtml(title)}</h1><p>${sub}</p>${nav}</header>`;
}

const fmtPct = (x: number | null) => (x === null ? '-' : `${(100 * x).toFixed(2)}%`);
/** Any value as HTML text (run metadata is validated when read; this is the second guard). */
const text = (x: unknown) => escapeHtml(String(x));

/** The list of runs with links to their report, live curves and demo. */
export function indexPage(runsDir: string, runs: RunEntry[]): string {
  const rows = runs
    .map((r) => {
      const p = escapeHtml(runPath(r.name));
      const epochs = `${r.epochs}${r.plannedEpochs ? ` / ${r.plannedEpochs}` : ''}`;
      const state = r.error ? `<span class="muted" title="${escapeHtml(r.error)}">unreadable</span>` : r.live === 'training' ? 'training' : r.live === 'stopped' ? 'stopped' : r.epochs ? 'trained' : 'starting';
      const links = [
        `<a href="${p}/report">report</a>`,
        ...(r.hasSavedReport ? [`<a href="${p}/report.html">saved report</a>`] : []),
        `<a href="${p}/live">live</a>`,
        r.hasOnnx ? `<a href="${p}/demo">demo</a>` : `<a href="${p}/demo" class="muted" title="no ${text(RUN_FILES.onnx)} yet">demo</a>`,
      ].join('');
      return `<tr data-run="${escapeHtml(r.name)}"><td><a href="${p}/report">${escapeHtml(r.name)}</a></td><td>${escapeHtml(r.model ?? '-')}</td><td>${escapeHtml(r.dataset ?? '-')}</td><td>${escapeHtml(r.schedule ?? '-')}</td><td>${escapeHtml(r.gating ?? '-')}</td><td>${text(epochs)}</td><td>${text(typeof r.lastLoss === 'number' ? r.lastLoss.toFixed(4) : '-')}</td><td>${text(typeof r.lastAccuracy === 'number' ? fmtPct(r.lastAccuracy) : '-')}</td><td>${state}</td><td>${escapeHtml(r.updatedAt?.replace('T', ' ').slice(0, 19) ?? '-')}</td><td class="links">${links}</td></tr>`;
    })
    .join('\n');
  const table = runs.length
    ? `<table id="runs"><caption>Runs in ${escapeHtml(runsDir)}</caption><thead><tr><th>run</th><th>model</th><th>data set</th><th>schedule</th><th>gating</th><th>epochs</th><th>last loss</th><th>test acc u=1</th><th>state</th><th>updated</th><th>pages</th></tr></thead><tbody>\n${rows}\n</tbody></table>`
    : `<div class="missing-box" id="no-runs">No runs in ${escapeHtml(runsDir)} yet: <code>dynn train --out ${escapeHtml(runsDir)}/NAME</code> makes one.</div>`;
  return dashboardPage('dynn dashboard', `${header('dynn dashboard', `Runs in <code>${escapeHtml(runsDir)}</code>; this page does not refresh itself.`)}<main>${table}</main>`);
}

/** The live training page: the server renders the charts; the page polls for a fresh fragment. */
export function livePage(run: RunEntry, fragment: string, pollMs: number): string {
  const script = `<script type="module">
const target = document.getElementById('live');
async function poll() {
  try {
    const res = await fetch(${JSON.stringify(apiPath(run.name) + '/live').replace(/</g, '\\u003c')});
    const body = await res.json();
    // The server builds the fragment with every text from the run's files escaped (liveFragment).
    if (res.ok) target.innerHTML = body.html;
  } catch (err) {
    document.getElementById('poll-error').textContent = 'cannot reach the dashboard: ' + err.message;
  }
  setTimeout(poll, ${Number(pollMs)});
}
setTimeout(poll, ${Number(pollMs)});
</script>`;
  return dashboardPage(`${run.name}: live training`, `${header(`${run.name}: training`, `Updates every ${text(pollMs / 1000)} s from the run's checkpoint history and progress file.`, run.name)}<main><p class="status" id="poll-error"></p><div id="live">${fragment}</div></main>${script}`);
}

/** The demo page, or a page saying how to make the model it needs. */
export function demoPage(run: RunEntry, options: { ortUrl: string; wasmPaths: string; samples: number; cascade: { stages: number[]; threshold: number }; controllers: string[] }): string {
  const title = `${run.name}: throttle it live`;
  if (!run.hasOnnx) {
    const cmd = commandLine(['dynn', 'export', run.dir, '--onnx', `${run.dir}/${RUN_FILES.onnx}`]);
    return dashboardPage(
      title,
      `${header(title, 'The exported ONNX model of the run, running in this browser with onnxruntime-web.', run.name)}<main><div class="missing-box" id="no-model"><strong>No ONNX model for this run yet.</strong> The demo runs <code>${escapeHtml(run.dir)}/${text(RUN_FILES.onnx)}</code>; make it with<pre>${escapeHtml(cmd)}</pre>then reload this page.</div></main>`,
    );
  }
  const config = { api: apiPath(run.name), modelUrl: `${runPath(run.name)}/${RUN_FILES.onnx}`, ortUrl: options.ortUrl, wasmPaths: options.wasmPaths, samples: options.samples, cascade: options.cascade };
  const learned = options.controllers.length
    ? `The learned controller${options.controllers.length > 1 ? 's' : ''} of this run (${options.controllers.join(', ')}) run${options.controllers.length > 1 ? '' : 's'} in TF.js and ha${options.controllers.length > 1 ? 've' : 's'} no ONNX export yet, so the page uses dynn's confidence cascade.`
    : 'This run has no learned controller; the page uses dynn’s confidence cascade.';
  const body = `${header(title, `The run's exported model (<code>${escapeHtml(RUN_FILES.onnx)}</code>) running in this browser with onnxruntime-web (wasm, one thread): draw, or pick a test image, and move u.`, run.name)}
<main>
<p class="status" id="status">loading</p>
<p class="status error" id="verify-note" hidden></p>
<div class="demo">
  <div>
    <canvas id="pad" width="280" height="280" aria-label="drawing pad"></canvas>
    <p><button id="clear" type="button">clear</button> <span class="muted" id="truth">draw in white on black</span></p>
    <div id="samples" aria-label="test images"></div>
  </div>
  <div class="controls">
    <label for="u-slider">utilization u: <span id="u-asked">-</span></label>
    <input id="u-slider" type="range" min="0.01" max="1" step="0.005" value="1">
    <label><input id="controller-toggle" type="checkbox"> let a controller choose u (confidence cascade over u = ${escapeHtml(options.cascade.stages.join(', '))})</label>
    <label for="threshold">cascade threshold: <span id="threshold-value">${text(options.cascade.threshold.toFixed(2))}</span></label>
    <input id="threshold" type="range" min="0.3" max="0.999" step="0.01" value="${text(options.cascade.threshold)}">
    <p class="muted">${prose(learned)}</p>
    <dl class="readout">
      <dt>prediction</dt><dd id="prediction">-</dd>
      <dt>u that ran</dt><dd id="u-value">-</dd>
      <dt>level</dt><dd id="level">-</dd>
      <dt>FLOPs</dt><dd id="flops">-</dd>
      <dt>measured latency</dt><dd id="latency">-</dd>
      <dt>controller</dt><dd id="controller-status">-</dd>
    </dl>
    <div id="probs"></div>
  </div>
</div>
</main>
<script type="application/json" id="demo-config">${JSON.stringify(config).replace(/</g, '\\u003c')}</script>
<script type="module" src="/static/demo.js"></script>`;
  return dashboardPage(title, body);
}

/** A page that says something went wrong, with the message. */
export function errorPage(title: string, message: string): string {
  return dashboardPage(title, `${header(title, '')}<main><div class="missing-box">${escapeHtml(message)}</div><p><a href="/">all runs</a></p></main>`);
}
