import { escapeHtml, pageHtml } from '../report/html.js';
import type { SplitMeta } from './store.js';

/**
 * The head page's policy: scripts and connections to this server only (onnxruntime-web compiles its wasm, hence
 * 'wasm-unsafe-eval'), inline style, no frames, forms or plugins.
 */
export const HEAD_PAGE_CSP = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** URLs the page reads its parts from, passed in its `#split-config` JSON. */
export interface HeadPageConfig {
  ortUrl: string;
  wasmPaths: string;
  /** The page's own script, a dynn module. */
  scriptUrl: string;
  splitUrl: string;
  headUrl: string;
  samplesUrl: string;
}

const CSS = `
.status { color: var(--muted); margin: 6px 0; }
.status.error { color: #b3261e; }
.split { display: grid; grid-template-columns: 340px 1fr; gap: 24px; align-items: start; }
#samples { display: flex; flex-wrap: wrap; gap: 4px; margin: 8px 0; }
canvas.sample { width: 40px; height: 40px; image-rendering: pixelated; cursor: pointer; border: 1px solid var(--line); }
.controls label { display: block; margin: 10px 0 2px; font-weight: 600; }
.controls input[type=number] { width: 110px; }
#results td.class { text-align: left; }
`;

/** The head page of a split: head.onnx in onnxruntime-web, frames to this server's `POST /v1/tail`. */
export function headPage(meta: SplitMeta, config: HeadPageConfig): string {
  const [c, h, w] = meta.input.shape;
  const title = `split head: ${meta.model.model} after ${meta.at}`;
  const body = `<header class="page"><h1>${escapeHtml(title)}</h1>
<p>The head (<code>head.onnx</code>) runs in this browser with onnxruntime-web (wasm, one thread); its features cross the link in dynn's wire format to this server's tail (<code>POST /v1/tail</code>). Input ${escapeHtml(`${h}x${w}x${c}`)}, features ${escapeHtml(meta.features.shape.join('x'))}.</p></header>
<main>
<p class="status" id="status">loading</p>
<div class="split">
  <div class="controls">
    <label>test images (click one to send it)</label>
    <div id="samples" aria-label="test images"></div>
    <label for="files">or your own images</label>
    <input id="files" type="file" accept="image/*" multiple>
    <label for="point">bottleneck</label>
    <select id="point"></select>
    <label for="budget">latency budget, ms (NaviSplit picks the bottleneck)</label>
    <input id="budget" type="number" min="0.1" step="0.1" value="20">
    <label for="bandwidth">link bandwidth, Mbit/s (empty: unshaped)</label>
    <input id="bandwidth" type="number" min="0.001" step="any" placeholder="unshaped">
    <label for="delay">one-way delay, ms</label>
    <input id="delay" type="number" min="0" step="any" value="0">
    <p><button id="send-all" type="button" disabled>send every image</button></p>
  </div>
  <div>
    <p id="summary" class="note">No frame sent yet.</p>
    <table id="results"><caption>Frames sent (newest first): bytes = the request body (a 16-byte frame header and the sample); head = head.onnx and encoding in this page; link = the shaped link's wait; HTTP = the request less the tail's own time</caption>
    <thead><tr><th>image</th><th>class</th><th>bottleneck</th><th>bytes sent</th><th>head ms</th><th>link ms</th><th>HTTP ms</th><th>tail ms</th><th>total ms</th></tr></thead><tbody></tbody></table>
  </div>
</div>
</main>
<script type="application/json" id="split-config">${JSON.stringify(config).replace(/</g, '\\u003c')}</script>
<script type="module" src="${escapeHtml(config.scriptUrl)}"></script>`;
  return pageHtml(title, body, `<style>${CSS}</style>`);
}
