/**
 * Load test and soak of `dynn serve`, with autocannon in this process and the server in a child process on
 * loopback. Real test images (their labels check the served answers), bounded in time:
 *   1. capacity: the fixed u = 1 server's throughput, closed loop, as fast as it answers;
 *   2. overload: `--factor` (2) x that rate for `--duration` (60) s against (a) the adaptive policy and
 *      (b) fixed:1, after `--warmup` (10) s of it each (not counted: a fresh server's first seconds at that
 *      rate cost it more CPU), taking turns in `--rounds` (4) slices so background load falls on both alike: p50/p99
 *      latency, failed requests, throughput, the u histogram and the served accuracy (against the accuracy
 *      of the same images at each level, measured in-process first);
 *   3. with `--soak S`: instead of 2, S seconds at capacity against the adaptive server, the server's RSS
 *      sampled every 5 s, and the slope of RSS over time after the first minute.
 * The model needs its latency table (`dynn profile MODEL`).
 * Capacity is measured closed loop (autocannon: C connections, each sending its next request when the last is
 * answered, as fast as the server answers). Offered load (2x capacity, the soak) is open loop, as independent
 * clients arrive: requests leave at the times of a seeded Poisson process of the offered rate whatever the
 * answers, and each latency counts from its request's scheduled time, so a server that falls behind is charged
 * for the whole wait. (autocannon's rate limit is not that: each connection sends its share of a second's
 * requests as fast as answered from the start of every second, bursts that a closed loop then caps.)
 * Usage: node dist/bench/load.js --model FILE.onnx [--dataset fashion-mnist] [--slo-ms 25] [--duration 60]
 *   [--capacity-duration 10] [--capacity-connections N] [--factor 2] [--images N per request]
 *   [--rounds 4] [--warmup 10] [--threads N] [--max-batch 64] [--soak S] [--no-pin] [--json]. Results also go to .bench/load.json (or .bench/soak.json).
 * Pinning (default where `taskset` works on 2+ cores): the servers on core 0 with one ONNX Runtime thread, this
 * process (autocannon, the client) on core 1, as a deployment runs them; capacity is measured the same way.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { loadDataset } from '../src/data/datasets.js';
import { toFloat } from '../src/data/imageset.js';
import { nhwcToNchw } from '../src/runtime/core.js';
import { readOnnxMetadata } from '../src/export/metadata.js';
import { OnnxModel, readModelFile } from '../src/runtime/node.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { Rng } from '../src/util/rng.js';
import { SERVE_NODE_FLAGS } from '../src/serve/node-flags.js';
import { benchArgs } from './args.js';

const args = process.argv.slice(2);
const { value: opt, num } = benchArgs(args);
const MODEL = opt('model');
if (!MODEL) throw new Error('usage: node dist/bench/load.js --model FILE.onnx [--soak S] (see the header of bench/load.ts)');
const DATASET = opt('dataset') ?? 'fashion-mnist';
const SLO = num('slo-ms', 25);
const DURATION = num('duration', 60);
const CAP_DURATION = num('capacity-duration', 10);
const FACTOR = num('factor', 2);
const ROUNDS = Math.round(num('rounds', 4));
const WARMUP = num('warmup', 10);
const IMAGES = num('images', 1);
const MAX_BATCH = num('max-batch', 64);
const SOAK = opt('soak') === undefined ? 0 : num('soak', 600);
const THREADS = opt('threads');
const json = args.includes('--json');

/** Pins this process (every thread) to core 1 and says whether servers go to core 0; false where it cannot. */
function pinClient(): boolean {
  if (args.includes('--no-pin') || os.availableParallelism() < 2) return false;
  try {
    execFileSync('taskset', ['-a', '-cp', '1', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const PINNED = pinClient();
const log = (s: string) => process.stderr.write(s + '\n');
const f = (x: number | undefined, d = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

/** The test images as request bodies (NCHW float32, IMAGES per request) and their labels. */
async function requestBodies(shape: readonly number[]): Promise<{ bodies: Buffer[]; labels: Uint8Array; images: Float32Array }> {
  const data = await loadDataset(DATASET, { trainLimit: 1, testLimit: 2048 });
  const set = data.test;
  const [c, h, w] = shape;
  if (set.channels !== c || set.height !== h || set.width !== w) throw new Error(`${DATASET} images are ${set.height}x${set.width}x${set.channels}, the model takes [${shape}]`);
  const per = c * h * w;
  const n = Math.floor(set.count / IMAGES) * IMAGES;
  const images = nhwcToNchw(toFloat(set, 0, n), shape);
  const bodies = Array.from({ length: n / IMAGES }, (_, r) => Buffer.from(images.buffer, r * IMAGES * per * 4, IMAGES * per * 4));
  return { bodies, labels: set.labels.subarray(0, n), images };
}

/** Accuracy of the images at every exported level, in-process: what the served answers should match. */
async function levelAccuracy(images: Float32Array, labels: Uint8Array): Promise<Map<number, number>> {
  const model = await OnnxModel.load(MODEL as string);
  const out = new Map<number, number>();
  try {
    for (const lv of model.levels) {
      const p = await model.run(images, lv.u);
      let right = 0;
      for (let i = 0; i < labels.length; i++) right += p.classes[i] === labels[i] ? 1 : 0;
      out.set(lv.u, right / labels.length);
    }
  } finally {
    await model.dispose();
  }
  return out;
}

interface Server {
  url: string;
  child: ChildProcess;
  stop(): Promise<number | null>;
}

/** Starts `dynn serve` in a child process on a free loopback port. */
async function startServer(policy: string): Promise<Server> {
  const main = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  // With node's flags for a server under load, as README's serving section says to run it.
  const argv = [...SERVE_NODE_FLAGS.split(' '), main, 'serve', MODEL as string, '--port', '0', '--json', '--policy', policy, '--slo-ms', String(SLO), '--max-batch', String(MAX_BATCH)];
  if (THREADS || PINNED) argv.push('--threads', THREADS ?? '1');
  const child = PINNED ? spawn('taskset', ['-c', '0', process.execPath, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve((JSON.parse(out.slice(0, nl)) as { url: string }).url);
    });
    void exited.then((code) => reject(new Error(`dynn serve exited (${code}): ${stderr}`)));
  });
  return {
    url,
    child,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Resident set size of a process, bytes (Linux). */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** What one phase of load measured. */
interface Phase {
  name: string;
  policy: string;
  seconds: number;
  /** Closed loop: the connections; open loop: the most requests outstanding at once. */
  connections: number;
  offeredRate: number | null;
  /** Requests per second answered with 200. */
  throughput: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Share of answered requests within the SLO, client side. */
  withinSloClient: number;
  /** Non-2xx answers, connection errors and timeouts. */
  failed: number;
  answered: number;
  /** Samples per served u. */
  uHistogram: Record<string, number>;
  meanU: number;
  servedAccuracy: number;
  /** The accuracy the same u mix gives in-process. */
  expectedAccuracy: number;
  /** Mean samples per batch run, from the server's /metrics. */
  meanBatch: number;
  /** Server-side latency (arrival to response) from its histogram: quantiles and the share within the SLO. */
  server: { p50Ms: number; p99Ms: number; withinSlo: number };
  /** RSS samples [seconds, MB], soak only. */
  rss?: [number, number][];
}

/** A histogram in Prometheus text: sum, count and cumulative bucket counts by upper bound. */
interface Hist {
  sum: number;
  count: number;
  buckets: [number, number][];
}

function histogram(text: string, name: string): Hist {
  const get = (s: string) => Number(new RegExp(`^${name}_${s} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  const buckets = [...text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)$`, 'gm'))].map((m) => [Number(m[1].replace('+Inf', 'Infinity')), Number(m[2])] as [number, number]);
  return { sum: get('sum'), count: get('count'), buckets };
}

/** `a` plus `sign` times `b`, bucket by bucket (histograms with the same buckets). */
function combine(a: Hist, b: Hist, sign = 1): Hist {
  return { sum: a.sum + sign * b.sum, count: a.count + sign * b.count, buckets: a.buckets.map(([le, c], i) => [le, c + sign * (b.buckets[i]?.[1] ?? 0)]) };
}

/** A quantile of a histogram, linear within its bucket. */
function quantile(h: Hist, q: number): number {
  const target = q * h.count;
  let prevLe = 0;
  let prevC = 0;
  for (const [le, c] of h.buckets) {
    if (c >= target) return le === Infinity ? prevLe : prevLe + ((le - prevLe) * (target - prevC)) / Math.max(1, c - prevC);
    prevLe = le;
    prevC = c;
  }
  return NaN;
}

async function scrape(url: string): Promise<{ batch: Hist; latency: Hist }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return { batch: histogram(text, 'dynn_batch_size'), latency: histogram(text, 'dynn_request_duration_seconds') };
}

/** What slices of load against one server added up to. */
interface Tally {
  seconds: number;
  answered: number;
  failed: number;
  /** Client-side latency of every answered request, ms. */
  latencies: number[];
  right: number;
  samples: number;
  uCount: Map<number, number>;
  /** The server's batch-size and latency histograms over the slices. */
  batch: Hist | null;
  served: Hist | null;
  /** Open loop: the most requests outstanding at once. */
  outstanding: number;
}

function tally(): Tally {
  return { seconds: 0, answered: 0, failed: 0, latencies: [], right: 0, samples: 0, uCount: new Map(), batch: null, served: null, outstanding: 0 };
}

/** Checks an answer to request body `i` against the labels, adding to `t`. */
function check(body: string, i: number, labels: Uint8Array, t: Tally): void {
  const r = JSON.parse(body) as { predictions: { class: number; u: number }[] };
  const base = i * IMAGES;
  r.predictions.forEach((p, k) => {
    t.right += p.class === labels[base + k] ? 1 : 0;
    t.samples++;
    t.uCount.set(p.u, (t.uCount.get(p.u) ?? 0) + 1);
  });
}

/** Adds the server's batch and latency histograms over a slice (from `before` to now) to `t`. */
async function addServerSide(url: string, before: { batch: Hist; latency: Hist }, t: Tally): Promise<void> {
  const after = await scrape(url);
  const batch = combine(after.batch, before.batch, -1);
  const served = combine(after.latency, before.latency, -1);
  t.batch = t.batch ? combine(t.batch, batch) : batch;
  t.served = t.served ? combine(t.served, served) : served;
}

/** Seeds of the open-loop slices: each slice its own arrival times, the same ones for every server. */
let arrivalSeed = 1;

/**
 * Offers `rate` requests per second for a while, open loop (see the header): Poisson arrival times from a
 * seeded generator, each request sent at its time whatever the answers, latency from that time. Requests time
 * out after 10 s (a failure). Every answer is checked against its label.
 */
async function openSlice(
  server: Server,
  o: { seconds: number; rate: number; onTick?: (t: number) => void },
  data: { bodies: Buffer[]; labels: Uint8Array },
  t: Tally,
  seed: number,
): Promise<void> {
  const url = new URL(`${server.url}/v1/predict`);
  // Below the server's --max-connections (512): further requests wait in the agent, timed from their schedule.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const rng = new Rng(seed);
  const before = await scrape(server.url);
  let outstanding = 0;
  let next = 0;
  let settle: () => void = () => {};
  const settled = new Promise<void>((r) => (settle = r));
  let sending = true;
  const done = () => {
    outstanding--;
    if (!sending && outstanding === 0) settle();
  };
  const send = (at: number) => {
    const i = next++ % data.bodies.length;
    const body = data.bodies[i];
    outstanding++;
    t.outstanding = Math.max(t.outstanding, outstanding);
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/octet-stream', 'content-length': body.length } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode === 200) {
          t.latencies.push(performance.now() - at);
          t.answered++;
          check(Buffer.concat(chunks).toString('utf8'), i, data.labels, t);
        } else t.failed++;
        done();
      });
      res.on('error', () => {
        t.failed++;
        done();
      });
    });
    req.setTimeout(10_000, () => req.destroy(new Error('timed out')));
    req.on('error', () => {
      t.failed++;
      done();
    });
    req.end(body);
  };
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  const ticker = o.onTick ? setInterval(() => o.onTick?.((performance.now() - t0) / 1000), 5000) : null;
  await new Promise<void>((resolve) => {
    let at = t0;
    const tick = () => {
      const now = performance.now();
      // Every request whose time has come, at its scheduled time (a late timer does not shift the schedule).
      for (; at <= now && at < end; at += (-Math.log(1 - rng.next()) * 1000) / o.rate) send(at);
      if (at < end) setTimeout(tick, Math.max(0, at - performance.now() - 0.5));
      else resolve();
    };
    tick();
  });
  sending = false;
  if (outstanding > 0) await settled;
  if (ticker) clearInterval(ticker);
  agent.destroy();
  t.seconds += o.seconds;
  await addServerSide(server.url, before, t);
}

/** Runs autocannon against a server for a while (closed loop), adding to `t`; every answer is checked against its label. */
async function closedSlice(
  server: Server,
  o: { seconds: number; connections: number },
  data: { bodies: Buffer[]; labels: Uint8Array },
  t: Tally,
): Promise<void> {
  let next = 0;
  const before = await scrape(server.url);
  const run = autocannon({
    url: server.url,
    connections: o.connections,
    duration: o.seconds,
    timeout: 10,
    requests: [
      {
        method: 'POST',
        path: '/v1/predict',
        headers: { 'content-type': 'application/octet-stream' },
        setupRequest: (req, context) => {
          const i = next++ % data.bodies.length;
          context.i = i;
          return { ...req, body: data.bodies[i] };
        },
        onResponse: (status, body, context) => {
          if (status === 200) check(body, context.i as number, data.labels, t);
        },
      },
    ],
  });
  run.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
    if (status === 200) t.latencies.push(ms);
  });
  const result = await run;
  await addServerSide(server.url, before, t);
  t.seconds += result.duration;
  t.answered += result['2xx'];
  t.failed += result.non2xx + result.errors + result.timeouts;
}

/** The figures of a tally. */
function summarize(name: string, policy: string, o: { connections?: number; rate?: number }, t: Tally, accuracy: Map<number, number>): Phase {
  const lat = Float64Array.from(t.latencies).sort();
  const pct = (q: number) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
  const served = t.served as Hist;
  const batch = t.batch as Hist;
  const withinSlo = served.buckets.find(([le]) => Math.abs(le - SLO / 1000) < 1e-9)?.[1] ?? NaN;
  const uHistogram = Object.fromEntries([...t.uCount.entries()].sort((a, b) => a[0] - b[0]).map(([u, c]) => [String(u), c]));
  let expected = 0;
  let uSum = 0;
  for (const [u, c] of t.uCount) {
    expected += c * (accuracy.get(u) ?? NaN);
    uSum += u * c;
  }
  return {
    name,
    policy,
    seconds: t.seconds,
    connections: o.connections ?? t.outstanding,
    offeredRate: o.rate ?? null,
    throughput: t.answered / t.seconds,
    latencyMs: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: lat[lat.length - 1] },
    withinSloClient: lat.filter((x) => x <= SLO).length / lat.length,
    failed: t.failed,
    answered: t.answered,
    uHistogram,
    meanU: uSum / t.samples,
    servedAccuracy: t.right / t.samples,
    expectedAccuracy: expected / t.samples,
    meanBatch: batch.sum / batch.count,
    server: { p50Ms: 1000 * quantile(served, 0.5), p99Ms: 1000 * quantile(served, 0.99), withinSlo: withinSlo / served.count },
  };
}

/** Runs one slice of closed-loop load against a server and summarizes it. */
async function runLoad(
  name: string,
  server: Server,
  policy: string,
  o: { seconds: number; connections: number },
  data: { bodies: Buffer[]; labels: Uint8Array },
  accuracy: Map<number, number>,
): Promise<Phase> {
  const t = tally();
  await closedSlice(server, o, data, t);
  return summarize(name, policy, o, t, accuracy);
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const n = points.length;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) ** 2;
  }
  return sxy / sxx;
}

function phaseRow(p: Phase): string {
  return (
    `${p.name.padEnd(22)} ${p.policy.padEnd(9)} offered ${p.offeredRate ? f(p.offeredRate, 0).padStart(6) : '   max'} req/s  ` +
    `served ${f(p.throughput, 0).padStart(6)} req/s  p50 ${f(p.latencyMs.p50)} ms  p99 ${f(p.latencyMs.p99)} ms  max ${f(p.latencyMs.max)} ms  ` +
    `${f(100 * p.withinSloClient, 1)}% within SLO ` +
    `(server side p99 ${f(p.server.p99Ms)} ms, ${f(100 * p.server.withinSlo, 1)}% within SLO)  failed ${p.failed}  mean u ${f(p.meanU, 3)}  batch ${f(p.meanBatch)}  accuracy ${f(100 * p.servedAccuracy, 2)}% (in-process at that u mix ${f(100 * p.expectedAccuracy, 2)}%)`
  );
}

async function withServer<T>(policy: string, fn: (s: Server) => Promise<T>): Promise<T> {
  const s = await startServer(policy);
  try {
    return await fn(s);
  } finally {
    const code = await s.stop();
    if (code !== 0) log(`warning: the ${policy} server exited with code ${code}`);
  }
}

async function main(): Promise<void> {
  const meta = readOnnxMetadata(await readModelFile(MODEL as string), MODEL as string);
  const data = await requestBodies(meta.input.shape);
  log(`${data.bodies.length} requests of ${IMAGES} ${DATASET} test image(s); SLO ${SLO} ms; levels ${meta.levels.map((l) => l.u).join(', ')}`);
  log(PINNED ? 'servers pinned to core 0 (1 ONNX Runtime thread), the load generator to core 1' : 'not pinned: servers and the load generator share the cores');
  const accuracy = await levelAccuracy(data.images, data.labels);
  log(`in-process accuracy per level: ${[...accuracy].map(([u, a]) => `u=${u}: ${f(100 * a, 2)}%`).join(', ')}`);

  const capConnections = Math.round(num('capacity-connections', Math.max(4, Math.ceil((2 * MAX_BATCH) / IMAGES))));
  const capacity = await withServer('fixed:1', async (s) => {
    await runLoad('warmup', s, 'fixed:1', { seconds: 3, connections: capConnections }, data, accuracy);
    return runLoad('capacity (u = 1)', s, 'fixed:1', { seconds: CAP_DURATION, connections: capConnections }, data, accuracy);
  });
  log(phaseRow(capacity));
  const cap = capacity.throughput;

  if (SOAK > 0) {
    const samples: [number, number][] = [];
    const soak = await withServer('adaptive', async (s) => {
      const pid = s.child.pid as number;
      samples.push([0, rss(pid) / 2 ** 20]);
      const t = tally();
      await openSlice(s, { seconds: SOAK, rate: cap, onTick: (at) => samples.push([at, rss(pid) / 2 ** 20]) }, data, t, arrivalSeed++);
      const p = summarize(`soak ${SOAK} s`, 'adaptive', { rate: cap }, t, accuracy);
      samples.push([p.seconds, rss(pid) / 2 ** 20]);
      return p;
    });
    soak.rss = samples;
    const settled = samples.filter(([t]) => t >= Math.min(60, SOAK / 4));
    const mbPerMin = 60 * slope(settled);
    log(phaseRow(soak));
    log(`RSS: ${f(samples[0][1])} MB at start, ${f(settled[0][1])} MB at ${f(settled[0][0], 0)} s, ${f(samples[samples.length - 1][1])} MB at the end; slope after ${f(settled[0][0], 0)} s: ${f(mbPerMin, 3)} MB/min`);
    const results = { model: MODEL, dataset: DATASET, sloMs: SLO, pinned: PINNED, capacity, soak, rssSlopeMbPerMin: mbPerMin };
    await writeFileAtomic('.bench/soak.json', JSON.stringify(results, null, 2) + '\n');
    if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
    return;
  }

  const rate = FACTOR * cap;
  log(`offering ${f(rate, 0)} req/s (${FACTOR}x capacity, Poisson arrivals, open loop) for ${DURATION} s`);
  const phases: Phase[] = [capacity];
  // Both servers run side by side (an idle one costs nothing) and take turns, so background load on a shared
  // machine falls on both alike.
  const policies = ['adaptive', 'fixed:1'];
  const servers = await Promise.all(policies.map((p) => startServer(p)));
  try {
    // Not counted: a fresh server's first seconds at this rate cost it about a third more CPU (measured per
    // thread here: the HTTP thread +75%, the model's worker +15%), so each warms up at the offered rate first.
    for (const s of servers) await openSlice(s, { seconds: WARMUP, rate }, data, tally(), arrivalSeed++);
    const tallies = policies.map(() => tally());
    for (let r = 0; r < ROUNDS; r++) {
      // Both servers get the same arrival times in a round.
      const seed = arrivalSeed++;
      for (let k = 0; k < policies.length; k++) await openSlice(servers[k], { seconds: DURATION / ROUNDS, rate }, data, tallies[k], seed);
    }
    policies.forEach((p, k) => {
      phases.push(summarize(`${FACTOR}x capacity`, p, { rate }, tallies[k], accuracy));
      log(phaseRow(phases[phases.length - 1]));
    });
  } finally {
    for (const s of servers) await s.stop();
  }
  const results = { model: MODEL, dataset: DATASET, sloMs: SLO, pinned: PINNED, levelAccuracy: Object.fromEntries(accuracy), phases };
  await writeFileAtomic('.bench/load.json', JSON.stringify(results, null, 2) + '\n');
  if (json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
}

await main();
