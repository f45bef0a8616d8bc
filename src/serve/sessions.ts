import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { OnnxMetadata } from '../export/metadata.js';
import { NonFiniteScoresError, type SessionStep, type TemporalSession } from '../runtime/session.js';
import { DynnError } from '../util/errors.js';
import { HttpError, invalidInput, nonFiniteScores } from './errors.js';
import { parseBinaryRequest, parseJsonRequest, type InputSpec } from './input.js';
import type { ServeMetrics } from './metrics.js';

/** A served stream's session: its frames come NCHW, with no run options. */
type ServedSession = TemporalSession<undefined>;

/** Defaults of the session bounds (`dynn serve --max-sessions`, `--session-idle-ms`). */
export const SESSION_DEFAULTS = { maxSessions: 1024, idleMs: 60_000, maxInflight: 2048 } as const;

/** Options of `SessionStore`. */
export interface SessionStoreOptions {
  /** The most sessions open at once; opening one more is a 429 (default 1024). */
  maxSessions?: number;
  /** A session unused this long (ms) expires and its state is dropped (default 60000). */
  idleMs?: number;
  /** The most session frames running or waiting for the model at once, all sessions together; more get 503 (the server passes its --max-queue). */
  maxInflight?: number;
}

/**
 * The server's open sessions, by id: a bounded map whose entries expire after `idleMs` without use (a timer
 * each, refreshed on use and unref'd so it never keeps the process up). Ids are random UUIDs: unguessable,
 * so one client cannot drive another's stream.
 */
export class SessionStore {
  readonly maxSessions: number;
  readonly idleMs: number;
  readonly maxInflight: number;
  private inflight = 0;
  private readonly open = new Map<string, { session: ServedSession; timer: NodeJS.Timeout; busy: boolean }>();

  constructor(
    private readonly create: () => ServedSession,
    options: SessionStoreOptions = {},
  ) {
    this.maxSessions = options.maxSessions ?? SESSION_DEFAULTS.maxSessions;
    this.idleMs = options.idleMs ?? SESSION_DEFAULTS.idleMs;
    this.maxInflight = options.maxInflight ?? SESSION_DEFAULTS.maxInflight;
    if (!Number.isInteger(this.maxInflight) || this.maxInflight < 1) throw new DynnError(`max session frames in flight must be a positive integer, got ${this.maxInflight}`);
    if (!Number.isInteger(this.maxSessions) || this.maxSessions < 1) throw new DynnError(`max sessions must be a positive integer, got ${this.maxSessions}`);
    // setTimeout's limit: a longer delay would fire at once.
    if (!Number.isInteger(this.idleMs) || this.idleMs < 1 || this.idleMs > 2 ** 31 - 1) throw new DynnError(`session idle time must be an integer number of ms in [1, ${2 ** 31 - 1}], got ${this.idleMs}`);
  }

  /** Open sessions. */
  get size(): number {
    return this.open.size;
  }

  /** Opens a session; a 429 over the bound. */
  add(): string {
    if (this.open.size >= this.maxSessions) {
      throw new HttpError(429, 'too_many_sessions', `${this.open.size} sessions are open, the server's bound (--max-sessions ${this.maxSessions}); close one (DELETE /v1/sessions/ID) or wait for idle ones to expire (after ${this.idleMs} ms)`);
    }
    const id = randomUUID();
    const timer = setTimeout(() => this.open.delete(id), this.idleMs);
    timer.unref();
    this.open.set(id, { session: this.create(), timer, busy: false });
    return id;
  }

  /** Session frames running or waiting for the model. */
  get framesInFlight(): number {
    return this.inflight;
  }

  /**
   * Runs `frame` on the session `id` (its idle time restarted): a 404 naming it when it is unknown or expired,
   * a 409 while its previous frame is still pending (a stream's frames come one after another: a second
   * concurrent one would queue without bound), a 503 when `maxInflight` frames of all sessions are pending.
   */
  async run<T>(id: string, frame: (session: ServedSession) => Promise<T>): Promise<T> {
    const entry = this.open.get(id);
    if (!entry) throw unknownSession(id, this.idleMs);
    if (entry.busy) throw new HttpError(409, 'session_busy', `session ${id}'s previous frame is still running; send a session's frames one at a time, each after the previous answer`);
    if (this.inflight >= this.maxInflight) {
      throw new HttpError(503, 'overloaded', `${this.inflight} session frames are running, the server's bound (--max-queue ${this.maxInflight}); retry later`);
    }
    entry.timer.refresh();
    entry.busy = true;
    this.inflight++;
    try {
      return await frame(entry.session);
    } finally {
      entry.busy = false;
      this.inflight--;
      entry.timer.refresh();
    }
  }

  /** Closes the session `id`; a 404 when it is unknown or expired. */
  delete(id: string): void {
    const entry = this.open.get(id);
    if (!entry) throw unknownSession(id, this.idleMs);
    clearTimeout(entry.timer);
    this.open.delete(id);
  }

  /** Drops every session. */
  clear(): void {
    for (const { timer } of this.open.values()) clearTimeout(timer);
    this.open.clear();
  }
}

function unknownSession(id: string, idleMs: number): HttpError {
  const shown = id.length > 80 ? `${id.slice(0, 80)}...` : id;
  return new HttpError(404, 'unknown_session', `no session "${shown}": unknown, closed, or expired after ${idleMs} ms without use; open one with POST /v1/sessions`);
}

/** The JSON answer of `POST /v1/sessions/:id/predict`: the session's step (`SessionStep`), its scores as numbers. */
export interface SessionPredictResponse extends Omit<SessionStep, 'scores' | 'ms'> {
  className: string;
  scores: number[];
  /** The session's idle time left after this answer, ms. */
  expiresInMs: number;
  /** Server-side times, ms. */
  timings: { inferenceMs: number; totalMs: number };
}

/** The session routes and what they need of the server. */
export interface SessionRoutes {
  app: FastifyInstance;
  metadata: OnnxMetadata;
  /** Null when the model has no temporal controller: the routes answer a clear 4xx. */
  store: SessionStore | null;
  metrics: ServeMetrics;
  /** The model's per-sample shape, NCHW. */
  shape: readonly number[];
}

/**
 * `POST /v1/sessions` (`{ id, expiresInMs, actions }`, and `resolutions` for a controller over (u, r)), `POST /v1/sessions/:id/predict` (one frame, as
 * `/v1/predict` takes a sample: JSON or float32) and `DELETE /v1/sessions/:id`. A session's frames run
 * one at a time at the u its temporal controller planned from the previous frame, outside the micro-batcher
 * and its load policy (the plan is the stream's), bounded apart: one pending frame per session, at most
 * `maxInflight` across sessions. The server's sessions share their runs (`FrameBatcher`, which records them).
 */
export function sessionRoutes({ app, metadata, store, metrics, shape }: SessionRoutes): void {
  const spec: InputSpec = { shape, maxSamples: 1, maxSamplesWhy: 'one frame per session call' };
  const storeOf = (): SessionStore => {
    if (!store) {
      throw new HttpError(400, 'no_temporal_controller', `this ${metadata.model.model} model was exported without a temporal controller, so it has no sessions; export it with one (dynn export RUN --onnx FILE --controller DIR, from \`dynn controller train --temporal\`) or use POST /v1/predict`);
    }
    return store;
  };
  const actions = metadata.controller?.actions ?? [];
  // A controller over (u, r): each action's input resolution, beside its u.
  const resolutions = metadata.controller?.temporal?.resolutions;

  app.post('/v1/sessions', async (_request, reply) => {
    const s = storeOf();
    const id = s.add();
    return reply.code(201).send({ id, expiresInMs: s.idleMs, actions, ...(resolutions && { resolutions }) });
  });

  app.post<{ Params: { id: string } }>('/v1/sessions/:id/predict', async (request): Promise<SessionPredictResponse> => {
    const arrival = request.arrival;
    const s = storeOf();
    const input = Buffer.isBuffer(request.body) ? parseBinaryRequest(request.body, request.query, spec) : parseJsonRequest(request.body, request.query, spec);
    if (input.u !== undefined || input.budgetMs !== undefined) throw invalidInput("a session's u is planned by its temporal controller; u and budgetMs do not apply");
    const step = await s.run(request.params.id, async (session) => {
      try {
        return await session.next(input.images);
      } catch (err) {
        // The session refused the frame and kept its plan; the client hears the 422 /v1/predict gives.
        throw err instanceof NonFiniteScoresError ? (nonFiniteScores(err.scores, metadata.numClasses) ?? err) : err;
      }
    });
    const totalMs = performance.now() - arrival;
    metrics.okSession(totalMs);
    const round = (ms: number) => Math.round(ms * 1000) / 1000;
    return {
      class: step.class,
      className: metadata.classNames[step.class] ?? String(step.class),
      scores: Array.from(step.scores),
      u: step.u,
      level: step.level,
      nextU: step.nextU,
      ...(step.resolution !== undefined && { resolution: step.resolution, nextResolution: step.nextResolution }),
      flopsRatio: step.flopsRatio,
      expiresInMs: s.idleMs,
      timings: { inferenceMs: round(step.ms), totalMs: round(totalMs) },
    };
  });

  app.delete<{ Params: { id: string } }>('/v1/sessions/:id', async (request) => {
    storeOf().delete(request.params.id);
    return { id: request.params.id, closed: true };
  });
}
