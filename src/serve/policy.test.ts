import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { OnnxLevel } from '../export/metadata.js';
import type { Prediction } from '../runtime/core.js';
import type { LatencyTable } from '../runtime/profile.js';
import { Rng } from '../util/rng.js';
import { MicroBatcher, type BatchRunner } from './batcher.js';
import { adaptiveLevel, createPolicy, LATE_SHARE, LatencyEstimator, parsePolicy, type Dispatch, type PolicyEnv } from './policy.js';

// Four levels; level i takes (i+1) ms at batch 1 and 8(i+1) ms at batch 64, linear in between.
const MIN_U = [0.01, 0.375, 0.625, 0.875];
const LEVELS: OnnxLevel[] = [0.25, 0.5, 0.75, 1].map((u, i) => ({ u, level: i + 1, minU: MIN_U[i], flops: u, macs: u, params: u, flopsRatio: u }));
const TABLE: LatencyTable = {
  format: 'dynn-latency/1',
  modelSha256: '0'.repeat(64),
  measuredAt: 'now',
  host: { cpus: 2, cpuModel: 'test', threads: 2 },
  reps: 1,
  batches: [1, 64],
  levels: LEVELS.map((l, i) => ({ u: l.u, level: l.level, flopsRatio: l.flopsRatio, latencyMs: { '1': i + 1, '64': 8 * (i + 1) } })),
};
/** The reference latency, computed directly from the table's definition. */
const ref = (i: number, b: number) => (i + 1) * (1 + (7 * (Math.min(b, 64) - 1)) / 63) * Math.max(1, b / 64);
/** The reference answer: the highest level whose latency plus wait fits, by brute force. */
function best(b: number, wait: number, budget: number, behind?: { batch: number; waitMs: number }): number {
  let ans = 0;
  for (let i = 0; i < 4; i++) {
    const fits = wait + ref(i, b) <= budget && (!behind || behind.waitMs + ref(i, b) + ref(i, behind.batch) <= budget);
    if (fits) ans = i;
  }
  return ans;
}

const env = (o: Partial<PolicyEnv> = {}): PolicyEnv => ({ levels: LEVELS, table: TABLE, sloMs: 25, modelPath: 'm.onnx', ...o });
const est = new LatencyEstimator(TABLE.levels.map((l) => l.latencyMs));
const latency = (i: number, b: number) => est.predict(i, b);

test('adaptiveLevel: the highest level whose interpolated latency plus the wait meets the budget', () => {
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 1, waitMs: 0, budgetMs: 25 }), 3);
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 64, waitMs: 0, budgetMs: 25 }), 2); // 32 > 25 >= 24
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 64, waitMs: 5, budgetMs: 25 }), 1); // 5 + 24 > 25 >= 5 + 16
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 64, waitMs: 30, budgetMs: 25 }), 0, 'nothing fits: the cheapest');
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 1, waitMs: 0, budgetMs: 25, cap: 1 }), 1);
  for (const b of [1, 7, 32, 50, 64, 100]) {
    for (let wait = 0; wait <= 30; wait += 0.5) {
      assert.equal(adaptiveLevel({ latency, levels: 4, batch: b, waitMs: wait, budgetMs: 25 }), best(b, wait, 25), `batch ${b} wait ${wait}`);
      const behind = { batch: 40, waitMs: wait / 2 };
      assert.equal(adaptiveLevel({ latency, levels: 4, batch: b, waitMs: wait, budgetMs: 25, behind }), best(b, wait, 25, behind), `behind, batch ${b} wait ${wait}`);
    }
  }
});

test('adaptiveLevel: a growing queue wait or backlog never raises the level', () => {
  let prev = Infinity;
  const seen = new Set<number>();
  for (let wait = 0; wait <= 30; wait += 0.25) {
    const l = adaptiveLevel({ latency, levels: 4, batch: 32, waitMs: wait, budgetMs: 25 });
    assert.ok(l <= prev, `level rose from ${prev} to ${l} at wait ${wait}`);
    prev = l;
    seen.add(l);
  }
  assert.deepEqual([...seen].sort(), [0, 1, 2, 3], 'every level is chosen somewhere between no wait and overload');
  const alone = adaptiveLevel({ latency, levels: 4, batch: 32, waitMs: 0, budgetMs: 25 });
  const backlog = adaptiveLevel({ latency, levels: 4, batch: 32, waitMs: 0, budgetMs: 25, behind: { batch: 64, waitMs: 0 } });
  assert.ok(backlog < alone, `a backlog behind the batch lowers the level (${backlog} < ${alone})`);
});

test('adaptiveLevel: the samples arriving during the run join the batch behind it; a level whose next batch cannot meet the budget is not taken', () => {
  for (const b of [1, 16, 64]) {
    for (let wait = 0; wait <= 20; wait += 1) {
      for (const rate of [0, 0.5, 2, 6, 20]) {
        for (const queued of [0, 16]) {
          // Brute force: the batch fits, and the next one (the queued samples and the arrivals) waits for this run and fits too.
          let want = 0;
          for (let i = 1; i < 4; i++) {
            const run = ref(i, b);
            const next = queued + Math.ceil(rate * run);
            if (wait + run <= 25 && (next === 0 || (queued ? wait / 2 : 0) + run + ref(i, next) <= 25)) want = i;
          }
          const behind = queued ? { batch: queued, waitMs: wait / 2 } : null;
          assert.equal(adaptiveLevel({ latency, levels: 4, batch: b, waitMs: wait, budgetMs: 25, behind, arrivalsPerMs: rate }), want, `batch ${b} wait ${wait} rate ${rate} queued ${queued}`);
        }
      }
    }
  }
  // Alone, a batch of 16 at the top level fits (10.7 ms); at 6 samples/ms, 64 arrive meanwhile and need 10.7 + 32
  // ms; level 2 leaves 48 needing 8 + 18.7; level 1, 32 needing 5.3 + 8.9.
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 16, waitMs: 0, budgetMs: 25 }), 3);
  assert.equal(adaptiveLevel({ latency, levels: 4, batch: 16, waitMs: 0, budgetMs: 25, arrivalsPerMs: 6 }), 1);
});

test('LatencyEstimator: scales the table up when runs are slower, never below it, and learns the round trip', () => {
  const e = new LatencyEstimator(TABLE.levels.map((l) => l.latencyMs), 0.5);
  assert.equal(e.predict(3, 64), 32);
  for (let i = 0; i < 30; i++) e.observe(3, 64, 64, 65);
  assert.ok(Math.abs(e.factor - 2) < 1e-3, `factor ${e.factor}`);
  assert.ok(Math.abs(e.overheadMs - 1) < 1e-3, `overhead ${e.overheadMs}`);
  assert.ok(Math.abs(e.predict(0, 1) - 3) < 1e-2);
  for (let i = 0; i < 30; i++) e.observe(1, 1, 0.5, 0.5);
  assert.equal(e.factor, 1, 'a faster machine keeps the table');
  // Response tails uniform on [0, 10) ms: the running 95th percentile settles near 9.5 and adds to predictions.
  const rng = new Rng(1);
  const before = e.predict(0, 1);
  for (let i = 0; i < 20000; i++) e.observeTail(10 * rng.next());
  assert.ok(Math.abs(e.tailMs - 9.5) < 0.5, `tail ${e.tailMs}`);
  assert.ok(Math.abs(e.predict(0, 1) - before - e.tailMs) < 1e-9);
  // The host's CPU per sample beside the runs (shared cores) adds per sample of the batch; bad figures are ignored.
  const plain = [e.predict(2, 1), e.predict(2, 64)];
  for (let i = 0; i < 60; i++) e.observeHost(0.05);
  e.observeHost(NaN);
  e.observeHost(-3);
  for (let i = 0; i < 60; i++) e.observeHost(0.05);
  assert.ok(Math.abs(e.hostMsPerSample - 0.05) < 1e-6, `host ${e.hostMsPerSample}`);
  assert.ok(Math.abs(e.predict(2, 1) - plain[0] - 0.05) < 1e-6);
  assert.ok(Math.abs(e.predict(2, 64) - plain[1] - 64 * 0.05) < 1e-6);
});

test('LatencyEstimator: plans for less of the SLO while answers come late, until LATE_SHARE of them do', () => {
  const e = new LatencyEstimator(TABLE.levels.map((l) => l.latencyMs));
  assert.equal(e.planShare, 1);
  // A server whose answers take 0.5-1.1x the budget it plans for: at the whole SLO 1 in 6 is late. An answer is
  // late when plan * (0.5 + 0.6 r) > 1, which LATE_SHARE of the draws r do where plan * (0.5 + 0.6 * 0.995) = 1.
  const rng = new Rng(3);
  let late = 0;
  const n = 200_000;
  for (let i = 0; i < n; i++) {
    const ms = e.planShare * 25 * (0.5 + 0.6 * rng.next());
    if (i >= n / 2 && ms > 25) late++;
    e.observeLatency(ms, 25);
  }
  const share = late / (n / 2);
  assert.ok(share > 0.6 * LATE_SHARE && share < 1.6 * LATE_SHARE, `late share ${share}`);
  assert.ok(Math.abs(e.planShare - 1 / 1.097) < 0.03, `plan ${e.planShare}`);
  // Answers on time again: the plan climbs back to the whole SLO and stays there.
  for (let i = 0; i < 20_000; i++) e.observeLatency(5, 25);
  assert.equal(e.planShare, 1);
  // Bad figures are ignored (here, each would count as late); every answer late holds the plan at its floor, not at zero.
  e.observeLatency(Infinity, 25);
  e.observeLatency(30, 0);
  assert.equal(e.planShare, 1);
  for (let i = 0; i < 1000; i++) e.observeLatency(100, 25);
  assert.equal(e.planShare, 0.25);
  // At the floor, bad figures that would count as on time are ignored too.
  e.observeLatency(NaN, 25);
  e.observeLatency(5, NaN);
  assert.equal(e.planShare, 0.25);
});

test('the adaptive choice plans for the estimator’s share of the SLO; a request’s own budget does not shrink with it', async () => {
  const adaptive = createPolicy(parsePolicy('adaptive'), env());
  const d: Dispatch = { requests: [view(24, 3), view(40, 3, { budgetMs: 25 })], samples: 64, behind: null };
  const whole = Array.from(await adaptive.choose(d));
  assert.deepEqual([whole[0], whole[24]], [best(64, 3, 25), best(64, 3, 25)]);
  // Late answers under the SLO (server side) bring the plan to 0.6 of it: the shared level is chosen for 15 ms.
  while (adaptive.estimator!.planShare > 0.6) adaptive.estimator!.observeLatency(40, 25);
  const planned = 25 * adaptive.estimator!.planShare;
  const lowered = Array.from(await adaptive.choose(d));
  assert.deepEqual([lowered[0], lowered[24]], [best(64, 3, planned), best(64, 3, 25)]);
  assert.ok(lowered[0] < whole[0], `${lowered[0]} against ${whole[0]}`);
});

const view = (count: number, waitMs: number, o: { u?: number; budgetMs?: number } = {}) => ({ count, waitMs, images: new Float32Array(count), ...o });

test('policies: adaptive, fixed:U and controller honour a request’s own u and budgetMs', async () => {
  const adaptive = createPolicy(parsePolicy('adaptive'), env());
  const d: Dispatch = {
    requests: [view(1, 0), view(2, 0, { u: 0.3 }), view(1, 0, { budgetMs: 3 }), view(1, 20), view(1, 0, { u: 0.9, budgetMs: 1 })],
    samples: 6,
    behind: null,
  };
  const b6 = (w: number, budget: number) => best(6, w, budget);
  // The two requests under the server's SLO share one level, set by the longer wait (20 ms).
  assert.deepEqual(Array.from(await adaptive.choose(d)), [b6(20, 25), 0, 0, b6(0, 3), b6(20, 25), 3]);
  assert.notEqual(b6(20, 25), b6(0, 25));
  const generous: Dispatch = { requests: [view(40, 3, { budgetMs: 1000 }), view(24, 3)], samples: 64, behind: null };
  assert.deepEqual([...new Set(await adaptive.choose(generous))], [best(64, 3, 1000), best(64, 3, 25)], 'a budget replaces the SLO');
  assert.deepEqual([best(64, 3, 1000), best(64, 3, 25)], [3, 1]);
  const fixed = createPolicy(parsePolicy('fixed:0.5'), env());
  assert.equal(fixed.name, 'fixed:0.5');
  assert.deepEqual(Array.from(await fixed.choose(d)), [1, 0, 0, Math.min(1, b6(0, 3)), 1, 3]);
  const fixedNoTable = createPolicy(parsePolicy('fixed:1'), env({ table: null }));
  assert.deepEqual(Array.from(await fixedNoTable.choose({ requests: [view(1, 0), view(1, 0, { u: 0.5 })], samples: 2, behind: null })), [3, 1]);
  await assert.rejects(fixedNoTable.choose({ requests: [view(1, 0, { budgetMs: 5 })], samples: 1, behind: null }), /latency budget needs the latency table/);
  // The controller's u per sample, capped by what the SLO allows.
  const controller = createPolicy(parsePolicy('controller'), env({ controller: (_x, n) => Float64Array.from({ length: n }, (_, i) => [1, 0.3, 0.6][i % 3]) }));
  const dc: Dispatch = { requests: [view(3, 0), view(3, 22)], samples: 6, behind: null };
  const cap = best(6, 22, 25);
  assert.deepEqual(Array.from(await controller.choose(dc)), [Math.min(cap, 3), 0, Math.min(cap, 1), Math.min(cap, 3), 0, Math.min(cap, 1)]);
  assert.ok(cap < 3);
  // The backlog behind the batch lowers the shared level; a request's own budget ignores it.
  const backlog: Dispatch = { requests: [view(8, 2), view(8, 2, { budgetMs: 25 })], samples: 16, behind: { samples: 64, waitMs: 1 } };
  const withBacklog = Array.from(await adaptive.choose(backlog));
  assert.deepEqual([withBacklog[0], withBacklog[8]], [best(16, 2, 25, { batch: 64, waitMs: 1 }), best(16, 2, 25)]);
  assert.ok(withBacklog[0] < withBacklog[8]);
});

test('policies: bad names, arguments and missing tables or controllers fail clearly', () => {
  assert.throws(() => parsePolicy('greedy'), /unknown policy "greedy"; expected one of adaptive, controller, fixed/);
  assert.throws(() => parsePolicy('fixed'), /policy fixed needs a utilization in \(0, 1\]: fixed:U/);
  assert.throws(() => parsePolicy('fixed:1.5'), /got fixed:1.5/);
  assert.throws(() => parsePolicy('fixed:'), /policy fixed needs a utilization/);
  assert.throws(() => parsePolicy('adaptive:3'), /takes no argument/);
  assert.throws(() => createPolicy(parsePolicy('adaptive'), env({ table: null })), /needs the latency table beside the model \(m\.onnx\.profile\.json\): run `dynn profile m\.onnx/);
  assert.throws(() => createPolicy(parsePolicy('controller'), env()), /policy controller needs a model exported with its controller/);
  const partial = { ...TABLE, levels: TABLE.levels.slice(1) };
  assert.throws(() => createPolicy(parsePolicy('adaptive'), env({ table: partial })), /no row for level 1/);
});

/** A runner whose runs finish when the test says; scores are u * (sample's first value + class index). */
class FakeRunner implements BatchRunner {
  readonly calls: { batch: number; u: number }[] = [];
  private gates: (() => void)[] = [];
  hold = false;
  private permits = 0;
  constructor(private readonly per: number, private readonly classes = 3) {}
  async run(images: Float32Array, u: number): Promise<Prediction> {
    const batch = images.length / this.per;
    this.calls.push({ batch, u });
    if (this.hold && this.permits > 0) this.permits--;
    else if (this.hold) await new Promise<void>((r) => this.gates.push(r));
    if (images[0] < 0) throw new Error('boom');
    const scores = new Float32Array(batch * this.classes);
    for (let i = 0; i < batch; i++) for (let j = 0; j < this.classes; j++) scores[i * this.classes + j] = u * (images[i * this.per] + j);
    return { scores, classes: new Int32Array(batch).fill(this.classes - 1), batch, numClasses: this.classes, u, level: 0, ms: 0.1 };
  }
  /** Lets the held runs finish, or the next one if none is held yet. */
  release(): void {
    const g = this.gates;
    this.gates = [];
    if (g.length === 0) this.permits++;
    g.forEach((r) => r());
  }
}

const sample = (v: number, count = 1, per = 2) => ({ images: new Float32Array(count * per).fill(v), count });

test('MicroBatcher: collects concurrent requests into one run, groups by level, answers each its own rows', async () => {
  const runner = new FakeRunner(2);
  const policy = createPolicy(parsePolicy('fixed:1'), env({ table: null }));
  const b = new MicroBatcher(runner, { maxBatch: 8, maxWaitMs: 1000, maxQueue: 16, levels: LEVELS, policy });
  runner.hold = true;
  const first = b.submit(sample(1, 8)); // a full batch: runs at once, and holds the runner
  const rest = [b.submit(sample(2)), b.submit({ ...sample(3, 2), u: 0.5 }), b.submit(sample(4)), b.submit({ ...sample(5), u: 0.5 })];
  assert.equal(b.depth, 5);
  runner.release();
  await first;
  // The four queued requests (5 samples < maxBatch) wait for maxWait; no new request comes, so release after it.
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(runner.calls.length, 1, 'still collecting: fewer than maxBatch samples and maxWait not reached');
  runner.hold = false;
  await b.close(); // closing dispatches at once
  const res = await Promise.all(rest);
  assert.deepEqual(runner.calls, [{ batch: 8, u: 1 }, { batch: 2, u: 1 }, { batch: 3, u: 0.5 }]);
  assert.deepEqual(res.map((r) => r.batchSize), [5, 5, 5, 5]);
  assert.deepEqual(Array.from(res[1].u), [0.5, 0.5]);
  assert.deepEqual(Array.from(res[1].scores), [1.5, 2, 2.5, 1.5, 2, 2.5]);
  assert.deepEqual(Array.from(res[2].scores), [4, 5, 6]);
  assert.deepEqual(Array.from(res[3].scores), [2.5, 3, 3.5]);
  await assert.rejects(b.submit(sample(1)), /shutting down/);
});

test('MicroBatcher: a runner that gives the batch buffer back gets it again for the next batch, whatever its size', async () => {
  const buffers: ArrayBufferLike[] = [];
  const runner = new FakeRunner(2);
  const lending: BatchRunner = {
    run: async (images, u, options) => {
      buffers.push(images.buffer);
      const p = await runner.run(images, u);
      return options?.lend ? { ...p, images } : p;
    },
  };
  const policy = createPolicy(parsePolicy('fixed:1'), env({ table: null }));
  const b = new MicroBatcher(lending, { maxBatch: 4, maxWaitMs: 1000, maxQueue: 8, levels: LEVELS, policy });
  const full = await Promise.all([b.submit(sample(1, 2)), b.submit(sample(2, 2))]);
  const pending = b.submit(sample(3));
  await b.close(); // dispatches the lone request at once
  const small = await pending;
  assert.deepEqual(runner.calls.map((c) => c.batch), [4, 1]);
  assert.equal(buffers[1], buffers[0]);
  assert.equal(buffers[0].byteLength, 4 * 2 * 4, 'room for a full batch');
  assert.deepEqual(Array.from(full[1].scores), [2, 3, 4, 2, 3, 4]);
  assert.deepEqual(Array.from(small.scores), [3, 4, 5]);
});

test('MicroBatcher: tells the policy how fast samples arrive while batches run (not while idle), and on shared cores the host CPU per sample beside the runs', async () => {
  let clock = 0;
  const seen: number[] = [];
  const adaptive = createPolicy(parsePolicy('adaptive'), env());
  const policy = { ...adaptive, name: 'spy', estimator: adaptive.estimator, choose: (d: Dispatch) => (seen.push(d.arrivalsPerMs ?? NaN), adaptive.choose(d)) };
  let cpu = 0;
  const runner = new FakeRunner(2);
  // Each run takes 0.5 ms on the test's clock.
  const timed: BatchRunner = { run: (x, u) => ((clock += 0.5), runner.run(x, u)) };
  const b = new MicroBatcher(timed, { maxBatch: 64, maxWaitMs: 0, maxQueue: 1024, levels: LEVELS, policy, now: () => clock, sharedCores: { cpuMs: () => cpu, runThreads: 1 } });
  // One client that waits for each answer: 2 samples a ms, none while a run is on.
  for (let t = 0; t < 5000; t++) {
    clock = t;
    cpu += 0.1 * 2 + 0.1; // 0.1 ms per sample beside the runs, and each run's 0.1 ms (FakeRunner's ms)
    await b.submit(sample(1, 2));
  }
  assert.equal(b.arrivalsPerMs, 0, 'a waiting client adds nothing behind a run');
  // An average over spans of 256 samples, settled from 0.
  assert.ok(Math.abs(adaptive.estimator!.hostMsPerSample - 0.1) < 0.005, `host ${adaptive.estimator!.hostMsPerSample}`);
  // Independent clients: 3 samples arrive during each 10 ms run; after 100 runs the rate is 0.3 per ms.
  runner.hold = true;
  let running = b.submit(sample(1));
  for (let r = 0; r < 100; r++) {
    const queued = [b.submit(sample(1)), b.submit(sample(1, 2))];
    clock += 9.5;
    runner.release();
    await running;
    running = Promise.all(queued).then((x) => x[0]);
    await new Promise((res) => setImmediate(res)); // the next batch dispatches: the two requests behind the run
  }
  assert.ok(Math.abs(b.arrivalsPerMs - 0.3) < 0.01, `rate ${b.arrivalsPerMs}`);
  assert.ok(Math.abs(seen[seen.length - 1] - b.arrivalsPerMs) < 0.01, 'the policy sees it');
  runner.hold = false;
  runner.release();
  await running;
  // Idle for 2 s: the rate fades (by e^-2) before the next dispatch's choice.
  const last = b.arrivalsPerMs;
  clock += 2000;
  await b.submit(sample(1));
  assert.ok(Math.abs(seen[seen.length - 1] - last * Math.exp(-2)) < 1e-9, `faded ${seen[seen.length - 1]}`);
  await b.close();
});

test('MicroBatcher: the host CPU span closes after a second of a trickle, and starts afresh after a long idle spell', async () => {
  let clock = 0;
  let cpu = 0;
  const adaptive = createPolicy(parsePolicy('adaptive'), env());
  const runner = new FakeRunner(2);
  const timed: BatchRunner = { run: (x, u) => ((clock += 0.5), runner.run(x, u)) };
  const b = new MicroBatcher(timed, { maxBatch: 64, maxWaitMs: 0, maxQueue: 1024, levels: LEVELS, policy: adaptive, now: () => clock, sharedCores: { cpuMs: () => cpu, runThreads: 1 } });
  const est = adaptive.estimator!;
  // One sample every 300 ms, 0.2 ms of host CPU each beside its run's 0.1: a span of 4 samples after a second.
  for (let i = 0; i < 8; i++) {
    clock += 300;
    cpu += 0.3;
    await b.submit(sample(1));
  }
  assert.ok(est.hostMsPerSample > 0.01, `observed within seconds: ${est.hostMsPerSample}`);
  const settled = est.hostMsPerSample;
  // A minute idle, with 600 ms of the process's CPU spent on nothing served: not charged to the next samples.
  clock += 60_000;
  cpu += 600;
  for (let i = 0; i < 8; i++) {
    clock += 300;
    cpu += 0.3;
    await b.submit(sample(1));
  }
  assert.ok(est.hostMsPerSample <= settled + 0.2, `the idle spell's CPU stays out: ${est.hostMsPerSample}`);
  await b.close();
});

test('MicroBatcher: dispatches after maxWait, refuses a full queue, and a failed run fails only its requests', async () => {
  const runner = new FakeRunner(2);
  const policy = createPolicy(parsePolicy('fixed:1'), env({ table: null }));
  const b = new MicroBatcher(runner, { maxBatch: 4, maxWaitMs: 5, maxQueue: 6, levels: LEVELS, policy });
  const t0 = performance.now();
  const r = await b.submit(sample(1));
  assert.ok(performance.now() - t0 >= 4, 'a lone request waits for the batch to fill');
  assert.ok(r.queueMs >= 4);
  await new Promise((res) => setImmediate(res)); // the runner is idle again
  runner.hold = true;
  const running = b.submit(sample(1, 4));
  const queued = [b.submit(sample(1, 3)), b.submit(sample(1, 3))];
  await assert.rejects(b.submit(sample(1)), /queue is full \(6 samples waiting, at most 6\)/);
  runner.release();
  await running;
  runner.hold = false;
  runner.release();
  await Promise.all(queued);
  assert.deepEqual(runner.calls.slice(1).map((c) => c.batch), [4, 3, 3], 'a batch never exceeds maxBatch');
  const mixed = [b.submit({ ...sample(-1), u: 0.25 }), b.submit(sample(2))];
  await assert.rejects(mixed[0], /boom/);
  assert.equal((await mixed[1]).classes[0], 2);
  await b.close();
});
