/**
 * The split head page's script, run in the browser as an ES module (served from dist/ with the modules it imports,
 * none of which needs node): head.onnx in onnxruntime-web, each image's features encoded, paced and sent to the
 * tail by `sendFrame`, the same code `dynn head` runs. Text from files and answers goes in with textContent.
 */
import { checkGraphNames, HeadSession, type HeadShape, type SplitOrt } from './core.js';
import { sendFrame, type SentFrame } from './client.js';
import { PointPicker } from './navisplit.js';
import { Shaper } from './shaper.js';
import type { HeadPageConfig } from './page.js';
import type { SplitFigure } from './store.js';

/** What the page reads of `GET /v1/split`. */
interface SplitResponse {
  input: HeadShape['input'];
  splits: { id: number; at: string; bottleneck: HeadShape['bottleneck'] }[];
  points: SplitFigure[];
  classNames: string[];
}

/** The page's view of the split: its first split point, and that split point's points. */
interface SplitInfo extends HeadShape {
  at: string;
  points: SplitFigure[];
  classNames: string[];
}

/** One image the page can send: NCHW float32 in [0, 1]. */
interface Item {
  name: string;
  label: string | null;
  data: Float32Array;
}

/** One frame's row, also kept in `window.dynnSplit` for tests and the console. */
export interface Row {
  name: string;
  label: string | null;
  class: number;
  className: string;
  channels: number;
  bits: number;
  bytes: number;
  headMs: number;
  linkMs: number;
  httpMs: number;
  tailMs: number | null;
  totalMs: number;
}

/** What the page keeps in `window.dynnSplit`. */
export interface PageState {
  rows: Row[];
  runs: number;
  busy: boolean;
  error: string | null;
}

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const config = JSON.parse($('split-config').textContent ?? '{}') as HeadPageConfig;
const state: PageState = { rows: [], runs: 0, busy: false, error: null };
(window as unknown as { dynnSplit: PageState }).dynnSplit = state;
const items: Item[] = [];
let info: SplitInfo;
let head: HeadSession;

function status(text: string, error = false): void {
  const s = $('status');
  s.textContent = text;
  s.className = error ? 'status error' : 'status';
  if (error) state.error = text;
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${url} answered ${res.status} with something that is not JSON`);
  }
  if (!res.ok) throw new Error(String((body as { message?: unknown; error?: unknown }).message ?? (body as { error?: unknown }).error ?? res.status));
  return body as T;
}

/** An element with its text set as text. */
function cell(tag: string, text: string, className = ''): HTMLElement {
  const e = document.createElement(tag);
  e.textContent = text;
  if (className) e.className = className;
  return e;
}

/** A thumbnail of 8-bit pixels in HWC (grey or RGB). */
function thumbnail(bytes: Uint8Array, width: number, height: number, channels: number): HTMLCanvasElement {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const img = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    for (let k = 0; k < 3; k++) img.data[i * 4 + k] = bytes[i * channels + (channels === 1 ? 0 : k)];
    img.data[i * 4 + 3] = 255;
  }
  canvas.getContext('2d')!.putImageData(img, 0, 0);
  canvas.className = 'sample';
  return canvas;
}

/** 8-bit pixels to the head's input, NCHW in [0, 1]; `at(y, x, k)` reads channel k of a pixel. */
function toInput(at: (y: number, x: number, k: number) => number): Float32Array {
  const [c, h, w] = info.input.shape;
  const x = new Float32Array(c * h * w);
  for (let k = 0; k < c; k++) for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) x[(k * h + y) * w + xx] = at(y, xx, k) / 255;
  return x;
}

async function loadSamples(): Promise<void> {
  let s: { width: number; height: number; channels: number; classNames: string[]; labels: number[]; images: string[] };
  try {
    s = await getJson(config.samplesUrl);
  } catch (err) {
    $('samples').textContent = `test images unavailable: ${(err as Error).message}`;
    return;
  }
  const [c, h, w] = info.input.shape;
  if (s.channels !== c || s.height !== h || s.width !== w) {
    $('samples').textContent = `the test images are ${s.height}x${s.width}x${s.channels}; the head takes ${h}x${w}x${c}`;
    return;
  }
  s.images.forEach((b64, i) => {
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const label = String(s.classNames[s.labels[i]] ?? s.labels[i]);
    const item: Item = { name: `test ${i}`, label, data: toInput((y, x, k) => bytes[(y * w + x) * c + k]) };
    items.push(item);
    const thumb = thumbnail(bytes, w, h, c);
    thumb.title = `test image ${i}, label: ${label}`;
    thumb.addEventListener('click', () => void send([item]));
    $('samples').append(thumb);
  });
}

/** A picked file drawn at the head's resolution (the browser scales it), grey as the mean of R, G and B. */
async function fromFile(file: File): Promise<Item> {
  const [c, h, w] = info.input.shape;
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name} is not an image this browser can decode`);
  }
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d')!;
  ctx.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  const px = ctx.getImageData(0, 0, w, h).data;
  const at = (y: number, x: number, k: number) => {
    const p = (y * w + x) * 4;
    return c === 1 ? (px[p] + px[p + 1] + px[p + 2]) / 3 : px[p + k];
  };
  return { name: file.name, label: null, data: toInput(at) };
}

function pointLabel(p: SplitFigure): string {
  return `${p.channels} ch x ${p.bits} bit: ${p.bytesPerSample} B a sample, ${(100 * p.accuracy).toFixed(1)}% accurate`;
}

/** The link and the bottleneck rule the controls ask for; a bad number is an error the page shows. */
function settings(): { picker: PointPicker<SplitFigure>; shaper: Shaper | null } {
  const choice = ($('point') as HTMLSelectElement).value;
  const bandwidth = ($('bandwidth') as HTMLInputElement).value.trim();
  const delay = ($('delay') as HTMLInputElement).value.trim();
  const shaper = bandwidth === '' ? null : new Shaper({ bandwidthMbps: Number(bandwidth), delayMs: delay === '' ? 0 : Number(delay) });
  if (choice === 'budget') {
    const budget = Number(($('budget') as HTMLInputElement).value);
    if (!(budget > 0 && Number.isFinite(budget))) throw new Error(`the latency budget must be a positive number of ms, got ${JSON.stringify(($('budget') as HTMLInputElement).value)}`);
    return { picker: new PointPicker(info.points, { latencyBudgetMs: budget }), shaper };
  }
  return { picker: new PointPicker(info.points, { fixed: info.points[Number(choice)] }), shaper };
}

function show(item: Item, f: SentFrame): void {
  const a = f.answer;
  const tailMs = a.timings?.tailMs ?? null;
  const row: Row = {
    name: item.name,
    label: item.label,
    class: a.classes[0],
    className: String(a.labels[0]),
    channels: f.point.channels,
    bits: f.point.bits,
    bytes: f.bytes,
    headMs: f.headMs,
    linkMs: f.linkMs,
    httpMs: f.requestMs - (tailMs ?? 0),
    tailMs,
    totalMs: f.totalMs,
  };
  state.rows.push(row);
  const tr = document.createElement('tr');
  const ms = (x: number | null) => (x === null ? '-' : x.toFixed(2));
  tr.append(
    cell('td', item.label === null ? item.name : `${item.name} (label: ${item.label})`),
    cell('td', row.className, 'class'),
    cell('td', `${row.channels} ch x ${row.bits} bit`),
    cell('td', String(row.bytes)),
    cell('td', ms(row.headMs)),
    cell('td', ms(row.linkMs)),
    cell('td', ms(row.httpMs)),
    cell('td', ms(row.tailMs)),
    cell('td', ms(row.totalMs)),
  );
  $('results').querySelector('tbody')!.prepend(tr);
  const n = state.rows.length;
  const mean = (f: (r: Row) => number) => (state.rows.reduce((s, r) => s + f(r), 0) / n).toFixed(2);
  const labelled = state.rows.filter((r) => r.label !== null);
  const right = labelled.filter((r) => r.label === r.className).length;
  $('summary').textContent =
    `${n} frame(s): ${mean((r) => r.bytes)} B a frame (the image itself: ${info.input.shape.reduce((a, b) => a * b, 1)} B raw); ` +
    `mean ms: head ${mean((r) => r.headMs)}, link ${mean((r) => r.linkMs)}, HTTP ${mean((r) => r.httpMs)}, tail ${mean((r) => r.tailMs ?? 0)}, total ${mean((r) => r.totalMs)}` +
    (labelled.length ? `; ${right} of ${labelled.length} labelled image(s) right` : '');
}

/** Sends the images one frame each, in order, with one picker and shaper for the run (NaviSplit learns along it). */
async function send(list: Item[]): Promise<void> {
  if (state.busy || !list.length) return;
  state.busy = true;
  ($('send-all') as HTMLButtonElement).disabled = true;
  let current = '';
  try {
    const { picker, shaper } = settings();
    const server = new URL('.', location.href).href;
    for (const [i, item] of list.entries()) {
      current = ` ${item.name}`;
      status(`sending ${i + 1} of ${list.length}`);
      show(item, await sendFrame({ head, picker, shaper, server }, item.data));
    }
    state.error = null;
    status('ready');
  } catch (err) {
    status(`cannot send${current}: ${(err as Error).message}`, true);
  } finally {
    state.runs++;
    state.busy = false;
    ($('send-all') as HTMLButtonElement).disabled = false;
  }
}

async function main(): Promise<void> {
  try {
    status('loading onnxruntime-web');
    const ort = await import(config.ortUrl);
    ort.env.wasm.wasmPaths = config.wasmPaths;
    ort.env.wasm.numThreads = 1;
    status('loading the split');
    const all = await getJson<SplitResponse>(config.splitUrl);
    const first = all.splits[0];
    info = { input: all.input, at: first.at, bottleneck: first.bottleneck, points: all.points.filter((p) => p.at === first.at), classNames: all.classNames };
    const res = await fetch(config.headUrl);
    if (!res.ok) throw new Error(`${config.headUrl} answered ${res.status}`);
    const session = await ort.InferenceSession.create(new Uint8Array(await res.arrayBuffer()), { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
    checkGraphNames(config.headUrl, 'head', session);
    head = new HeadSession(ort as SplitOrt, session, info);
    // One untimed run: onnxruntime-web sets up on its first, which is not the head's compute.
    const [c, h, w] = info.input.shape;
    await head.run(new Float32Array(c * h * w), 1, info.points[0].channels, info.points[0].bits);
  } catch (err) {
    status(`cannot load the head: ${(err as Error).message}`, true);
    return;
  }
  const select = $('point') as HTMLSelectElement;
  const best = info.points.reduce((b, p, i) => (p.accuracy > info.points[b].accuracy ? i : b), 0);
  info.points.forEach((p, i) => {
    const o = cell('option', pointLabel(p)) as HTMLOptionElement;
    o.value = String(i);
    o.selected = i === best;
    select.append(o);
  });
  const budget = cell('option', 'NaviSplit: the most accurate within the latency budget') as HTMLOptionElement;
  budget.value = 'budget';
  select.append(budget);
  await loadSamples();
  $('files').addEventListener('change', async () => {
    const files = [...(($('files') as HTMLInputElement).files ?? [])];
    const picked: Item[] = [];
    try {
      for (const f of files) picked.push(await fromFile(f));
    } catch (err) {
      status((err as Error).message, true);
      return;
    }
    items.push(...picked);
    await send(picked);
  });
  const all = $('send-all') as HTMLButtonElement;
  all.addEventListener('click', () => void send(items));
  all.disabled = false;
  status('ready');
}

void main();
