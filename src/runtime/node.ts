import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import type { OnnxLevel, OnnxMetadata } from '../export/metadata.js';
import { levelFor, ModelSession, type Prediction, type RunOptions } from './core.js';

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

/** Opens an in-thread session of a model file (what a worker runs, and `OnnxModel` without a worker). */
export async function openSession(file: string, options: Omit<LoadOptions, 'worker'> = {}): Promise<ModelSession> {
  const ort = await import('onnxruntime-node');
  const opts = sessionOptions(options);
  return ModelSession.create(ort.default ?? ort, await readModelFile(file), file, opts);
}

/** Messages between `OnnxModel` and its worker (src/runtime/worker.ts). */
export type WorkerRequest = { type: 'run'; id: number; images: Float32Array; u: number; options: RunOptions } | { type: 'close' };
export type WorkerReply =
  | { type: 'ready'; metadata: OnnxMetadata }
  | { type: 'result'; id: number; prediction: Prediction }
  | { type: 'error'; id: number | null; error: { name: string; message: string } };

/** Rebuilds an error sent from a worker, keeping DynnError's class so callers can tell user errors apart. */
function revive(e: { name: string; message: string }): Error {
  if (e.name === 'DynnError') return new DynnError(e.message);
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}

interface Runner {
  run(images: Float32Array, u: number, options: RunOptions): Promise<Prediction>;
  close(): Promise<void>;
}

/** Runs the session in a worker thread; requests are answered in order of arrival. */
class WorkerRunner implements Runner {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (p: Prediction) => void; reject: (e: Error) => void }>();
  private exited: Error | null = null;

  private constructor(private readonly worker: Worker) {}

  static async start(file: string, options: Omit<LoadOptions, 'worker'>): Promise<{ runner: WorkerRunner; metadata: OnnxMetadata }> {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { file, options } });
    const runner = new WorkerRunner(worker);
    const metadata = await new Promise<OnnxMetadata>((resolve, reject) => {
      worker.on('message', (m: WorkerReply) => {
        if (m.type === 'ready') resolve(m.metadata);
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
    return { runner, metadata };
  }

  private settle(m: WorkerReply): void {
    if (m.type === 'ready' || m.id === null) return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.type === 'result') p.resolve(m.prediction);
    else p.reject(revive(m.error));
  }

  private fail(err: Error): void {
    this.exited ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  run(images: Float32Array, u: number, options: RunOptions): Promise<Prediction> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'run', id, images, u, options } satisfies WorkerRequest);
    });
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
  ) {}

  /**
   * Loads a model exported by `dynn export`. Rejects with a DynnError for a missing, corrupt or truncated
   * file, a file without dynn metadata, or a device this ONNX Runtime build lacks.
   */
  static async load(file: string, options: LoadOptions = {}): Promise<OnnxModel> {
    const { worker = false, ...rest } = options;
    sessionOptions(rest);
    if (worker) {
      const { runner, metadata } = await WorkerRunner.start(file, rest);
      return new OnnxModel(file, metadata, runner, true);
    }
    const session = await openSession(file, rest);
    const runner: Runner = { run: (images, u, o) => session.run(images, u, o), close: () => session.release() };
    return new OnnxModel(file, session.metadata, runner, false);
  }

  /** The exported levels, cheapest first. */
  get levels(): readonly OnnxLevel[] {
    return this.metadata.levels;
  }

  /** The exported level that utilization u runs: the most expensive one whose `minU` is at most u. */
  levelFor(u: number): OnnxLevel {
    return levelFor(this.metadata, u);
  }

  /**
   * Class scores for a batch at utilization u in (0, 1]. `images` is a Float32Array holding whole samples
   * (NCHW unless `options.layout` says 'NHWC'). The level is chosen in JavaScript with the same rule as the
   * graph, and its representative u is fed to the graph. Bad input rejects with a DynnError.
   */
  run(images: Float32Array, u: number, options: RunOptions = {}): Promise<Prediction> {
    if (this.disposed) return Promise.reject(new DynnError(`${this.path}: this model was disposed`));
    return this.runner.run(images, u, options);
  }

  /** Frees the session (and stops the worker). Idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.runner.close();
  }
}
