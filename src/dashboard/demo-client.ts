/**
 * The demo page's script (runs in the browser, served as an ES module): loads the run's ONNX model with
 * onnxruntime-web (wasm, served locally), reads an image from a drawing canvas or a test image, and runs it at
 * the u of the slider, or lets a confidence cascade choose u. It reads its settings from the page's
 * `#demo-config` JSON. Kept as plain JavaScript in a string so it ships in dist/ with the server.
 */
export const DEMO_SCRIPT = String.raw`
const config = JSON.parse(document.getElementById('demo-config').textContent);
const $ = (id) => document.getElementById(id);
const status = (text, error = false) => { const s = $('status'); s.textContent = text; s.className = error ? 'status error' : 'status'; };
const si = (n) => n >= 1e9 ? (n / 1e9).toFixed(2) + 'G' : n >= 1e6 ? (n / 1e6).toFixed(2) + 'M' : n >= 1e3 ? (n / 1e3).toFixed(2) + 'k' : String(Math.round(n));

let ort, session, meta, io, classNames;
let input = null;
let busy = false, pending = false;
const warmed = new Set();

/** The exported level that runs at u: the most expensive whose minU <= u (the graph's If chain). */
function levelIndexFor(u) {
  let i = 0;
  for (let j = 1; j < meta.levels.length; j++) if (u >= meta.levels[j].minU) i = j;
  return i;
}

function softmax(scores) {
  const m = Math.max(...scores);
  const e = scores.map((s) => Math.exp(s - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

async function runOnce(level) {
  const [c, h, w] = meta.input.shape;
  const feeds = {
    [io.images]: new ort.Tensor('float32', input, [1, c, h, w]),
    [io.u]: new ort.Tensor('float32', Float32Array.of(level.u), []),
  };
  // A model exported with a temporal controller also takes the action the frame ran at (unused here).
  if (meta.controller && meta.controller.temporal) feeds[io.action] = new ort.Tensor('float32', Float32Array.of(meta.controller.temporal.start), [1]);
  const out = await session.run(feeds);
  return Array.from(out[io.scores].data);
}

/** Runs the input at one level: one untimed run per new level, then the mean over >= 3 runs and >= 20 ms. */
async function measure(index) {
  const level = meta.levels[index];
  if (!warmed.has(index)) { await runOnce(level); warmed.add(index); }
  let runs = 0, scores;
  const t0 = performance.now();
  while (runs < 3 || (performance.now() - t0 < 20 && runs < 200)) { scores = await runOnce(level); runs++; }
  const ms = (performance.now() - t0) / runs;
  return { level, index, scores, probs: softmax(scores), ms, runs };
}

/** An element with a class and text; class names come from the model file, so they go in as text, never as HTML. */
function el(tag, className, text) {
  const e = document.createElement(tag);
  e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showProbs(probs) {
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  $('probs').replaceChildren(...order.map(([p, i]) => {
    const row = el('div', 'prob');
    const bar = el('span', 'bar');
    const fill = document.createElement('span');
    fill.style.width = (100 * p).toFixed(1) + '%';
    bar.append(fill);
    row.append(el('span', 'name', String(classNames[i])), bar, el('span', 'val', (100 * p).toFixed(1) + '%'));
    return row;
  }));
}

function showResult(r, flops, ms, runs, note) {
  const best = r.probs.indexOf(Math.max(...r.probs));
  // What ran, for tests and for the console: the exact input, the level's u and the scores.
  window.dynnDemo = { input: Array.from(input), u: r.level.u, scores: r.scores, flops, ms };
  $('prediction').textContent = classNames[best] + ' (' + (100 * r.probs[best]).toFixed(1) + '%)';
  $('u-value').textContent = r.level.u.toFixed(3);
  $('level').textContent = (r.index + 1) + ' of ' + meta.levels.length + ' (network level ' + r.level.level + ')';
  $('flops').textContent = si(flops) + ' FLOPs (' + (100 * flops / meta.levels[meta.levels.length - 1].flops).toFixed(1) + '% of u = 1)';
  $('flops').dataset.flops = String(flops);
  $('latency').textContent = ms.toFixed(3) + ' ms (mean of ' + runs + ' runs, batch 1, onnxruntime-web wasm)';
  $('latency').dataset.ms = String(ms);
  $('controller-status').textContent = note;
  showProbs(r.probs);
}

async function fixedU() {
  const u = Number($('u-slider').value);
  $('u-asked').textContent = u.toFixed(3);
  const r = await measure(levelIndexFor(u));
  showResult(r, r.level.flops, r.ms, r.runs, 'u set by the slider');
}

/** A confidence cascade (dynn's cascade controller): the stages in turn until the top probability reaches the threshold. */
async function cascade() {
  const threshold = Number($('threshold').value);
  $('threshold-value').textContent = threshold.toFixed(2);
  const stages = [...new Set(config.cascade.stages.map(levelIndexFor))].sort((a, b) => a - b);
  let flops = 0, ms = 0, runs = 0, r, steps = [];
  for (const s of stages) {
    r = await measure(s);
    flops += r.level.flops; ms += r.ms; runs += r.runs;
    const top = Math.max(...r.probs);
    steps.push('u=' + r.level.u.toFixed(2) + ' p=' + top.toFixed(3));
    if (top >= threshold) break;
  }
  $('u-slider').value = String(r.level.u);
  $('u-asked').textContent = 'chosen by the controller';
  showResult(r, flops, ms, runs, 'cascade (threshold ' + threshold.toFixed(2) + '): ' + steps.join(' → ') + '; cost counts every stage run');
}

async function update() {
  if (!session || !input) return;
  if (busy) { pending = true; return; }
  busy = true;
  try {
    do {
      pending = false;
      if ($('controller-toggle').checked) await cascade(); else await fixedU();
    } while (pending);
    status('ready');
  } catch (err) {
    status('inference failed: ' + err.message, true);
  } finally {
    busy = false;
  }
}

// Drawing: a large canvas, read back at the model's resolution (box-averaged by the browser's downscale).
const pad = $('pad');
const ctx = pad.getContext('2d');
function clearPad() { ctx.fillStyle = 'black'; ctx.fillRect(0, 0, pad.width, pad.height); }
function readPad() {
  const [c, h, w] = meta.input.shape;
  const small = document.createElement('canvas');
  small.width = w; small.height = h;
  const sctx = small.getContext('2d');
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = 'high';
  sctx.drawImage(pad, 0, 0, w, h);
  const px = sctx.getImageData(0, 0, w, h).data;
  const x = new Float32Array(c * h * w);
  for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) {
    const p = (y * w + xx) * 4;
    for (let k = 0; k < c; k++) x[(k * h + y) * w + xx] = (c === 1 ? (px[p] + px[p + 1] + px[p + 2]) / 3 : px[p + k]) / 255;
  }
  input = x;
}
let drawing = false;
function at(e) { const b = pad.getBoundingClientRect(); return [(e.clientX - b.left) * pad.width / b.width, (e.clientY - b.top) * pad.height / b.height]; }
pad.addEventListener('pointerdown', (e) => { drawing = true; const [x, y] = at(e); ctx.beginPath(); ctx.moveTo(x, y); pad.setPointerCapture(e.pointerId); });
pad.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  const [x, y] = at(e);
  ctx.strokeStyle = 'white'; ctx.lineWidth = pad.width / 12; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.lineTo(x, y); ctx.stroke();
});
const endStroke = () => { if (!drawing) return; drawing = false; $('truth').textContent = 'your drawing'; readPad(); update(); };
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointerleave', endStroke);
$('clear').addEventListener('click', () => { clearPad(); $('truth').textContent = 'draw in white on black'; readPad(); update(); });

/** Paints a test image (HWC bytes) on the pad, scaled up without smoothing, and runs it. */
function showSample(s, bytes) {
  const img = new ImageData(s.width, s.height);
  for (let i = 0; i < s.width * s.height; i++) {
    const r = bytes[i * s.channels], g = bytes[i * s.channels + (s.channels > 1 ? 1 : 0)], b = bytes[i * s.channels + (s.channels > 2 ? 2 : 0)];
    img.data.set([r, g, b, 255], i * 4);
  }
  const tmp = document.createElement('canvas');
  tmp.width = s.width; tmp.height = s.height;
  tmp.getContext('2d').putImageData(img, 0, 0);
  return tmp;
}

async function loadSamples() {
  const res = await fetch(config.api + '/samples?count=' + config.samples);
  const s = await res.json();
  if (!res.ok) { $('samples').textContent = 'test images unavailable: ' + s.error; return; }
  $('samples').replaceChildren();
  s.images.forEach((b64, i) => {
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    const small = showSample(s, bytes);
    small.className = 'sample';
    small.title = 'label: ' + s.classNames[s.labels[i]];
    small.dataset.label = s.classNames[s.labels[i]];
    small.addEventListener('click', () => {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(small, 0, 0, pad.width, pad.height);
      $('truth').textContent = 'test image, label: ' + s.classNames[s.labels[i]];
      readPad();
      update();
    });
    $('samples').appendChild(small);
  });
}

$('u-slider').addEventListener('input', () => { if ($('controller-toggle').checked) $('controller-toggle').checked = false; update(); });
$('controller-toggle').addEventListener('change', () => update());
$('threshold').addEventListener('input', () => { if ($('controller-toggle').checked) update(); });

async function main() {
  clearPad();
  try {
    status('loading onnxruntime-web');
    ort = await import(config.ortUrl);
    ort.env.wasm.wasmPaths = config.wasmPaths;
    ort.env.wasm.numThreads = 1;
    const info = await (await fetch(config.api + '/model')).json();
    if (info.error) throw new Error(info.error);
    meta = info.metadata; io = info.io; classNames = meta.classNames;
    if (info.verified === false) { const note = $('verify-note'); note.textContent = 'unverified model: ' + info.unverifiedReason; note.hidden = false; }
    status('loading the model');
    const bytes = new Uint8Array(await (await fetch(config.modelUrl)).arrayBuffer());
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
    $('u-slider').min = String(meta.levels[0].u);
    status('ready');
  } catch (err) {
    status('cannot load the model: ' + err.message, true);
    return;
  }
  readPad();
  await loadSamples().catch((err) => { $('samples').textContent = 'test images unavailable: ' + err.message; });
  const first = document.querySelector('#samples canvas');
  if (first) first.click(); else update();
}
main();
`;
