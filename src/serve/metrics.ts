import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ErrorKind } from './errors.js';
import type { RunRecord } from './batcher.js';

/** Options of `ServeMetrics`. */
export interface MetricsOptions {
  /** The levels' utilizations, ascending: the utilization histogram's buckets. */
  levelUs: readonly number[];
  /** The server's max batch: the batch-size histogram's top bucket. */
  maxBatch: number;
  /** The SLO, ms: added to the latency buckets so the share within it reads off exactly. */
  sloMs: number;
  /** Also export the process metrics (RSS, heap, event-loop lag, GC) as `dynn_process_*` (default true). */
  processMetrics?: boolean;
}

/** Seconds, for the latency histograms: 0.5 ms to 10 s. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10];

/**
 * The server's Prometheus metrics, in a registry of its own (no global state: two servers in one process
 * keep separate counts). Served as text by `GET /metrics`.
 */
export class ServeMetrics {
  readonly registry = new Registry();
  /** Finished requests by outcome (ok, error). */
  readonly requests: Counter<'outcome'>;
  /** Refused or failed requests by kind. */
  readonly errors: Counter<'kind'>;
  /** Server-side latency of answered predictions, arrival to response, seconds. */
  readonly latency: Histogram;
  /** Queue wait of answered predictions, seconds. */
  readonly queueWait: Histogram;
  /** ONNX Runtime time per run, seconds. */
  readonly inference: Histogram;
  /** Utilization each sample ran at. */
  readonly utilization: Histogram;
  /** Samples per run. */
  readonly batchSize: Histogram;
  /** Samples waiting in the queue. */
  readonly queueDepth: Gauge;
  /** Open sessions (`POST /v1/sessions`). */
  readonly sessionsOpen: Gauge;

  constructor(o: MetricsOptions, depth: () => number, sessions: () => number = () => 0) {
    const registers = [this.registry];
    const buckets = [...new Set([...LATENCY_BUCKETS, o.sloMs / 1000])].sort((a, b) => a - b);
    this.requests = new Counter({ name: 'dynn_requests_total', help: 'Prediction requests finished, by outcome', labelNames: ['outcome'], registers });
    this.errors = new Counter({ name: 'dynn_errors_total', help: 'Requests refused or failed, by kind', labelNames: ['kind'], registers });
    this.latency = new Histogram({ name: 'dynn_request_duration_seconds', help: 'Server-side latency of answered predictions, arrival to response', buckets, registers });
    this.queueWait = new Histogram({ name: 'dynn_queue_wait_seconds', help: 'Time answered predictions waited for their batch', buckets, registers });
    this.inference = new Histogram({ name: 'dynn_inference_seconds', help: 'ONNX Runtime time per batch run', buckets, registers });
    this.utilization = new Histogram({ name: 'dynn_utilization', help: 'Utilization u each sample ran at', buckets: [...o.levelUs], registers });
    const sizes: number[] = [];
    for (let b = 1; b < o.maxBatch; b *= 2) sizes.push(b);
    this.batchSize = new Histogram({ name: 'dynn_batch_size', help: 'Samples per batch run', buckets: [...sizes, o.maxBatch], registers });
    this.queueDepth = new Gauge({ name: 'dynn_queue_depth', help: 'Samples waiting in the queue', registers, collect: () => this.queueDepth.set(depth()) });
    this.sessionsOpen = new Gauge({ name: 'dynn_sessions_open', help: 'Sessions open (temporal controller state held per stream)', registers, collect: () => this.sessionsOpen.set(sessions()) });
    if (o.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'dynn_' });
  }

  /** Records one batch run. */
  run(r: RunRecord): void {
    this.inference.observe(r.runMs / 1000);
    this.batchSize.observe(r.batch);
    for (let i = 0; i < r.batch; i++) this.utilization.observe(r.u);
  }

  /** Records an answered prediction. */
  ok(totalMs: number, queueMs: number): void {
    this.requests.inc({ outcome: 'ok' });
    this.latency.observe(totalMs / 1000);
    this.queueWait.observe(queueMs / 1000);
  }

  /** Records an answered session frame: it waits in no queue, so it adds no queue wait. */
  okSession(totalMs: number): void {
    this.requests.inc({ outcome: 'ok' });
    this.latency.observe(totalMs / 1000);
  }

  /** Records a refused or failed request. */
  error(kind: ErrorKind): void {
    this.requests.inc({ outcome: 'error' });
    this.errors.inc({ kind });
  }

  /** The metrics as Prometheus text. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** The content type of `text()`. */
  get contentType(): string {
    return this.registry.contentType;
  }
}
