import { latencyAtBatch } from '../control/latency-table.js';
import { levelIndexFor, type OnnxLevel } from '../export/metadata.js';
import { latencyTablePath, type LatencyTable } from '../runtime/profile.js';
import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';

/** One request of a dispatch, as a policy sees it. */
export interface PendingView {
  /** Samples in the request. */
  count: number;
  /** How long it has waited so far, ms (from its arrival to this dispatch). */
  waitMs: number;
  /** The request's own utilization: honoured as given. */
  u?: number;
  /** The request's own latency budget in ms, in place of the server's SLO (fixed:U: it can only lower U). */
  budgetMs?: number;
  /** Its images, NCHW (a controller reads them). */
  images: Float32Array;
}

/** A batch about to run: the requests taken from the queue, and what waits behind them. */
export interface Dispatch {
  requests: readonly PendingView[];
  /** Samples in `requests`. */
  samples: number;
  /** The next batch the queue holds behind this one (it waits for this one to finish), or null. */
  behind: { samples: number; waitMs: number } | null;
  /** Samples arriving per ms while batches run, lately (0 when none): they queue behind this batch and run after it. */
  arrivalsPerMs?: number;
}

/** Predicts the time of one run (ms) at a level index and batch size. */
export type LatencyFn = (level: number, batch: number) => number;

/** Inputs of `adaptiveLevel`. */
export interface AdaptiveArgs {
  /** Predicted run time per level index (cheapest first) and batch size. */
  latency: LatencyFn;
  /** How many levels there are. */
  levels: number;
  /** Samples in the batch to run. */
  batch: number;
  /** The request's wait so far, ms. */
  waitMs: number;
  /** Its latency budget, ms. */
  budgetMs: number;
  /**
   * Requests queued behind this batch: they wait for it, then run next (assumed at the same level). The
   * level must let them meet `budgetMs` too, so a backlog lowers the level now instead of growing.
   */
  behind?: { batch: number; waitMs: number } | null;
  /**
   * Samples arriving per ms: those arriving while this batch runs join the batch behind it. Without them a
   * server under steady load picks a level its queue cannot keep up with at the next dispatch.
   */
  arrivalsPerMs?: number;
  /** The highest level index allowed (default: the top one). */
  cap?: number;
}

/**
 * The adaptive choice: the highest level whose predicted run time plus the wait so far meets the budget, and
 * lets the next batch meet it too (the one queued behind and what arrives during the run, at the same level);
 * the cheapest level when none does. Under overload it throttles instead of queueing.
 */
export function adaptiveLevel(a: AdaptiveArgs): number {
  const top = Math.min(a.cap ?? a.levels - 1, a.levels - 1);
  const queued = a.behind && a.behind.batch > 0 ? a.behind : null;
  for (let i = top; i > 0; i--) {
    const run = a.latency(i, a.batch);
    if (a.waitMs + run > a.budgetMs) continue;
    // The next batch: its oldest sample waits for this run (from its own arrival, or from the run's start).
    const next = (queued?.batch ?? 0) + Math.ceil((a.arrivalsPerMs ?? 0) * run);
    if (next > 0 && (queued?.waitMs ?? 0) + run + a.latency(i, next) > a.budgetMs) continue;
    return i;
  }
  return 0;
}

/**
 * The share of answers under the server's SLO that may be late: the adaptive choice plans for a budget below
 * the SLO that keeps them this rare. 1 in 200 rather than the 1 in 100 of a p99, since a client's time adds a
 * few ms of network and parsing to the server's.
 */
export const LATE_SHARE = 0.005;

/**
 * The planned share's step: a late answer lowers it by (1 - LATE_SHARE) times this and an on-time one raises it
 * by LATE_SHARE times this, so it holds where LATE_SHARE of the answers are late. At 2% of the SLO, a burst of
 * 20 late answers costs 0.4 of it, which about 4,000 answers on time (8 s at 500 requests a second) give back.
 */
export const PLAN_STEP = 0.02;

/** The least share of the SLO the policy plans for, however many answers are late. */
const MIN_PLAN_SHARE = 0.25;

/**
 * Online correction of the latency table, so predictions hold on the machine as it is now: the table was
 * measured on an idle machine with its own thread settings, the server runs beside an HTTP thread and other
 * load. It learns from every run (1) an exponential average of measured / table time, used as a factor of at
 * least 1 (a faster machine keeps the table's conservative times), (2) the worker round trip beyond ONNX
 * Runtime's own time, and from every response (3) the tail from a batch's results to the response being
 * sent (answers of one batch are serialized one after another), as a running 95th percentile. (4) From every
 * answer under the server's SLO, the share of the SLO to plan for: the predictions are means, and a server
 * choosing the highest level they allow answers late whenever a run or a burst of arrivals exceeds them. Late
 * answers lower the share and on-time ones raise it, so that LATE_SHARE of them are late (stochastic
 * approximation of that quantile, as for the tail).
 */
export class LatencyEstimator {
  private ratio = 1;
  private overhead = 0;
  private tail = 0;
  private host = 0;
  private plan = 1;

  /**
   * @param table measured ms per level index (cheapest first): `latencyMs` keyed by batch size.
   * @param alpha weight of the newest observation in the averages.
   */
  constructor(
    private readonly table: readonly Record<string, number>[],
    private readonly alpha = 0.1,
  ) {}

  /** The table's time for a level index and batch (linear between measured batch sizes). */
  tableMs(level: number, batch: number): number {
    return latencyAtBatch(this.table[level], batch);
  }

  /**
   * Predicted time from dispatching a batch to its answers being sent: the table's time, scaled, plus overheads,
   * plus the host's own work per sample when it shares the model's cores (it takes turns with the run).
   */
  predict(level: number, batch: number): number {
    return this.factor * this.tableMs(level, batch) + this.overhead + this.tail + this.host * batch;
  }

  /** The current estimate of the host's CPU per sample taken from the model's cores, ms. */
  get hostMsPerSample(): number {
    return this.host;
  }

  /**
   * Records the host's CPU time per sample outside the model's runs (receiving, parsing and answering
   * requests, GC), over a span of runs, ms: on cores the runs share, it lengthens every cycle.
   */
  observeHost(msPerSample: number): void {
    if (Number.isFinite(msPerSample)) this.host += this.alpha * (Math.max(0, msPerSample) - this.host);
  }

  /** The current factor on the table's times (>= 1). */
  get factor(): number {
    return Math.min(8, Math.max(1, this.ratio));
  }

  /** The current round-trip overhead estimate, ms. */
  get overheadMs(): number {
    return this.overhead;
  }

  /** The current response-tail estimate (95th percentile), ms. */
  get tailMs(): number {
    return this.tail;
  }

  /** Records a finished run: ONNX Runtime's time and the wall time seen by the caller. */
  observe(level: number, batch: number, runMs: number, wallMs: number): void {
    const expected = this.tableMs(level, batch);
    if (expected > 0 && Number.isFinite(runMs)) this.ratio += this.alpha * (runMs / expected - this.ratio);
    if (Number.isFinite(wallMs - runMs)) this.overhead += this.alpha * (Math.max(0, wallMs - runMs) - this.overhead);
  }

  /** The share of the server's SLO the adaptive choice plans for (in [MIN_PLAN_SHARE, 1]). */
  get planShare(): number {
    return this.plan;
  }

  /** Records one answer under the server's SLO (no own u or budget): its time from arrival to being sent, ms. */
  observeLatency(ms: number, sloMs: number): void {
    if (!Number.isFinite(ms) || !(sloMs > 0)) return;
    const late = ms > sloMs;
    this.plan = Math.min(1, Math.max(MIN_PLAN_SHARE, this.plan + PLAN_STEP * (late ? -(1 - LATE_SHARE) : LATE_SHARE)));
  }

  /** Records one response's tail: from its batch's results being ready to the response being sent, ms. */
  observeTail(ms: number): void {
    if (!Number.isFinite(ms)) return;
    // Stochastic quantile tracking: at equilibrium 95% of tails fall below the estimate.
    const step = Math.max(0.02, 0.02 * this.tail);
    this.tail = Math.max(0, this.tail + (ms > this.tail ? 0.95 * step : -0.05 * step));
  }
}

/** Decides a utilization per sample for a batch (a learned controller), as u values in (0, 1]. */
export type SampleController = (images: Float32Array, count: number) => Promise<Float64Array> | Float64Array;

/** What a policy is built from. */
export interface PolicyEnv {
  /** The model's exported levels, cheapest first. */
  levels: readonly OnnxLevel[];
  /** The latency table beside the model, or null when there is none. */
  table: LatencyTable | null;
  /** The server's latency objective, ms. */
  sloMs: number;
  /** Path of the model, for error messages. */
  modelPath: string;
  /** The controller, for the `controller` policy. */
  controller?: SampleController;
}

/** Chooses the level index (into the model's levels) of every sample of a dispatch. */
export interface ServePolicy {
  /** The policy as given on the command line (`adaptive`, `fixed:0.5`, `controller`). */
  readonly name: string;
  /** The latency estimator, when the policy has a latency table. */
  readonly estimator: LatencyEstimator | null;
  /** Whether it picks levels for the server's SLO (adaptive, controller): then its answers teach `estimator.planShare`. */
  readonly plansForSlo: boolean;
  choose(d: Dispatch): Promise<Int32Array>;
}

/** A registered policy: how to build it from its argument (the text after `name:`). */
export interface PolicyDef {
  /** One line for help. */
  description: string;
  /** Whether it needs the latency table beside the model. */
  needsTable: boolean;
  /** Checks and parses the argument; `undefined` when none was given. */
  parseArg(arg: string | undefined): number | undefined;
  create(env: PolicyEnv, arg: number | undefined): ServePolicy;
}

/** The latency estimator over a table, with rows matched to the model's levels. */
export function estimatorFor(env: PolicyEnv): LatencyEstimator | null {
  const table = env.table;
  if (!table) return null;
  const rows = env.levels.map((lv) => {
    const row = table.levels.find((r) => r.level === lv.level);
    if (!row) throw new DynnError(`${env.modelPath}: the latency table has no row for level ${lv.level}; run \`dynn profile ${env.modelPath}\` again`);
    return row.latencyMs;
  });
  return new LatencyEstimator(rows);
}

/** The highest level index a request may run at under its latency budget. */
type Allowed = (r: PendingView) => number;

/**
 * The shared per-request rules: a request's own u runs exactly its level; `base` gives the levels of the
 * others, reading `allowed(r)` where it needs the latency budget. A request with its own budgetMs is allowed
 * what fits that budget from its own wait; the others share the server's SLO (times the estimator's
 * `planShare`, which only a policy that plans for the SLO is taught) and one level, set by the longest wait among them and the backlog
 * behind the batch, so they run as one batch.
 */
class RulePolicy implements ServePolicy {
  constructor(
    readonly name: string,
    private readonly env: PolicyEnv,
    readonly estimator: LatencyEstimator | null,
    readonly plansForSlo: boolean,
    private readonly base: (r: PendingView, allowed: Allowed, perSample: Int32Array, offset: number) => void | Promise<void>,
  ) {}

  /**
   * The highest level fitting `budgetMs` for a request that waited `waitMs`; with `backlog`, the queue behind
   * the batch and the arrivals during its run must fit the budget too.
   */
  private fit(d: Dispatch, waitMs: number, budgetMs: number, backlog: boolean): number {
    const est = this.estimator;
    if (!est) throw new DynnError('a latency budget needs the latency table');
    return adaptiveLevel({
      latency: (l, b) => est.predict(l, b),
      levels: this.env.levels.length,
      batch: d.samples,
      waitMs,
      budgetMs,
      behind: backlog && d.behind ? { batch: d.behind.samples, waitMs: d.behind.waitMs } : null,
      arrivalsPerMs: backlog ? d.arrivalsPerMs : 0,
    });
  }

  async choose(d: Dispatch): Promise<Int32Array> {
    let shared: number | null = null;
    const allowed: Allowed = (r) => {
      if (r.budgetMs !== undefined) return this.fit(d, r.waitMs, r.budgetMs, false);
      if (shared === null) {
        const wait = Math.max(...d.requests.filter((q) => q.u === undefined && q.budgetMs === undefined).map((q) => q.waitMs));
        shared = this.fit(d, wait, this.env.sloMs * (this.estimator?.planShare ?? 1), true);
      }
      return shared;
    };
    const out = new Int32Array(d.samples);
    let offset = 0;
    for (const r of d.requests) {
      if (r.u !== undefined) out.fill(levelIndexFor(this.env.levels, r.u), offset, offset + r.count);
      else await this.base(r, allowed, out, offset);
      offset += r.count;
    }
    return out;
  }
}

/** The `parseArg` of a policy without an argument. */
function noArgument(name: string, hint = ''): PolicyDef['parseArg'] {
  return (arg) => {
    if (arg !== undefined) throw new DynnError(`policy ${name} takes no argument${hint}`);
    return undefined;
  };
}

/** Serving policies by name; `--policy name[:arg]`. */
export const policies = new Registry<PolicyDef>('policy');

policies.register('adaptive', {
  description: 'per batch, the highest level whose profiled latency plus the queue wait meets the SLO (planned for a share of it that keeps late answers to 1 in 200)',
  needsTable: true,
  parseArg: noArgument('adaptive'),
  create: (env) =>
    new RulePolicy('adaptive', env, estimatorFor(env), true, (r, allowed, out, offset) => {
      out.fill(allowed(r), offset, offset + r.count);
    }),
});

policies.register('fixed', {
  description: 'always the level of utilization U (fixed:U); a request’s budgetMs can only lower it',
  needsTable: false,
  parseArg: (arg) => {
    const u = Number(arg);
    if (arg === undefined || arg.trim() === '' || !Number.isFinite(u) || u <= 0 || u > 1) {
      throw new DynnError(`policy fixed needs a utilization in (0, 1]: fixed:U, e.g. fixed:0.5${arg === undefined ? '' : `, got fixed:${arg}`}`);
    }
    return u;
  },
  create: (env, u) => {
    const level = levelIndexFor(env.levels, u as number);
    return new RulePolicy(`fixed:${u}`, env, estimatorFor(env), false, (r, allowed, out, offset) => {
      out.fill(r.budgetMs === undefined ? level : Math.min(level, allowed(r)), offset, offset + r.count);
    });
  },
});

policies.register('controller', {
  description: 'a trained controller picks u per input; the SLO caps it as the adaptive policy would',
  needsTable: true,
  parseArg: noArgument('controller', ' (the controller is the one exported in the model)'),
  create: (env) => {
    const controller = env.controller;
    if (!controller) throw new DynnError(`policy controller needs a model exported with its controller: dynn export RUN --onnx ${env.modelPath} --controller DIR (from \`dynn controller train\`)`);
    return new RulePolicy('controller', env, estimatorFor(env), true, async (r, allowed, out, offset) => {
      const us = await controller(r.images, r.count);
      const cap = allowed(r);
      for (let i = 0; i < r.count; i++) out[offset + i] = Math.min(cap, levelIndexFor(env.levels, us[i]));
    });
  },
});

/** A parsed `--policy` value. */
export interface PolicySpec {
  name: string;
  arg: number | undefined;
}

/** Parses `adaptive`, `fixed:U` or `controller`; unknown names list the known ones. */
export function parsePolicy(text: string): PolicySpec {
  const i = text.indexOf(':');
  const name = i < 0 ? text : text.slice(0, i);
  const arg = i < 0 ? undefined : text.slice(i + 1);
  return { name, arg: policies.get(name).parseArg(arg) };
}

/** Builds a parsed policy; a policy that needs a latency table fails clearly without one. */
export function createPolicy(spec: PolicySpec, env: PolicyEnv): ServePolicy {
  const def = policies.get(spec.name);
  if (def.needsTable && !env.table) {
    throw new DynnError(
      `policy ${spec.name} needs the latency table beside the model (${latencyTablePath(env.modelPath)}): ` +
        `run \`dynn profile ${env.modelPath} --batches 1,8,64\` first, or start with --profile to measure it now`,
    );
  }
  return def.create(env, spec.arg);
}
