import type { OnnxLevel } from '../export/metadata.js';
import type { Prediction } from '../runtime/core.js';
import { HttpError, shuttingDown } from './errors.js';
import type { PredictInput } from './input.js';
import type { Dispatch, PendingView, ServePolicy } from './policy.js';

/**
 * The busy time over which the rate of arrivals during runs is averaged, ms: a hundred ms hold tens of
 * requests at the rates where it matters (a noisy rate at lower ones costs little: the level has room to spare).
 */
const ARRIVAL_WINDOW_MS = 100;

/** While no batch runs, the rate measured during runs fades with this time constant, ms: a burst long past does not hold the level down. */
const IDLE_FADE_MS = 1000;

/** A host CPU span starting at process CPU time `cpuMs` (NaN: not read yet) and clock `at`, with nothing run yet. */
const hostMarkAt = (cpuMs: number, at: number) => ({ cpuMs, at, runCpuMs: 0, samples: 0 });

/** A batch's run: the prediction, the lent images given back, and for an early-exit model each sample's exit. */
export type BatchRun = Prediction & { images?: Float32Array; exits?: Int32Array };

/** What runs a batch: `OnnxModel` (in a worker thread) in the server, a fake in tests. */
export interface BatchRunner {
  /** `lend`: the runner may take the images' buffer and give it back as the result's `images` (see `ModelRunOptions`). */
  run(images: Float32Array, u: number, options?: { lend?: boolean }): Promise<BatchRun>;
}

/** One finished run, for metrics. */
export interface RunRecord {
  /** Index into the model's levels. */
  level: number;
  u: number;
  batch: number;
  /** ONNX Runtime's own time, ms. */
  runMs: number;
  /** Time seen by the batcher, ms (the worker round trip included). */
  wallMs: number;
}

/** Options of `MicroBatcher`. */
export interface BatcherOptions {
  /** The most samples one run holds. */
  maxBatch: number;
  /** How long the oldest request may wait for a batch to fill while the runner is idle, ms. */
  maxWaitMs: number;
  /** The most samples the queue holds; more are refused with 503 (overloaded). */
  maxQueue: number;
  /** The model's levels, cheapest first. */
  levels: readonly OnnxLevel[];
  /** Picks the level of every sample of a dispatch. */
  policy: ServePolicy;
  /** Called after every run. */
  onRun?: (r: RunRecord) => void;
  /**
   * Where the host shares the model's cores: the process's CPU time so far, ms, and the cores a run keeps
   * busy. The CPU the host spends beside the runs, per sample, goes to the policy's estimator.
   */
  sharedCores?: { cpuMs: () => number; runThreads: number };
  /** The clock, ms (default `performance.now`). */
  now?: () => number;
}

/** The answer to one request. */
export interface BatchedResult {
  /** Class scores, [count, numClasses] row-major. */
  scores: Float32Array;
  classes: Int32Array;
  numClasses: number;
  /** The utilization each sample ran at (its level's representative u). */
  u: Float64Array;
  /** The network level each sample ran at (the metadata's `levels[].level`). */
  level: Int32Array;
  /** Dynamic models: each sample's executed FLOPs ratio. */
  flopsRatio?: Float64Array;
  /** Early-exit models run with their rule: the exit (0-based) each sample left at. */
  exits?: Int32Array;
  /** From arrival to the dispatch of its batch, ms. */
  queueMs: number;
  /** ONNX Runtime time of the run(s) holding its samples, ms. */
  inferenceMs: number;
  /** Samples in the dispatch it ran in. */
  batchSize: number;
  /** When its answer was ready, on the batcher's clock. */
  readyAt: number;
}

interface Pending extends PredictInput {
  /** Arrival time on the batcher's clock. */
  arrival: number;
  resolve: (r: BatchedResult) => void;
  reject: (e: Error) => void;
}

/**
 * Micro-batching: requests queue up; while the runner is idle a batch is dispatched once it holds
 * `maxBatch` samples or its oldest request has waited `maxWaitMs`, and while the runner is busy the queue
 * fills for the next one. At dispatch the policy picks a level per sample; samples are grouped by level
 * and each group runs as one batch. One batch runs at a time (one session per model).
 */
export class MicroBatcher {
  private readonly queue: Pending[] = [];
  private queued = 0;
  private busy = false;
  private timer: NodeJS.Timeout | null = null;
  private closing = false;
  private idle: (() => void) | null = null;
  /** CPU time, clock and run time (times its threads) at the last host observation, and the samples run since. */
  private hostMark = hostMarkAt(NaN, 0);
  /**
   * Samples arriving while a batch runs, per ms of running, averaged over about ARRIVAL_WINDOW_MS of running:
   * what the batch behind a run grows by. Arrivals while idle do not count: a client that waits for its answer
   * before sending again adds nothing behind the run. As of the last dispatch; it fades while idle.
   */
  private busyRate = 0;
  /** While a dispatch runs its batches: the samples arrived since it started; null between dispatches. */
  private arrivedInRun: number | null = null;
  /** When the last dispatch's runs ended. */
  private idleSince: number | null = null;
  /** The last batch's buffer, given back by the runner: the next batch is copied into it, not a new one. */
  private spare: ArrayBuffer | null = null;
  private readonly now: () => number;

  constructor(
    private readonly runner: BatchRunner,
    private readonly o: BatcherOptions,
  ) {
    this.now = o.now ?? (() => performance.now());
  }

  /** Samples arriving per ms while batches run, as of the last dispatch (see `busyRate`). */
  get arrivalsPerMs(): number {
    return this.busyRate;
  }

  /** Samples waiting in the queue. */
  get depth(): number {
    return this.queued;
  }

  /**
   * Queues a validated request; `arrival` is when it arrived (default now), so parsing counts as waiting.
   * Rejects with a 503 HttpError when the queue is full or the server is shutting down.
   */
  submit(input: PredictInput, arrival = this.now()): Promise<BatchedResult> {
    if (this.closing) return Promise.reject(shuttingDown());
    if (this.queued + input.count > this.o.maxQueue) {
      return Promise.reject(new HttpError(503, 'overloaded', `the queue is full (${this.queued} samples waiting, at most ${this.o.maxQueue}); retry later`));
    }
    if (this.arrivedInRun !== null) this.arrivedInRun += input.count;
    return new Promise((resolve, reject) => {
      this.queue.push({ ...input, arrival, resolve, reject });
      this.queued += input.count;
      this.pump();
    });
  }

  /** Refuses new requests and resolves once every queued request has been answered. */
  close(): Promise<void> {
    this.closing = true;
    if (!this.busy && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.idle = resolve;
      if (this.timer) {
        clearTimeout(this.timer);
        this.timer = null;
      }
      this.pump();
    });
  }

  private pump(): void {
    if (this.busy) return;
    if (this.queue.length === 0) {
      this.idle?.();
      this.idle = null;
      return;
    }
    const age = this.now() - this.queue[0].arrival;
    if (!this.closing && this.queued < this.o.maxBatch && age < this.o.maxWaitMs) {
      this.timer ??= setTimeout(() => {
        this.timer = null;
        this.pump();
      }, this.o.maxWaitMs - age);
      return;
    }
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    const { n, samples } = this.head();
    const taken = this.queue.splice(0, n);
    this.queued -= samples;
    this.busy = true;
    void this.dispatch(taken, samples).finally(() => {
      this.busy = false;
      this.arrivedInRun = null;
      this.pump();
    });
  }

  /** The requests at the head of the queue that fit one batch (at least one: requests hold at most maxBatch samples). */
  private head(): { n: number; samples: number } {
    let n = 0;
    let samples = 0;
    while (n < this.queue.length && (n === 0 || samples + this.queue[n].count <= this.o.maxBatch)) samples += this.queue[n++].count;
    return { n, samples };
  }

  /** Every 256 samples, or every second with fewer: the host's CPU per sample beside the runs, to the estimator. */
  private observeHost(runMs: number, samples: number): void {
    const shared = this.o.sharedCores;
    const est = this.o.policy.estimator;
    if (!shared || !est) return;
    const m = this.hostMark;
    m.runCpuMs += runMs * shared.runThreads;
    m.samples += samples;
    const now = this.now();
    if (m.samples < 256 && now - m.at < 1000 && Number.isFinite(m.cpuMs)) return;
    const cpu = shared.cpuMs();
    if (Number.isFinite(m.cpuMs)) est.observeHost((cpu - m.cpuMs - m.runCpuMs) / m.samples);
    this.hostMark = hostMarkAt(cpu, now);
  }

  /** Room for `samples` samples of `per` values: over the spare buffer when it is large enough, else a new one of a full batch. */
  private batchArray(samples: number, per: number): Float32Array {
    let buffer = this.spare;
    this.spare = null;
    if (!buffer || buffer.byteLength < 4 * samples * per) buffer = new ArrayBuffer(4 * per * Math.max(samples, this.o.maxBatch));
    return new Float32Array(buffer, 0, samples * per);
  }

  private async dispatch(taken: Pending[], samples: number): Promise<void> {
    const start = this.now();
    if (this.idleSince !== null) {
      const idle = Math.max(0, start - this.idleSince);
      this.busyRate *= Math.exp(-idle / IDLE_FADE_MS);
      // After a long idle spell, the host's CPU span starts afresh: its idle work (timers, GC, /metrics) is no sample's.
      if (idle > IDLE_FADE_MS) this.hostMark = hostMarkAt(NaN, start);
    }
    this.arrivedInRun = 0;
    let behind: Dispatch['behind'] = null;
    if (this.queue.length > 0) behind = { samples: this.head().samples, waitMs: start - this.queue[0].arrival };
    const views: PendingView[] = taken.map((p) => ({ count: p.count, waitMs: start - p.arrival, u: p.u, budgetMs: p.budgetMs, images: p.images }));
    let levels: Int32Array;
    try {
      levels = await this.o.policy.choose({ requests: views, samples, behind, arrivalsPerMs: this.busyRate });
    } catch (err) {
      for (const p of taken) p.reject(err as Error);
      return;
    }
    const per = taken[0].images.length / taken[0].count;
    const results: (BatchedResult | null)[] = taken.map((p) => ({
      scores: new Float32Array(0),
      classes: new Int32Array(p.count),
      numClasses: 0,
      u: new Float64Array(p.count),
      level: new Int32Array(p.count),
      queueMs: start - p.arrival,
      inferenceMs: 0,
      batchSize: samples,
      readyAt: 0,
    }));
    const order = [...new Set(levels)];
    for (const lv of order) {
      // This level's samples as runs of consecutive rows of one request, (request, first row, rows) each: a
      // request whose samples all run at one level is one copy in and one out, not one per sample.
      const runs: number[] = [];
      let n = 0;
      for (let r = 0, i = 0; r < taken.length; i += taken[r++].count) {
        for (let j = 0; j < taken[r].count; ) {
          if (levels[i + j] !== lv) {
            j++;
            continue;
          }
          const first = j;
          while (j < taken[r].count && levels[i + j] === lv) j++;
          runs.push(r, first, j - first);
          n += j - first;
        }
      }
      const x = this.batchArray(n, per);
      for (let q = 0, at = 0; q < runs.length; q += 3) {
        x.set(taken[runs[q]].images.subarray(runs[q + 1] * per, (runs[q + 1] + runs[q + 2]) * per), at * per);
        at += runs[q + 2];
      }
      const u = this.o.levels[lv].u;
      const t0 = this.now();
      let p: BatchRun;
      try {
        p = await this.runner.run(x, u, { lend: true });
      } catch (err) {
        // A failed run keeps the lent buffer (the worker's error does not carry it): the next batch allocates one.
        for (let q = 0; q < runs.length; q += 3) {
          if (results[runs[q]]) taken[runs[q]].reject(err as Error);
          results[runs[q]] = null;
        }
        continue;
      }
      if (p.images) this.spare = p.images.buffer as ArrayBuffer;
      this.o.onRun?.({ level: lv, u: p.u, batch: n, runMs: p.ms, wallMs: this.now() - t0 });
      this.o.policy.estimator?.observe(lv, n, p.ms, this.now() - t0);
      this.observeHost(p.ms, n);
      const c = p.numClasses;
      let counted = -1;
      for (let q = 0, at = 0; q < runs.length; at += runs[q + 2], q += 3) {
        const r = runs[q];
        const first = runs[q + 1];
        const rows = runs[q + 2];
        const res = results[r];
        if (!res) continue;
        if (res.numClasses === 0) {
          res.numClasses = c;
          res.scores = new Float32Array(taken[r].count * c);
        }
        res.scores.set(p.scores.subarray(at * c, (at + rows) * c), first * c);
        res.classes.set(p.classes.subarray(at, at + rows), first);
        res.u.fill(p.u, first, first + rows);
        res.level.fill(p.level, first, first + rows);
        if (p.flopsRatios) (res.flopsRatio ??= new Float64Array(res.classes.length)).set(p.flopsRatios.subarray(at, at + rows), first);
        if (p.exits) (res.exits ??= new Int32Array(res.classes.length)).set(p.exits.subarray(at, at + rows), first);
        // A request's runs at this level are consecutive in `runs`: its run time counts once.
        if (counted !== r) res.inferenceMs += p.ms;
        counted = r;
      }
    }
    const readyAt = this.now();
    // The runs are over (answers go out next): a time-weighted average, each dispatch counting by its length.
    const ran = readyAt - start;
    if (ran > 0) this.busyRate += Math.min(1, ran / ARRIVAL_WINDOW_MS) * ((this.arrivedInRun ?? 0) / ran - this.busyRate);
    this.arrivedInRun = null;
    this.idleSince = readyAt;
    results.forEach((res, r) => {
      if (res) taken[r].resolve({ ...res, readyAt });
    });
  }
}
