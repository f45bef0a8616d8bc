/**
 * Split computing on Fashion-MNIST: does sending a learned bottleneck's features beat sending the input, raw or
 * as PNG (the seed's claim)? Trains (or reuses) a `vgg-w` at u = 1, trains one slimmable bottleneck per split
 * point by head distillation into one split folder, and reports bytes per sample against accuracy for every
 * bottleneck beside the raw and PNG input; then end-to-end latency per frame over loopback HTTP with the head's
 * token-bucket shaper at 1, 10 and 100 Mbit/s for split at fixed points (`dynn head` against the tail server),
 * NaviSplit choosing the split point and bottleneck within `--budget-ms`, device-only (the whole network in the
 * head process, nothing sent) and server-only (the image sent raw or as PNG, the whole network on the server).
 *
 * Usage: npm run bench:split -- [--run RUN] [--train 6000] [--test 1000] [--epochs 2] [--split-epochs 2]
 *        [--at pool1,pool2] [--frames 40] [--delay-ms 0] [--budget-ms 15]. Writes .bench/split.json.
 */
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import ort from 'onnxruntime-node';
import { PNG } from 'pngjs';
import { initEngine } from '../src/engine/backend.js';
import { train as trainRun } from '../src/train/trainer.js';
import { loadRun } from '../src/train/run.js';
import { loadDataset } from '../src/data/datasets.js';
import { head as firstOf, toFloat } from '../src/data/imageset.js';
import { exportOnnx } from '../src/export/export.js';
import { createHttpApp } from '../src/util/http.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { splitNetwork, saveSplit, measureSplit, SplitServer, runHead, Shaper, pngBytes, type SplitMeta } from '../src/split/index.js';
import { benchArgs } from './common.js';

const { value, num, list } = benchArgs();
const trainLimit = num('train', 6000);
const testLimit = num('test', 1000);
const epochs = num('epochs', 2);
const splitEpochs = num('split-epochs', 2);
const frames = num('frames', 40);
const delayMs = Number(value('delay-ms') ?? 0);
const budgetMs = Number(value('budget-ms') ?? 15);
const ats = list('at', 'pool1,pool2');
const bandwidths = [1, 10, 100];
const outDir = '.bench';
const log = (s: string) => process.stderr.write(s + '\n');
const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

await initEngine('auto');
let runDir = value('run');
if (!runDir) {
  runDir = path.join(outDir, 'split-run');
  log(`training vgg-w at u = 1 on ${trainLimit} Fashion-MNIST images, ${epochs} epochs, into ${runDir}`);
  const r = await trainRun({ model: 'vgg-w', dataset: 'fashion-mnist', trainLimit, testLimit, epochs, schedule: 'vanilla', workers: 0, out: runDir, force: true });
  r.model.dispose();
}
const { model, meta } = await loadRun(runDir);
const data = await loadDataset('fashion-mnist', { trainLimit, testLimit, seed: meta.seed });
const trainSet = firstOf(data.train, data.train.count - (meta.validationSamples ?? 0));

// Bytes against accuracy, one bottleneck per split point (one folder), every (channels, bits) of the default set.
const t0 = performance.now();
log(`split after ${ats.join(', ')}: head distillation, ${splitEpochs} epoch(s) on ${trainSet.count} images`);
const trained = splitNetwork(model, trainSet, data.test, { at: ats, epochs: splitEpochs, onEpoch: (e) => log(`  ${e.at} epoch ${e.epoch}: MSE ${e.mse.toFixed(5)}, task ${e.taskLoss.toFixed(4)}`) }, data.classNames);
const seconds = (performance.now() - t0) / 1000;
const splitDir = path.join(outDir, 'split');
await fsp.rm(splitDir, { recursive: true, force: true });
trained.meta.dataset = 'fashion-mnist';
await measureSplit(trained);
await saveSplit(splitDir, trained.splits, trained.meta);
trained.dispose();
const m0: SplitMeta = trained.meta;
log(`\nunsplit accuracy ${pct(m0.baseAccuracy)}; input ${m0.inputBytesPerSample} B raw, ${m0.inputPngBytesPerSample.toFixed(1)} B as PNG (pngjs, level 9); trained in ${seconds.toFixed(0)} s`);
for (const s of m0.splits) {
  log(`\n${s.at} (features ${s.features.shape.join('x')}), head ${s.measured?.headMs.toFixed(3)} ms, tail ${s.measured?.tailMs.toFixed(3)} ms (one sample, ONNX Runtime)`);
  log('channels bits bytes/sample  xPNG   accuracy  (unsplit - split)  head MFLOPs');
  for (const p of m0.points.filter((q) => q.at === s.at)) {
    log(`${String(p.channels).padStart(8)} ${String(p.bits).padStart(4)} ${String(p.bytesPerSample).padStart(12)} ${(p.bytesPerSample / m0.inputPngBytesPerSample).toFixed(3).padStart(6)} ${pct(p.accuracy).padStart(9)}  ${(100 * (m0.baseAccuracy - p.accuracy)).toFixed(2).padStart(6)} pt  ${((p.headFlops ?? 0) / 1e6).toFixed(3).padStart(13)}`);
  }
}

// The verdict: the smallest bottleneck within 1 point of the unsplit accuracy, against the PNG.
const all = m0.points;
const close = all.filter((p) => p.accuracy >= m0.baseAccuracy - 0.01).sort((a, b) => a.bytesPerSample - b.bytesPerSample);
const verdict = close.length
  ? { at: close[0].at, channels: close[0].channels, bits: close[0].bits, bytesPerSample: close[0].bytesPerSample, accuracy: close[0].accuracy, ratioToPng: close[0].bytesPerSample / m0.inputPngBytesPerSample, ratioToRaw: close[0].bytesPerSample / m0.inputBytesPerSample }
  : null;
log(verdict ? `\nsmallest bottleneck within 1 point of unsplit: ${verdict.at} ${verdict.channels}ch x ${verdict.bits} bits, ${verdict.bytesPerSample} B = ${verdict.ratioToPng.toFixed(3)}x the PNG` : '\nno bottleneck within 1 point of the unsplit accuracy');

// End-to-end latency. The whole network for device-only and server-only, one ONNX level (u = 1).
const whole = await ort.InferenceSession.create(exportOnnx(model, { levels: [1] }).bytes, { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
const [h, w, c] = model.inputShape;
const u1 = new ort.Tensor('float32', Float32Array.of(1), []);
const classify = async (pixels: Float32Array): Promise<number> => {
  const out = await whole.run({ images: new ort.Tensor('float32', pixels, [1, c, h, w]), u: u1 });
  const s = Array.from(out.scores.data as Float32Array);
  return s.indexOf(Math.max(...s));
};
const frameSet = firstOf(data.test, Math.min(frames, data.test.count));
const pixels = (i: number) => toFloat(frameSet, i, 1); // one channel: NHWC is NCHW
// Server-only: a bench-local endpoint that takes the image raw (8-bit) or as PNG and runs the whole network.
const app = createHttpApp({ logger: false, bodyLimit: 1 << 20 });
app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
app.post('/raw', async (req) => ({ class: await classify(Float32Array.from(req.body as Buffer, (v) => v / 255)) }));
app.post('/png', async (req) => ({ class: await classify(Float32Array.from(PNG.sync.read(req.body as Buffer).data.filter((_, i) => i % 4 === 0), (v) => v / 255)) }));
const imageUrl = await app.listen({ port: 0, host: '127.0.0.1' });
const size = h * w * c;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function serverOnly(kind: 'raw' | 'png', mbps: number): Promise<{ ms: number; bytes: number; accuracy: number }> {
  const shaper = new Shaper({ bandwidthMbps: mbps, delayMs });
  const times: number[] = [];
  let bytes = 0;
  let right = 0;
  for (let i = 0; i < frameSet.count; i++) {
    const t0 = performance.now();
    const body = kind === 'raw' ? frameSet.images.subarray(i * size, (i + 1) * size) : pngBytes(frameSet, i);
    await shaper.send(body.length);
    const res = await fetch(`${imageUrl}/${kind}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: new Blob([new Uint8Array(body)]) });
    const answer = (await res.json()) as { class: number };
    times.push(performance.now() - t0);
    bytes += body.length;
    if (answer.class === frameSet.labels[i]) right++;
  }
  return { ms: median(times), bytes: bytes / frameSet.count, accuracy: right / frameSet.count };
}

async function deviceOnly(): Promise<{ ms: number; accuracy: number }> {
  const times: number[] = [];
  let right = 0;
  for (let i = 0; i < frameSet.count; i++) {
    const t0 = performance.now();
    if ((await classify(pixels(i))) === frameSet.labels[i]) right++;
    times.push(performance.now() - t0);
  }
  return { ms: median(times), accuracy: right / frameSet.count };
}

interface LatencyRow {
  mode: string;
  mbps: number | null;
  bytes: number;
  medianMs: number;
  accuracy: number;
}
const latency: LatencyRow[] = [];
// Warm both paths once (ORT's first runs allocate).
await deviceOnly();
const device = await deviceOnly();
latency.push({ mode: 'device-only', mbps: null, bytes: 0, medianMs: device.ms, accuracy: device.accuracy });
for (const mbps of bandwidths) {
  for (const kind of ['raw', 'png'] as const) {
    const r = await serverOnly(kind, mbps);
    latency.push({ mode: `server-only ${kind}`, mbps, bytes: r.bytes, medianMs: r.ms, accuracy: r.accuracy });
  }
}
// Split: per split point, the most accurate bottleneck and the smallest within 1 point of unsplit (when there is
// one); then NaviSplit choosing among every split point's bottlenecks within the budget.
const navisplit: { mbps: number; budgetMs: number; chosen: string; used: { at: string; channels: number; bits: number; frames: number }[]; medianMs: number; accuracy: number }[] = [];
const server = await SplitServer.create({ dir: splitDir });
const url = await server.listen();
try {
  for (const s of m0.splits) {
    const points = m0.points.filter((p) => p.at === s.at);
    const best = points.reduce((a, p) => (p.accuracy > a.accuracy ? p : a));
    const small = points.filter((p) => p.accuracy >= m0.baseAccuracy - 0.01).sort((a, b) => a.bytesPerSample - b.bytesPerSample)[0];
    const chosen = [...new Map([best, small, points[0]].filter(Boolean).map((p) => [`${p.channels}x${p.bits}`, p])).values()];
    for (const p of chosen) {
      await runHead({ dir: splitDir, server: url, images: firstOf(frameSet, 4), at: s.at, channels: p.channels, bits: p.bits });
      for (const mbps of bandwidths) {
        const r = await runHead({ dir: splitDir, server: url, images: frameSet, at: s.at, channels: p.channels, bits: p.bits, bandwidthMbps: mbps, delayMs });
        latency.push({ mode: `split ${s.at} ${p.channels}ch x ${p.bits}b`, mbps, bytes: r.meanBytes, medianMs: r.p50Ms, accuracy: r.accuracy });
      }
    }
  }
  for (const mbps of bandwidths) {
    const r = await runHead({ dir: splitDir, server: url, images: frameSet, bandwidthMbps: mbps, delayMs, latencyBudgetMs: budgetMs });
    // The point that sent most frames (the first two probe the smallest and the largest).
    const top = r.used.reduce((a, u) => (u.frames > a.frames ? u : a));
    const chosen = `${top.at} ${top.channels}ch x ${top.bits}b`;
    navisplit.push({ mbps, budgetMs, chosen, used: r.used, medianMs: r.p50Ms, accuracy: r.accuracy });
    latency.push({ mode: `NaviSplit within ${budgetMs} ms: ${chosen}`, mbps, bytes: r.meanBytes, medianMs: r.p50Ms, accuracy: r.accuracy });
  }
} finally {
  await server.close();
}
await app.close();
await whole.release();

log(`\nend-to-end latency per frame, median of ${frameSet.count} frames (loopback HTTP, shaped uplink, delay ${delayMs} ms)`);
log('mode                               Mbit/s   bytes   median ms  accuracy');
for (const r of latency) log(`${r.mode.padEnd(34)} ${String(r.mbps ?? '-').padStart(6)} ${r.bytes.toFixed(0).padStart(7)} ${r.medianMs.toFixed(2).padStart(11)}  ${pct(r.accuracy)}`);
log(`\nNaviSplit within ${budgetMs} ms (frames per point; the first two probe the smallest and the largest message)`);
for (const n of navisplit) log(`${String(n.mbps).padStart(4)} Mbit/s: ${n.chosen.padEnd(24)} median ${n.medianMs.toFixed(2)} ms, accuracy ${pct(n.accuracy)}; ${n.used.map((u) => `${u.at} ${u.channels}x${u.bits}: ${u.frames}`).join(', ')}`);

const result = {
  settings: { run: runDir, trainLimit, testLimit, epochs, splitEpochs, frames: frameSet.count, delayMs, budgetMs, ats },
  baseAccuracy: m0.baseAccuracy,
  inputBytesPerSample: m0.inputBytesPerSample,
  inputPngBytesPerSample: m0.inputPngBytesPerSample,
  splitSeconds: seconds,
  splits: m0.splits.map((s) => ({ at: s.at, features: s.features.shape, measured: s.measured, tailFlops: s.tailFlops, points: m0.points.filter((p) => p.at === s.at) })),
  verdict,
  latency,
  navisplit,
};
await writeFileAtomic(path.join(outDir, 'split.json'), JSON.stringify(result, null, 2) + '\n');
log(`\nwrote ${path.join(outDir, 'split.json')}`);
model.dispose();
process.exit(0);
