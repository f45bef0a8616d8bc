import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import type { OnnxLevel, OnnxMetadata } from '../export/metadata.js';
import {
  levelFor,
  ModelSession,
  runMixed,
  toNchw,
  type Decision,
  type ExitOptions,
  type ExitPrediction,
  type MixedPrediction,
  type PlannedPrediction,
  type Prediction,
  type RunOptions,
} from './core.js';
import { SegmentedSession } from './segments.js';
import { TemporalSession } from './session.js';
import { MANIFEST_FILE } from '../export/manifest.js';
import { raiseMallocThresholds } from '../engine/ort-kernels.js';

/** Where a model runs in Node. */
export type NodeDevice = 'cpu' | 'webgpu' | 'cuda' | 'tensorrt' | 'dml' | 'coreml';

/**
 * Device to ONNX Runtime execution providers, in preference order (the CPU provider last as the fallback
 * for operators the accelerator lacks). The onnxruntime-node package bundles cpu and webgpu on Linux;
 * the others need ONNX Runtime's separately installed libraries.
 */
export const NODE_EXECUTION_PROVIDERS: Readonly<Record<NodeDevice, readonly string[]>> = {
  cpu: ['cpu'],
  webgpu: ['webgpu', 'cpu'],
  cuda: ['cuda', 'cpu'],
  tensorrt: ['tensorrt', 'cuda', 'cpu'],
  dml: ['dml', 'cpu'],
  coreml: ['coreml', 'cpu'],
};

/** Options of `OnnxModel.load`. */
export interface LoadOptions {
  /**
   * Run ONNX Runtime in a worker thread (default false). `session.run()` blocks the thread it runs in, so a
   * server must use a worker to keep its event loop answering while a batch computes.
   */
  worker?: boolean;
  /** Device (default 'cpu'); see `NODE_EXECUTION_PROVIDERS`. */
  device?: NodeDevice;
  /** ONNX Runtime intra-op threads (default: the machine's core count). */
  threads?: number;
  /**
   * Let idle ONNX Runtime threads spin-wait for work (default true: lowest latency for one busy model).
   * Turn it off when several sessions share the cores: spinning pools slow each other down about 3x.
   */
  spinning?: boolean;
}

/** Options of `OnnxModel.run`. */
export interface ModelRunOptions extends RunOptions {
  /**
   * Lend the images' ArrayBuffer to the worker thread instead of copying it there (default false): the
   * caller's array is empty until the result's `images` gives it back, values unchanged, for reuse. Copying a
   * batch of 64 28x28 images to the worker and back cost 0.4 ms of CPU.
   */
  lend?: boolean;
}

/** `OnnxModel.run`'s result. */
export interface ModelPrediction extends Prediction {
  /** With `lend`: the images, given back. */
  images?: Float32Array;
}

/** Most intra-op threads a session may ask for: ONNX Runtime would try to start every one (1e8 hung). */
export const MAX_THREADS = 1024;

/** The core count, the default intra-op thread count. */
export function defaultThreads(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** ONNX Runtime session options for a device: graph optimization 'all' (slice folding, BatchNorm fusion, NCHWc). */
export function sessionOptions(options: Omit<LoadOptions, 'worker'> = {}): InferenceSession.SessionOptions {
  const device = options.device ?? 'cpu';
  const providers = NODE_EXECUTION_PROVIDERS[device];
  if (!providers) throw new DynnError(`unknown device "${device}"; expected one of ${Object.keys(NODE_EXECUTION_PROVIDERS).join(', ')}`);
  const threads = options.threads ?? defaultThreads();
  if (!Number.isInteger(threads) || threads < 1) throw new DynnError(`threads must be a positive integer, got ${threads}`);
  if (threads > MAX_THREADS) throw new DynnError(`threads must be at most ${MAX_THREADS}, got ${threads}`);
  const noSpin = { allow_spinning: '0' };
  return {
    executionProviders: [...providers],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    ...(options.spinning === false ? { extra: { session: { intra_op: noSpin, inter_op: noSpin } } } : {}),
  };
}

/** Reads a model file with a clear error for a missing or unreadable one. */
export async function readModelFile(file: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await fsp.readFile(file));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DynnError(code === 'ENOENT' ? `${file}: no such file` : `${file}: cannot read it (${(err as Error).message})`);
  }
}

/** SHA-256 with node:crypto, streamed over the chunks (no concatenated copy of the weights). */
async function nodeSha256(chunks: Uint8Array[]): Promise<string> {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest('hex');
}

/**
 * Opens an in-thread session of a model file (what a worker runs, and `OnnxModel` without a worker); a
 * folder is a dynamic model exported by segments (`manifest.json` and its graphs, see `SegmentedSession`).
 */
export async function openSession(file: string, options: Omit<LoadOptions, 'worker'> = {}): Promise<ModelSession | SegmentedSession> {
  const ort = await import('onnxruntime-node');
  // Each run hands its outputs over in fresh buffers (features of a stage, for one): keep freed memory warm.
  raiseMallocThresholds();
  const opts = sessionOptions(options);
  if ((await fsp.stat(file).catch(() => null))?.isDirectory()) {
    const manifest = path.join(file, MANIFEST_FILE);
    let text: string;
    try {
      text = await fsp.readFile(manifest, 'utf8');
    } catch {
      throw new DynnError(`${file} is a folder without ${MANIFEST_FILE}: not a dynamic model exported by segments (give an .onnx file, or the folder \`dynn export\` wrote)`);
    }
    // The manifest's file names are plain names (checked before any read), and a segment must be a regular
    // file, not a link: every read stays in the folder (the manifest that names a file also gives its digest).
    const readSegment = async (f: string) => {
      const where = path.join(file, f);
      const st = await fsp.lstat(where).catch(() => null);
      if (st && !st.isFile()) throw new DynnError(`${where}: a segment must be a regular file in the folder, not a link or a folder`);
      return readModelFile(where);
    };
    return SegmentedSession.create(ort.default ?? ort, text, readSegment, file, opts, nodeSha256);
  }
  return ModelSession.create(ort.default ?? ort, await readModelFile(file), file, opts, nodeSha256);
}

/** What a session answers: `ModelSession`'s inference methods, called in or out of a worker thread. */
export interface SessionCalls {
  run(images: Float32Array, u: number, options: RunOptions): Promise<Prediction>;
  runExits(images: Float32Array, u: number, options: ExitOptions): Promise<ExitPrediction>;
  decide(images: Float32Array, options: RunOptions): Promise<Decision>;
  step(images: Float32Array, action: number, options: RunOptions): Promise<PlannedPrediction>;
}
export type SessionMethod = keyof SessionCalls;

/**
 * Messages between `OnnxModel` and its worker (src/runtime/worker.ts). `lend`: the first argument's buffer
 * was moved to the worker, which sends it back with the result as `images`.
 */
export type WorkerRequest = { type: 'call'; id: number; method: SessionMethod; args: unknown[]; lend?: boolean } | { type: 'close' };
export type WorkerReply =
  | { type: 'ready'; metadata: OnnxMetadata; verified: boolean }
  | { type: 'result'; id: number; value: unknown }
  | { type: 'error'; id: number | null; error: { name: string; message: string } };

/** Rebuilds an error sent from a worker, keeping DynnError's class so callers can tell user errors apart. */
function revive(e: { name: string; message: string }): Error {
  if (e.name === 'DynnError') return new DynnError(e.message);
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}

interface Runner {
  /** `lend`: move the first argument's buffer to a worker and back (see `ModelRunOptions.lend`). */
  call<M extends SessionMethod>(method: M, args: Parameters<SessionCalls[M]>, lend?: boolean): ReturnType<SessionCalls[M]>;
  close(): Promise<void>;
}

/** Runs the session in a worker thread; requests are answered in order of arrival. */
class WorkerRunner implements Runner {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private exited: Error | null = null;

  private constructor(private readonly worker: Worker) {}

  static async start(file: string, options: Omit<LoadOptions, 'worker'>): Promise<{ runner: WorkerRunner; metadata: OnnxMetadata; verified: boolean }> {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { file, options } });
    const runner = new WorkerRunner(worker);
    const { metadata, verified } = await new Promise<{ metadata: OnnxMetadata; verified: boolean }>((resolve, reject) => {
      worker.on('message', (m: WorkerReply) => {
        if (m.type === 'ready') resolve({ metadata: m.metadata, verified: m.verified });
        else if (m.type === 'error' && m.id === null) reject(revive(m.error));
        else runner.settle(m);
      });
      worker.on('error', (err: Error) => {
        reject(err);
        runner.fail(new DynnError(`ONNX Runtime worker failed: ${err.message}`));
      });
      worker.on('exit', (code) => {
        const err = new DynnError(`ONNX Runtime worker exited (code ${code})`);
        reject(err);
        runner.fail(err);
      });
    }).catch(async (err) => {
      await worker.terminate();
      throw err;
    });
    return { runner, metadata, verified };
  }

  private settle(m: WorkerReply): void {
    if (m.type === 'ready' || m.id === null) return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.type === 'result') p.resolve(m.value);
    else p.reject(revive(m.error));
  }

  private fail(err: Error): void {
    this.exited ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  call<M extends SessionMethod>(method: M, args: Parameters<SessionCalls[M]>, lend = false): ReturnType<SessionCalls[M]> {
    if (this.exited) return Promise.reject(this.exited) as ReturnType<SessionCalls[M]>;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      try {
        const buffer = lend ? (args[0] as Float32Array).buffer : null;
        if (buffer instanceof ArrayBuffer) this.worker.postMessage({ type: 'call', id, method, args, lend } satisfies WorkerRequest, [buffer]);
        else this.worker.postMessage({ type: 'call', id, method, args } satisfies WorkerRequest);
      } catch (err) {
        // e.g. an exit rule given as an object with functions: it cannot cross to the worker.
        this.pending.delete(id);
        reject(new DynnError(`cannot send this call to the ONNX Runtime worker: ${(err as Error).message}`));
      }
    }) as ReturnType<SessionCalls[M]>;
  }

  async close(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ type: 'close' } satisfies WorkerRequest);
    const timer = setTimeout(() => void this.worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/**
 * A dynn ONNX model loaded for inference with onnxruntime-node: one session per model, graph optimization
 * 'all', intra-op threads from the core count, optionally in a worker thread.
 *
 * ```ts
 * const model = await OnnxModel.load('model.onnx', { worker: true });
 * const p = await model.run(images, 0.5); // images: Float32Array, NCHW [batch, C, H, W]
 * p.scores; p.classes; p.u; p.level; p.ms
 * await model.dispose();
 * ```
 * The image input is NCHW float32 with the same scaling the network was trained on (dynn's data sets give
 * pixels / 255); pass `{layout: 'NHWC'}` to `run` for NHWC data such as dynn's ImageSets.
 */
export class OnnxModel {
  private disposed = false;

  private constructor(
    /** The file the model was loaded from. */
    readonly path: string,
    /** Levels, FLOPs, class names, model config and input shape, read from the file. */
    readonly metadata: OnnxMetadata,
    private readonly runner: Runner,
    /** Whether inference runs in a worker thread. */
    readonly inWorker: boolean,
    /**
     * Whether the weights digest was checked at load. False only for a model exported before dynn stored
     * one (its inputs and outputs were still checked); re-export it to verify its weights.
     */
    readonly verified: boolean,
  ) {}

  /**
   * Loads a model exported by `dynn export`. Rejects with a DynnError for a missing, corrupt or truncated
   * file, a file without dynn metadata or with metadata that does not validate, a graph whose inputs and
   * outputs differ from its metadata, weights that do not match the stored digest, or a device this ONNX
   * Runtime build lacks.
   */
  static async load(file: string, options: LoadOptions = {}): Promise<OnnxModel> {
    const { worker = false, ...rest } = options;
    sessionOptions(rest);
    if (worker) {
      const { runner, metadata, verified } = await WorkerRunner.start(file, rest);
      return new OnnxModel(file, metadata, runner, true, verified);
    }
    const session = await openSession(file, rest);
    const runner: Runner = {
      call: (method, args) => (session[method] as (...a: unknown[]) => ReturnType<SessionCalls[typeof method]>)(...args),
      close: () => session.release(),
    };
    return new OnnxModel(file, session.metadata, runner, false, session.verified);
  }

  /** The exported levels, cheapest first. */
  get levels(): readonly OnnxLevel[] {
    return this.metadata.levels;
  }

  /** The exported level that utilization u runs: the most expensive one whose `minU` is at most u. */
  levelFor(u: number): OnnxLevel {
    return levelFor(this.metadata, u);
  }

  private call<M extends SessionMethod>(method: M, args: Parameters<SessionCalls[M]>, lend?: boolean): ReturnType<SessionCalls[M]> {
    if (this.disposed) return Promise.reject(new DynnError(`${this.path}: this model was disposed`)) as ReturnType<SessionCalls[M]>;
    return this.runner.call(method, args, lend);
  }

  /**
   * Class scores for a batch at utilization u in (0, 1]. `images` is a Float32Array holding whole samples
   * (NCHW unless `options.layout` says 'NHWC'). The level is chosen in JavaScript with the same rule as the
   * graph, and its representative u is fed to the graph. Bad input rejects with a DynnError. An early-exit
   * model runs its whole network in one pass (its last exit); `runExits` terminates early.
   */
  run(images: Float32Array, u: number, options: ModelRunOptions = {}): Promise<ModelPrediction> {
    const { lend = false, ...rest } = options;
    if (!lend) return this.call('run', [images, u, rest]);
    if (this.inWorker) return this.call('run', [images, u, rest], true);
    return this.call('run', [images, u, rest]).then((p) => ({ ...p, images }));
  }

  /**
   * Early-exit models: runs at utilization u with early termination; a sample whose exit passes the rule
   * leaves and is not computed further (the rest continue as a smaller batch). Rule and thresholds default to
   * the policy stored at export; a rule is given by name when the model runs in a worker. Where the graph
   * holds the rule asked for, every stage runs in one session run (`oneRun`); `{ staged: true }` runs the
   * stages in turn instead.
   */
  runExits(images: Float32Array, u: number, options: ExitOptions & Pick<ModelRunOptions, 'lend'> = {}): Promise<ExitPrediction & Pick<ModelPrediction, 'images'>> {
    const { lend = false, ...rest } = options;
    if (!lend) return this.call('runExits', [images, u, rest]);
    if (this.inWorker) return this.call('runExits', [images, u, rest], true);
    return this.call('runExits', [images, u, rest]).then((p) => ({ ...p, images }));
  }

  /** The exported controller's u per sample (models exported with `--controller`). */
  decide(images: Float32Array, options: RunOptions = {}): Promise<Decision> {
    return this.call('decide', [images, options]);
  }

  /** Temporal models: a batch of frames at action index `action`, and each one's next action (`ModelSession.step`). */
  step(images: Float32Array, action: number, options: RunOptions = {}): Promise<PlannedPrediction> {
    return this.call('step', [images, action, options]);
  }

  /**
   * A stream's session on a model exported with a temporal controller: `next(frame)` runs the frame at the
   * planned u and plans the next frame's (see `TemporalSession`). Sessions are plain objects: keep as many as
   * there are streams; a model without a temporal controller is a DynnError.
   */
  session(): TemporalSession<RunOptions> {
    return new TemporalSession<RunOptions>(this.metadata, (x, a, o) => this.step(x, a, o));
  }

  /** Each sample at its own u, batched per level (see `runMixed` of the core module); results in input order. */
  async runMixed(images: Float32Array, us: ArrayLike<number>, options: RunOptions = {}): Promise<MixedPrediction> {
    return runMixed(this.metadata, toNchw(this.metadata, images, options), us, (x, u) => this.run(x, u));
  }

  /**
   * The whole adaptive model in ONNX Runtime: the exported controller picks u per sample, then each level's
   * samples run as one batch. The mean FLOPs ratio includes the controller's own cost.
   */
  async runAdaptive(images: Float32Array, options: RunOptions = {}): Promise<MixedPrediction & { decision: Decision }> {
    const nchw = toNchw(this.metadata, images, options);
    const decision = await this.decide(nchw);
    const m = await this.runMixed(nchw, decision.u);
    return { ...m, meanFlopsRatio: m.meanFlopsRatio + this.metadata.controller!.flopsRatio, ms: m.ms + decision.ms, decision };
  }

  /** Frees the session (and stops the worker). Idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.runner.close();
  }
}
