import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { levelIndexFor, ONNX_IO, type OnnxLevel, type OnnxMetadata } from '../export/metadata.js';
import type { Sha256 } from '../export/digest.js';
import { verifyModel } from './verify.js';
import { exitRules, perExitThresholds, settleExit, type ExitRule } from '../scaling/rules.js';
import { arrayRows, dispatchAsync, rowsOf } from '../route/dispatch.js';
import { TemporalSession, temporalOf } from './session.js';

/** What dynn needs of an ONNX Runtime package: onnxruntime-node and onnxruntime-web both provide it. */
export interface OrtApi {
  InferenceSession: { create(model: Uint8Array, options?: InferenceSession.SessionOptions): Promise<InferenceSession> };
  Tensor: { new (type: 'float32', data: Float32Array, dims: readonly number[]): Tensor; new (type: 'float64', data: Float64Array, dims: readonly number[]): Tensor };
}

/** Memory layout of an image batch passed to `run`. */
export type ImageLayout = 'NCHW' | 'NHWC';

/** Options of one `run` call. */
export interface RunOptions {
  /** Layout of `images` (default 'NCHW', the model's own; 'NHWC' is converted, as dynn's ImageSets are). */
  layout?: ImageLayout;
}

/** The result of running a batch. */
export interface Prediction {
  /** Class scores (logits), [batch, numClasses] row-major. */
  scores: Float32Array;
  /** The highest-scoring class of each sample. */
  classes: Int32Array;
  batch: number;
  numClasses: number;
  /** The utilization that ran: the representative u of the chosen exported level. */
  u: number;
  /** The network level that ran (see the metadata's `levels`). */
  level: number;
  /** Time inside ONNX Runtime's `run`, in milliseconds (measured in the thread that ran it). */
  ms: number;
  /**
   * Dynamic models (exported by segments) and early exits (`runExits`): each sample's executed FLOPs over the
   * network's at u = 1, gates or the exit heads it passed included.
   */
  flopsRatios?: Float64Array;
}

/** The result of an early-exit run (`runExits`): a `Prediction` plus where each sample left. */
export interface ExitPrediction extends Prediction {
  /** The exit (0-based) each sample left at; the last is the network's own classifier. */
  exits: Int32Array;
  /** Mean FLOPs per sample (segments and exit classifiers each sample passed), and relative to the last exit alone. */
  meanFlops: number;
  flopsRatio: number;
  /** Whether every stage ran in one session run, the graph's own exit rule deciding (else the stages ran in turn from here). */
  oneRun: boolean;
}

/** The result of a run where each sample has its own utilization (`runMixed`, `runAdaptive`). */
export interface MixedPrediction {
  scores: Float32Array;
  classes: Int32Array;
  batch: number;
  numClasses: number;
  /** The representative u of the level each sample ran at. */
  u: Float64Array;
  /** The network level each sample ran at. */
  levels: Int32Array;
  /** Mean FLOPs ratio per sample relative to u = 1, the controller's own cost included when it decided. */
  meanFlopsRatio: number;
  /** Time inside ONNX Runtime, summed over the level groups (and the controller), ms. */
  ms: number;
}

/** A batch of frames run at one action (`step`), and each frame's next action as the exported temporal controller plans it. */
export interface PlannedPrediction extends Prediction {
  /** The next action index of each frame (argmax of `controller_scores`). */
  next: Int32Array;
  /** The input resolution the batch ran at, for actions (u, r). */
  resolution?: number;
}

/** A controller's decision for a batch. */
export interface Decision {
  /** The chosen action's utilization, per sample. */
  u: Float64Array;
  /** The chosen action's index into `metadata.controller.actions`, per sample. */
  actions: Int32Array;
  ms: number;
}

/** An early-exit rule and thresholds, by name or as a rule object. */
export interface ExitOptions extends RunOptions {
  /** `entropy` or `confidence`, or a rule (default: the model's stored policy, else entropy). */
  rule?: string | ExitRule;
  /** One threshold for all intermediate exits or one each (default: the model's stored policy). */
  thresholds?: number | number[];
  /**
   * Run the stages in turn from JavaScript even where the graph holds the rule (default false: a model
   * exported with its policy runs every stage in one session run when the rule asked for is the graph's).
   */
  staged?: boolean;
}

/** Converts a batch of NHWC images to NCHW (a new array). */
export function nhwcToNchw(data: Float32Array, [c, h, w]: readonly number[]): Float32Array {
  const per = c * h * w;
  const out = new Float32Array(data.length);
  for (let n = 0; n < data.length / per; n++) {
    const base = n * per;
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let k = 0; k < c; k++) out[base + (k * h + y) * w + x] = data[base + (y * w + x) * c + k];
  }
  return out;
}

/** A batch in the model's NCHW layout: as given, or converted when `options.layout` says 'NHWC'. */
export function toNchw(meta: OnnxMetadata, images: Float32Array, options: RunOptions = {}): Float32Array {
  return (options.layout ?? 'NCHW') === 'NHWC' ? nhwcToNchw(images, meta.input.shape) : images;
}

/** Argmax of each row of a [batch, n] score matrix. */
export function argmaxRows(scores: Float32Array, n: number): Int32Array {
  const out = new Int32Array(scores.length / n);
  for (let r = 0; r < out.length; r++) {
    let best = 0;
    for (let j = 1; j < n; j++) if (scores[r * n + j] > scores[r * n + best]) best = j;
    out[r] = best;
  }
  return out;
}

/** The exported level that serves utilization u (checked to be in (0, 1]). */
export function levelFor(meta: OnnxMetadata, u: number): OnnxLevel {
  checkUtilization(u);
  return meta.levels[levelIndexFor(meta.levels, u)];
}

/** Checks a batch against the model's per-sample input shape and returns the batch size. */
export function checkImages(meta: OnnxMetadata, images: unknown): number {
  if (!(images instanceof Float32Array)) throw new DynnError('images must be a Float32Array');
  const per = meta.input.shape.reduce((a, b) => a * b, 1);
  if (images.length === 0 || images.length % per !== 0) {
    throw new DynnError(`images hold ${images.length} values, not a whole batch of [${meta.input.shape}] samples (${per} values each)`);
  }
  return images.length / per;
}

/**
 * One ONNX Runtime session of a dynn model, in the calling thread. `run` blocks this thread while ONNX
 * Runtime computes; use the node entry's `OnnxModel` with `{worker: true}` to keep an event loop free.
 */
export class ModelSession {
  private constructor(
    private readonly inference: InferenceSession,
    private readonly ort: OrtApi,
    /** The model's dynn metadata. */
    readonly metadata: OnnxMetadata,
    /** Whether the weights digest was checked at load (false: a model exported before dynn stored one). */
    readonly verified: boolean,
    /** Why the weights digest was not checked, when it was not. */
    readonly unverifiedReason: string | null = null,
  ) {}

  /**
   * Verifies the file against its metadata (`verifyModel`: clear errors for corrupt, modified or foreign
   * files), then creates the session. `sha256` hashes the weights (default WebCrypto; null: none here, so the
   * model loads unverified).
   */
  static async create(ort: OrtApi, bytes: Uint8Array, source: string, options: InferenceSession.SessionOptions, sha256?: Sha256 | null): Promise<ModelSession> {
    const { metadata, verified, reason } = await verifyModel(bytes, source, sha256);
    let session: InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, options);
    } catch (err) {
      throw new DynnError(`${source}: ONNX Runtime cannot load it: ${(err as Error).message}`);
    }
    return new ModelSession(session, ort, metadata, verified, reason ?? null);
  }

  private prepare(images: Float32Array, options: RunOptions): { nchw: Float32Array; batch: number } {
    const batch = checkImages(this.metadata, images);
    return { nchw: toNchw(this.metadata, images, options), batch };
  }

  private tensor(data: Float32Array, dims: readonly number[]): Tensor {
    return new this.ort.Tensor('float32', data, dims);
  }

  /**
   * Runs the graph once. The level's own u is fed, not the caller's: float32 rounding near a threshold
   * cannot pick another branch.
   */
  private async once(x: Float32Array, dims: readonly number[], level: OnnxLevel, stage: number | null, fetches?: string[], action?: number, thresholds?: readonly number[]) {
    const feeds: Record<string, Tensor> = { [ONNX_IO.images]: this.tensor(x, dims), [ONNX_IO.u]: this.tensor(Float32Array.of(level.u), []) };
    if (stage !== null) feeds[ONNX_IO.stage] = this.tensor(Float32Array.of(stage), []);
    // A graph holding the exit rule takes its thresholds at every stage (read only at stage -2).
    const exits = this.metadata.exits;
    if (exits?.inGraph) feeds[ONNX_IO.exitThresholds] = new this.ort.Tensor('float64', Float64Array.from(thresholds ?? exits.policy?.thresholds ?? []), [exits.count - 1]);
    // A temporal controller's input: the action the batch ran at (a plain run: the start action, unused).
    const temporal = this.metadata.controller?.temporal;
    if (temporal) feeds[ONNX_IO.action] = this.tensor(new Float32Array(dims[0]).fill(action ?? temporal.start), [dims[0]]);
    // Actions (u, r): the action's input resolution (a plain run: the input's own).
    if (temporal?.resolutions) feeds[ONNX_IO.resolution] = this.tensor(Float32Array.of(action === undefined ? this.metadata.input.shape[1] : temporal.resolutions[action]), []);
    const start = performance.now();
    const out = fetches ? await this.inference.run(feeds, fetches) : await this.inference.run(feeds);
    return { out, ms: performance.now() - start };
  }

  /**
   * Runs a batch at utilization u (see `OnnxModel.run`). An early-exit model runs its whole network in one
   * pass (stage -1): the scores are the last exit's, as the network without its exits computes them.
   */
  async run(images: Float32Array, u: number, options: RunOptions = {}): Promise<Prediction> {
    const meta = this.metadata;
    const level = levelFor(meta, u);
    const { nchw, batch } = this.prepare(images, options);
    // An early-exit model's stage -1 is the whole network in one pass.
    const { out, ms } = await this.once(nchw, [batch, ...meta.input.shape], level, meta.exits ? -1 : null, [ONNX_IO.scores]);
    const scores = out[ONNX_IO.scores].data as Float32Array;
    return { scores, classes: argmaxRows(scores, meta.numClasses), batch, numClasses: meta.numClasses, u: level.u, level: level.level, ms };
  }

  /**
   * Runs an early-exit model with real early termination at utilization u: after each stage, the samples
   * whose exit scores pass the rule leave, and only the rest run the next stage, as a smaller batch.
   * Results come back in input order. Where the graph holds the rule asked for (a model exported with its
   * policy), every stage runs in one session run; else the stages run in turn from here.
   */
  async runExits(images: Float32Array, u: number, options: ExitOptions = {}): Promise<ExitPrediction> {
    const meta = this.metadata;
    if (!meta.exits) throw new DynnError(`this ${meta.model.model} model has no early exits`);
    const stored = meta.exits.policy;
    const rule = options.rule ?? stored?.rule ?? 'entropy';
    const r = typeof rule === 'string' ? exitRules.get(rule) : rule;
    const given = options.thresholds ?? stored?.thresholds;
    if (given === undefined) throw new DynnError('runExits needs thresholds: the model stores no exit policy (export after `dynn fit-exits --save`)');
    const thresholds = perExitThresholds(given, meta.exits.count - 1);
    const level = levelFor(meta, u);
    const { nchw, batch } = this.prepare(images, options);
    const oneRun = meta.exits.inGraph !== undefined && !options.staged && exitRules.has(meta.exits.inGraph.rule) && r === exitRules.get(meta.exits.inGraph.rule);
    const res = oneRun ? await this.graphExitRun(nchw, batch, level, thresholds) : await this.exitRun(nchw, batch, level, r, thresholds);
    const exitFlops = level.exitFlops ?? [];
    let flops = 0;
    for (const e of res.exits) flops += exitFlops[e] ?? 0;
    const meanFlops = flops / batch;
    // The network's FLOPs at u = 1, which every level's flopsRatio divides by.
    const full = level.flopsRatio > 0 ? level.flops / level.flopsRatio : NaN;
    const flopsRatios = Float64Array.from(res.exits, (e) => (exitFlops[e] ?? 0) / full);
    return { ...res, batch, numClasses: meta.numClasses, u: level.u, level: level.level, meanFlops, flopsRatio: level.flops > 0 ? meanFlops / level.flops : 1, flopsRatios, oneRun };
  }

  /**
   * Every stage in one run (stage -2): the graph's rule decides, and each sample's exit comes back with its
   * scores. The outputs are checked: the weights digest does not cover the graph's nodes.
   */
  private async graphExitRun(x: Float32Array, batch: number, level: OnnxLevel, thresholds: number[]) {
    const { numClasses: C, exits: info } = this.metadata;
    const { out, ms } = await this.once(x, [batch, ...this.metadata.input.shape], level, -2, [ONNX_IO.scores, ONNX_IO.exits], undefined, thresholds);
    const scores = out[ONNX_IO.scores].data as Float32Array;
    const left = out[ONNX_IO.exits].data as Float32Array;
    const count = info!.count;
    if (scores.length !== batch * C || left.length !== batch || left.some((e) => !(Number.isInteger(e) && e >= 0 && e < count))) {
      throw new DynnError(`the graph's exit policy answered ${scores.length} scores and ${left.length} exits for a batch of ${batch} (expected ${batch * C} scores and exits in 0..${count - 1}); is the file modified?`);
    }
    return { scores, classes: argmaxRows(scores, C), exits: Int32Array.from(left), ms };
  }

  /** Stage by stage; samples that leave are dropped from the next stage's batch. */
  private async exitRun(x: Float32Array, batch: number, level: OnnxLevel, rule: ExitRule, thresholds: number[]) {
    const meta = this.metadata;
    const C = meta.numClasses;
    const count = meta.exits!.count;
    const scores = new Float32Array(batch * C);
    const exits = new Int32Array(batch);
    const probs = new Float64Array(C);
    let alive = Int32Array.from({ length: batch }, (_, i) => i);
    let input = x;
    let dims: readonly number[] = [batch, ...meta.input.shape];
    let ms = 0;
    for (let k = 0; k < count && alive.length > 0; k++) {
      const last = k === count - 1;
      const run = await this.once(input, dims, level, k, last ? [ONNX_IO.scores] : [ONNX_IO.scores, ONNX_IO.features]);
      ms += run.ms;
      const s = run.out[ONNX_IO.scores].data as Float32Array;
      const stay = settleExit(s, C, alive, { rule, threshold: thresholds[k], k, last }, scores, exits, probs);
      if (last || stay.length === 0) break;
      const f = run.out[ONNX_IO.features];
      const feats = f.data as Float32Array;
      const per = feats.length / alive.length;
      input = rowsOf(arrayRows(per), feats, Int32Array.from(stay));
      dims = [stay.length, ...f.dims.slice(1)];
      alive = Int32Array.from(stay, (i) => alive[i]);
    }
    return { scores, classes: argmaxRows(scores, C), exits, ms };
  }

  /** The exported controller's choice of u per sample (argmax action); needs a model exported with `--controller`. */
  async decide(images: Float32Array, options: RunOptions = {}): Promise<Decision> {
    const meta = this.metadata;
    if (!meta.controller) throw new DynnError(`this ${meta.model.model} model was exported without a controller (dynn export ... --controller DIR)`);
    if (meta.controller.temporal) throw new DynnError(`this ${meta.model.model} model's controller is temporal: it plans the next frame from this one (session().next(frame)), it does not decide from the input`);
    const { nchw, batch } = this.prepare(images, options);
    const { out, ms } = await this.once(nchw, [batch, ...meta.input.shape], meta.levels[0], meta.exits ? 0 : null, [ONNX_IO.controller]);
    const K = meta.controller.actions.length;
    const actions = argmaxRows(out[ONNX_IO.controller].data as Float32Array, K);
    return { u: Float64Array.from(actions, (a) => meta.controller!.actions[a]), actions, ms };
  }

  /**
   * Models exported with a temporal controller: runs a batch of frames at action index `action` (the level
   * of that action's u) and plans each frame's next action, in one graph run.
   */
  async step(images: Float32Array, action: number, options: RunOptions = {}): Promise<PlannedPrediction> {
    const meta = this.metadata;
    const { actions } = temporalOf(meta);
    if (!Number.isInteger(action) || action < 0 || action >= actions.length) throw new DynnError(`action ${action} is not an index of the controller's ${actions.length} actions`);
    const level = levelFor(meta, actions[action]);
    const { nchw, batch } = this.prepare(images, options);
    const { out, ms } = await this.once(nchw, [batch, ...meta.input.shape], level, null, [ONNX_IO.scores, ONNX_IO.controller], action);
    const scores = out[ONNX_IO.scores].data as Float32Array;
    const next = argmaxRows(out[ONNX_IO.controller].data as Float32Array, actions.length);
    const resolution = meta.controller?.temporal?.resolutions?.[action];
    return { scores, classes: argmaxRows(scores, meta.numClasses), batch, numClasses: meta.numClasses, u: level.u, level: level.level, ms, next, ...(resolution !== undefined && { resolution }) };
  }

  /** A stream's session on a model exported with a temporal controller (see `TemporalSession`). */
  session(): TemporalSession<RunOptions> {
    return new TemporalSession<RunOptions>(this.metadata, (x, a, o) => this.step(x, a, o));
  }

  /** Frees the session. */
  async release(): Promise<void> {
    await this.inference.release();
  }
}

/**
 * Runs each sample of an NCHW batch at its own utilization without falling back to one at a time: samples are
 * grouped by the exported level their u reaches, each group runs as one batch through `run`, and the results
 * come back in input order.
 */
export async function runMixed(
  meta: OnnxMetadata,
  images: Float32Array,
  us: ArrayLike<number>,
  run: (x: Float32Array, u: number) => Promise<Prediction>,
): Promise<MixedPrediction> {
  const batch = checkImages(meta, images);
  if (us.length !== batch) throw new DynnError(`${us.length} utilizations for a batch of ${batch} samples`);
  const per = images.length / batch;
  const routes = Int32Array.from({ length: batch }, (_, i) => {
    checkUtilization(us[i]);
    return levelIndexFor(meta.levels, us[i]);
  });
  const C = meta.numClasses;
  const u = new Float64Array(batch);
  const levels = new Int32Array(batch);
  let flops = 0;
  let ms = 0;
  const scores = await dispatchAsync(
    images,
    routes,
    async (k, part, rows) => {
      const lv = meta.levels[k];
      const p = await run(part, lv.u);
      ms += p.ms;
      for (const r of rows) {
        u[r] = lv.u;
        levels[r] = lv.level;
      }
      flops += rows.length * lv.flopsRatio;
      return p.scores;
    },
    { input: arrayRows(per), output: arrayRows(C) },
  );
  return { scores, classes: argmaxRows(scores, C), batch, numClasses: C, u, levels, meanFlopsRatio: flops / batch, ms };
}
