import { promises as fsp } from 'node:fs';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { OnnxMetadata } from '../export/metadata.js';
import { defaultThreads, OnnxModel } from '../runtime/node.js';
import { TemporalSession } from '../runtime/session.js';
import { latencyTablePath, profileModel, readLatencyTable, saveLatencyTable, type LatencyTable } from '../runtime/profile.js';
import { DynnError } from '../util/errors.js';
import { createHttpApp, listenHttp, type HttpSafetyOptions } from '../util/http.js';
import { MicroBatcher, type BatchedResult, type BatchRunner } from './batcher.js';
import { classify, HttpError, invalidInput, nonFiniteScores, shuttingDown } from './errors.js';
import { parseBinaryRequest, parseJsonRequest, type InputSpec } from './input.js';
import { ServeMetrics } from './metrics.js';
import { FrameBatcher } from './frames.js';
import { SessionStore, sessionRoutes, type SessionStoreOptions } from './sessions.js';
import { createPolicy, parsePolicy, policies, type SampleController, type ServePolicy } from './policy.js';

/** Options of `DynnServer.create`; unset fields take the defaults shown (the HTTP safety ones: `HTTP_DEFAULTS`). */
export interface ServeOptions extends HttpSafetyOptions {
  /** The ONNX model file written by `dynn export`, or the folder it writes for a dynamic model. */
  model: string;
  /** `adaptive` (default), `fixed:U` or `controller`. */
  policy?: string;
  /** Latency objective per request, server side, in ms (default 25). */
  sloMs?: number;
  /** The most samples one batch run holds, and one request may send (default 64). */
  maxBatch?: number;
  /** How long a batch may wait to fill while the model is idle, ms (default 2). */
  maxWaitMs?: number;
  /** The most samples waiting; beyond it requests get 503 (default 32 x maxBatch). Session frames in flight have a bound of the same size. */
  maxQueue?: number;
  /** The largest request body in bytes (default: room for maxBatch samples as JSON). */
  bodyLimit?: number;
  /** ONNX Runtime intra-op threads (default: the core count). */
  threads?: number;
  /**
   * Let idle ONNX Runtime threads spin (default false: the HTTP thread shares the cores, and spinning
   * threads take CPU time from it).
   */
  spinning?: boolean;
  /**
   * An early-exit model whose graph holds its fitted exit rule (`dynn fit-exits --save`, then export): run
   * it, so a sample sure at an early exit leaves there and its answer names the exit (default true); false
   * runs every sample to the last exit.
   */
  exits?: boolean;
  /** With no latency table beside the model, measure one now and store it (default false: refuse to start). */
  profile?: boolean;
  /** Timed runs per level and batch size of that measurement (default 10). */
  profileReps?: number;
  /**
   * The per-input controller of the `controller` policy (default: the controller exported in the model,
   * `dynn export RUN --onnx F --controller DIR`, run by ONNX Runtime with the network).
   */
  controller?: SampleController;
  /** Where startup notes go (default: nowhere). */
  log?: (line: string) => void;
  /** Models with a temporal controller: the most sessions open at once (default 1024). */
  maxSessions?: SessionStoreOptions['maxSessions'];
  /** Models with a temporal controller: a session unused this long expires, ms (default 60000). */
  sessionIdleMs?: SessionStoreOptions['idleMs'];
}

declare module 'fastify' {
  interface FastifyRequest {
    /** When the request arrived (performance.now()), so parsing counts toward its queue wait. */
    arrival: number;
    /** When its batch's answers were ready (performance.now()), 0 until then. */
    readyAt: number;
    /** Whether it was answered under the server's SLO (no own u or budgetMs): its time teaches the policy's plan. */
    underSlo: boolean;
  }
}

/** The JSON answer of `POST /v1/predict`. */
export interface PredictResponse {
  /** One entry per sample, in order. */
  predictions: {
    /** The highest-scoring class. */
    class: number;
    /** Its name, from the model's metadata. */
    className: string;
    /** The utilization it ran at: the representative u of the exported level that ran. */
    u: number;
    /** The network level that ran (the metadata's `levels[].level`). */
    level: number;
    /** Class scores (logits). */
    scores: number[];
    /**
     * Dynamic models and early exits: the FLOPs this sample executed (gates, or the exit heads it passed,
     * included) over the network's at u = 1.
     */
    flopsRatio?: number;
    /** Early-exit models served with their rule: the exit (0-based) the sample left at. */
    exit?: number;
  }[];
  /** Server-side times, ms: arrival to batch dispatch, ONNX Runtime's run(s), arrival to response. */
  timings: { queueMs: number; inferenceMs: number; totalMs: number };
  /** Samples in the batch run this request was part of. */
  batchSize: number;
}

const ROUTES = 'POST /v1/predict, POST /v1/sessions, POST /v1/sessions/ID/predict, DELETE /v1/sessions/ID, GET /healthz, GET /metrics';

/** The process's CPU time so far (user and system, every thread), ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

/** A number as JSON writes it: finite numbers as JavaScript prints them, the others as null. */
function jsonNumber(x: number): string {
  return Number.isFinite(x) ? String(x) : 'null';
}

/**
 * The text of a `PredictResponse`, the same as `JSON.stringify` gives for it, written straight from the batch's
 * arrays: building 16 prediction objects and score arrays and then serializing them was the largest part of
 * answering a request. `names` are the class names already quoted as JSON strings; the scores are finite
 * (checked before).
 */
export function predictResponseText(res: BatchedResult, totalMs: number, names: readonly string[]): string {
  const c = res.numClasses;
  let s = '{"predictions":[';
  for (let i = 0; i < res.classes.length; i++) {
    const cls = res.classes[i];
    s += `${i > 0 ? ',' : ''}{"class":${cls},"className":${names[cls] ?? JSON.stringify(String(cls))},"u":${jsonNumber(res.u[i])},"level":${res.level[i]},"scores":[`;
    for (let j = 0; j < c; j++) s += j > 0 ? `,${res.scores[i * c + j]}` : `${res.scores[i * c + j]}`;
    s += res.flopsRatio ? `],"flopsRatio":${jsonNumber(res.flopsRatio[i])}` : ']';
    s += res.exits ? `,"exit":${res.exits[i]}}` : '}';
  }
  const t = `{"queueMs":${jsonNumber(round(res.queueMs))},"inferenceMs":${jsonNumber(round(res.inferenceMs))},"totalMs":${jsonNumber(round(totalMs))}}`;
  return `${s}],"timings":${t},"batchSize":${res.batchSize}}`;
}

/** Reads the latency table beside a model: null when there is none, an error when it is bad or stale. */
async function tableBeside(model: string): Promise<LatencyTable | null> {
  try {
    await fsp.access(latencyTablePath(model));
  } catch {
    return null;
  }
  return readLatencyTable(model);
}

/**
 * dynn's inference server: `POST /v1/predict` (JSON or float32 bodies, micro-batched, a level per batch
 * from the policy), `GET /healthz`, `GET /metrics` (Prometheus text). The model runs in a worker thread so
 * the event loop keeps answering.
 */
export class DynnServer {
  private closing: Promise<void> | null = null;

  private constructor(
    /** The Fastify instance (for `inject` in tests). */
    readonly app: FastifyInstance,
    /** The model, in its worker thread. */
    readonly model: OnnxModel,
    readonly policy: ServePolicy,
    readonly metrics: ServeMetrics,
    private readonly batcher: MicroBatcher,
    /** The latency table the policy reads, or null. */
    readonly table: LatencyTable | null,
    /** Open sessions, for a model exported with a temporal controller; else null. */
    readonly sessions: SessionStore | null = null,
  ) {}

  /** The model's metadata. */
  get metadata(): OnnxMetadata {
    return this.model.metadata;
  }

  /**
   * Loads the model, its latency table and the policy, and sets up the routes (call `listen` next).
   * Rejects with a DynnError for bad options, a missing or stale latency table the policy needs, or a bad model.
   */
  static async create(o: ServeOptions): Promise<DynnServer> {
    const sloMs = o.sloMs ?? 25;
    const maxBatch = o.maxBatch ?? 64;
    const maxWaitMs = o.maxWaitMs ?? 2;
    const maxQueue = o.maxQueue ?? 32 * maxBatch;
    const threads = o.threads ?? defaultThreads();
    if (!(sloMs > 0 && Number.isFinite(sloMs))) throw new DynnError(`the SLO must be a positive number of ms, got ${sloMs}`);
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new DynnError(`max batch must be a positive integer, got ${maxBatch}`);
    if (!(maxWaitMs >= 0 && Number.isFinite(maxWaitMs))) throw new DynnError(`max wait must be a number of ms >= 0, got ${maxWaitMs}`);
    if (!Number.isInteger(maxQueue) || maxQueue < maxBatch) throw new DynnError(`max queue must be an integer >= max batch (${maxBatch}), got ${maxQueue}`);
    // A folder is a dynamic model exported by segments: its gates choose each sample's width, so it has one
    // level and runs at it whatever the load.
    const routed = (await fsp.stat(o.model).catch(() => null))?.isDirectory() === true;
    const spec = parsePolicy(o.policy ?? (routed ? 'fixed:1' : 'adaptive'));
    if (routed && (spec.name !== 'fixed' || (spec.arg !== undefined && spec.arg !== 1))) throw new DynnError(`policy ${o.policy ?? spec.name} does not apply to ${o.model}: a dynamic model's gates choose each sample's width inside the network; serve it with the default policy (fixed:1)`);
    let table = routed ? null : await tableBeside(o.model);
    if (!table && policies.get(spec.name).needsTable && o.profile) table = await measureTable(o, threads, maxBatch);
    if (table && table.host.threads !== threads) {
      o.log?.(`note: the latency table was measured with ${table.host.threads} threads, the server runs ${threads}; the server corrects the table online`);
    }
    const model = await OnnxModel.load(o.model, { worker: true, threads, spinning: o.spinning ?? false });
    try {
      const meta = model.metadata;
      if (spec.name === 'controller' && meta.controller?.temporal && !o.controller) {
        throw new DynnError(`policy controller needs a per-input controller; ${o.model}'s is temporal: it plans each stream's next frame, through POST /v1/sessions (serve it with another policy)`);
      }
      const controller = o.controller ?? (meta.controller && !meta.controller.temporal ? (images: Float32Array) => model.decide(images).then((d) => d.u) : undefined);
      const policy = createPolicy(spec, { levels: meta.levels, table, sloMs, modelPath: o.model, controller });
      const per = meta.input.shape.reduce((a, b) => a * b, 1);
      // A float32 printed as a JSON number takes up to ~22 bytes with its separator: room for a full batch.
      const bodyLimit = o.bodyLimit ?? Math.max(1 << 20, 24 * per * maxBatch + 4096);
      // The HTTP thread takes turns with the runs when the model's threads fill the cores this process may use.
      const sharedCores = threads + 1 > defaultThreads() ? { cpuMs, runThreads: threads } : undefined;
      // An early-exit model with its rule in the graph: each batch runs the policy (one run; samples that are
      // sure leave early), each sample with the FLOPs of the exit it left at.
      const runner: BatchRunner = meta.exits?.inGraph && o.exits !== false ? { run: (x, u, ro) => model.runExits(x, u, { lend: ro?.lend }) } : model;
      const batcher: MicroBatcher = new MicroBatcher(runner, { maxBatch, maxWaitMs, maxQueue, levels: meta.levels, policy, onRun: (r) => metrics.run(r), sharedCores });
      // Every session's frames go through one batcher: concurrent streams share runs, one per planned action.
      const frames = meta.controller?.temporal ? new FrameBatcher((x, a) => model.step(x, a), meta, maxBatch, (r) => metrics.run(r)) : null;
      const sessions = frames ? new SessionStore(() => new TemporalSession(meta, frames.step), { maxSessions: o.maxSessions, idleMs: o.sessionIdleMs, maxInflight: maxQueue }) : null;
      const metrics = new ServeMetrics({ levelUs: meta.levels.map((l) => l.u), maxBatch, sloMs }, () => batcher.depth, () => sessions?.size ?? 0);
      const app = createHttpApp({ bodyLimit, logger: false, return503OnClosing: false, forceCloseConnections: 'idle' }, o);
      const server = new DynnServer(app, model, policy, metrics, batcher, table, sessions);
      server.routes({ shape: meta.input.shape, maxSamples: maxBatch }, sloMs, o.log ?? (() => {}));
      return server;
    } catch (err) {
      await model.dispose();
      throw err;
    }
  }

  private routes(spec: InputSpec, sloMs: number, log: (line: string) => void): void {
    const { app, metrics, batcher } = this;
    const meta = this.metadata;
    app.decorateRequest('arrival', 0);
    app.decorateRequest('readyAt', 0);
    app.decorateRequest('underSlo', false);
    const fail = (reply: FastifyReply, err: Error) => {
      const { status, kind, message } = classify(err, 'application/json or application/octet-stream (float32)');
      metrics.error(kind);
      if (status >= 500 && kind === 'internal') log(`internal error: ${err.stack ?? err.message}`);
      return reply.code(status).type('application/json').send({ error: kind, message });
    };
    // Callback hooks, not async ones: no promise per request and hook.
    app.addHook('onRequest', (request, reply, done) => {
      request.arrival = performance.now();
      // A request that starts once shutting down gets the server's own 503 body (Fastify's would differ in shape);
      // /healthz answers, to say so.
      if (this.closing && request.url.split('?')[0] !== '/healthz') {
        void fail(reply, shuttingDown());
        return;
      }
      done();
    });
    // Once shutting down, every answer closes its connection, so keep-alive clients cannot hold the close open.
    app.addHook('onSend', (_request, reply, payload, done) => {
      if (this.closing) reply.header('connection', 'close');
      done(null, payload);
    });
    app.addHook('onResponse', (request, _reply, done) => {
      const now = performance.now();
      if (request.readyAt > 0) this.policy.estimator?.observeTail(now - request.readyAt);
      if (request.underSlo) this.policy.estimator?.observeLatency(now - request.arrival, sloMs);
      done();
    });
    app.removeContentTypeParser('text/plain');
    app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    app.setErrorHandler((err, _request, reply) => fail(reply, err instanceof Error ? err : new Error(String(err))));
    app.setNotFoundHandler((request, reply) =>
      fail(reply, new HttpError(404, 'not_found', `no route ${request.method} ${request.url.split('?')[0]}; routes: ${ROUTES}`)),
    );

    const quotedNames = meta.classNames.map((n) => JSON.stringify(n));
    app.post('/v1/predict', async (request, reply) => {
      const input = Buffer.isBuffer(request.body) ? parseBinaryRequest(request.body, request.query, spec) : parseJsonRequest(request.body, request.query, spec);
      // A dynamic model has one operating point: its gates choose each sample's compute inside the network.
      if (meta.routed && input.u !== undefined) throw invalidInput(`u does not apply to ${meta.model.model}: its gates choose each sample's compute inside the network`);
      if (input.budgetMs !== undefined && !this.policy.estimator) {
        throw invalidInput(`budgetMs needs the latency table beside the model; run \`dynn profile ${this.model.path}\` and restart the server`);
      }
      const res = await batcher.submit(input, request.arrival);
      request.readyAt = res.readyAt;
      const totalMs = performance.now() - request.arrival;
      // Non-finite scores make it a 422, which the error handler counts, not a success.
      const bad = nonFiniteScores(res.scores, res.numClasses);
      if (bad) throw bad;
      // Answered under the server's SLO: its time (from arrival, the upload included, as the SLO counts it)
      // teaches the plan. Refused (503) and failed requests are not answers and do not.
      request.underSlo = this.policy.plansForSlo && input.u === undefined && input.budgetMs === undefined;
      const body = predictResponseText(res, totalMs, quotedNames);
      metrics.ok(totalMs, res.queueMs);
      return reply.type('application/json; charset=utf-8').send(body);
    });

    sessionRoutes({ app, metadata: meta, store: this.sessions, metrics, shape: spec.shape });

    app.get('/healthz', async (_request, reply) => {
      const body = {
        status: this.closing ? 'shutting_down' : 'ok',
        model: { name: meta.model.model, input: { layout: 'NCHW', shape: meta.input.shape }, classes: meta.classNames, levels: meta.levels.map((l) => l.u), ...(meta.routed ? { routed: meta.routed } : {}) },
        policy: this.policy.name,
        sloMs,
        maxBatch: spec.maxSamples,
        queueDepth: batcher.depth,
        ...(this.sessions ? { sessions: { open: this.sessions.size, max: this.sessions.maxSessions, idleMs: this.sessions.idleMs } } : {}),
        latency: this.policy.estimator ? { factor: this.policy.estimator.factor, overheadMs: this.policy.estimator.overheadMs, tailMs: this.policy.estimator.tailMs, ...(this.policy.plansForSlo ? { planShare: this.policy.estimator.planShare } : {}) } : null,
      };
      return reply.code(this.closing ? 503 : 200).send(body);
    });

    app.get('/metrics', async (_request, reply) => reply.type(metrics.contentType).send(await metrics.text()));
  }

  /**
   * Starts listening; resolves to the address (e.g. `http://127.0.0.1:8080`). Port 0 picks a free port.
   * A port in use or a host that does not resolve is a DynnError.
   */
  async listen(options: { port?: number; host?: string } = {}): Promise<string> {
    return listenHttp(this.app, options.port ?? 8080, options.host ?? '127.0.0.1');
  }

  /**
   * Graceful shutdown: stops accepting connections (new requests on open ones get 503), answers every
   * queued request, then stops the model's worker. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const drained = this.batcher.close();
      await this.app.close();
      await drained;
      this.sessions?.clear();
      await this.model.dispose();
      this.metrics.registry.clear();
    })();
    return this.closing;
  }
}

/** Measures a latency table at startup (`--profile`) with an in-thread session, and stores it beside the model. */
async function measureTable(o: ServeOptions, threads: number, maxBatch: number): Promise<LatencyTable> {
  o.log?.(`no latency table beside ${o.model}; measuring one (batches 1..${maxBatch})`);
  const model = await OnnxModel.load(o.model, { threads });
  try {
    const batches = [...new Set([1, Math.min(8, maxBatch), maxBatch])];
    const table = await profileModel(model, { batches, reps: o.profileReps ?? 10, warmup: 3, threads });
    o.log?.(`saved ${await saveLatencyTable(o.model, table)}`);
    return table;
  } finally {
    await model.dispose();
  }
}
