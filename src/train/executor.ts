import os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ImageSet } from '../data/types.js';
import type { Plan } from '../layers/types.js';
import { planToData, type ModelConfig, type NamedArray, type Network, type PlanData } from '../models/network.js';
import type { DistillSettings } from '../scaling/distill.js';
import { DynnError } from '../util/errors.js';
import { gatherBatch } from './batch.js';
import type { Optimizer, UpdateSpec } from './optimizer.js';
import {
  flatLayout,
  gradientStep,
  readFlat,
  stepContext,
  toStepSpec,
  writeFlat,
  type FlatLayout,
  type StepContext,
  type StepResult,
  type StepSetup,
  type StepSpec,
  type StepRouting,
} from './step.js';

/**
 * Computes the mean gradient of a batch at the flat weights `weights`, and applies an optimizer's update to
 * them and to the model(s). From its creation on, the executor's `weights` are the truth: an update rewrites
 * the model's trainable weights from them, so set the model's weights before creating the executor.
 */
export interface GradientExecutor {
  readonly layout: FlatLayout;
  /** The trainable weights steps run with, laid out as `layout`, read from the model at the start. */
  readonly weights: Float32Array;
  /** The last step's mean-loss gradient is the sum over i of `gradScales[i] * gradParts[i]` (one part per thread). */
  readonly gradParts: readonly Float32Array[];
  readonly gradScales: readonly number[];
  /** Threads computing gradients. */
  readonly threads: number;
  /** One step on the samples `indices`: a plan, or several plans summed (see `gradientStep`). */
  step(indices: Int32Array, work: Plan | StepSpec): Promise<StepResult>;
  /** Applies one update of `optimizer` with the last step's gradient to `weights`, the main model and the threads' copies. */
  update(optimizer: Optimizer): Promise<void>;
  /** Takes the main model's trainable weights again, after the trainer changed some between steps (gates fitted to their target). */
  reload(): void;
  close(): Promise<void>;
}

/** The mean gradient of an executor's last step, summed from its parts (tests and tools; the optimizer sums its own). */
export function meanGradient(executor: GradientExecutor): Float32Array {
  const out = new Float32Array(executor.layout.total);
  executor.gradParts.forEach((g, i) => {
    const s = executor.gradScales[i];
    if (s !== 0) for (let j = 0; j < out.length; j++) out[j] += s * g[j];
  });
  return out;
}

/** Runs every step in the calling thread, on the main model itself. */
export class LocalExecutor implements GradientExecutor {
  readonly layout: FlatLayout;
  readonly weights: Float32Array;
  readonly gradParts: readonly Float32Array[];
  readonly gradScales = [1];
  readonly threads = 1;
  private readonly images: Float32Array;
  private readonly labels: Int32Array;
  private readonly context: StepContext;

  constructor(
    private readonly model: Network,
    private readonly data: ImageSet,
    maxBatch: number,
    setup: StepSetup = {},
  ) {
    this.context = stepContext(setup);
    this.layout = flatLayout(model);
    this.weights = new Float32Array(this.layout.total);
    readFlat(model, this.layout, this.weights);
    this.gradParts = [new Float32Array(this.layout.total)];
    this.images = new Float32Array(maxBatch * data.height * data.width * data.channels);
    this.labels = new Int32Array(maxBatch);
  }

  async step(indices: Int32Array, work: Plan | StepSpec): Promise<StepResult> {
    const n = gatherBatch(this.data, indices, this.images, this.labels);
    try {
      return gradientStep(this.model, this.layout, this.images, this.labels.subarray(0, n), work, this.gradParts[0], this.context);
    } catch (err) {
      if (err instanceof WebAssembly.RuntimeError) throw new DynnError(`the training step failed in the engine: ${err.message}${heapHint(err.message)}`);
      throw err;
    }
  }

  async update(optimizer: Optimizer): Promise<void> {
    optimizer.step(this.weights, this.gradParts, this.gradScales);
    writeFlat(this.model, this.layout, this.weights);
  }

  reload(): void {
    readFlat(this.model, this.layout, this.weights);
  }

  async close(): Promise<void> {
    this.context.teacher?.net.dispose();
  }
}

/** What a gradient worker thread is started with. */
export interface WorkerInit {
  engine: string;
  config: ModelConfig;
  weights: SharedArrayBuffer;
  /** Every worker's gradient buffer (an update reads them all); this worker writes `grads[index]`. */
  grads: SharedArrayBuffer[];
  index: number;
  data: ImageSet;
  maxBatch: number;
  /** The teacher network (config and weights; the worker freezes it) and the distillation settings. */
  teacher?: { config: ModelConfig; weights: NamedArray[]; settings: DistillSettings };
  exitWeights?: number[];
}

/** A copy of a network's untrained weights (BatchNorm statistics). */
function statisticsOf(model: Network): NamedArray[] {
  return model.weights().filter((w) => !w.trainable).map((w) => ({ name: w.name, shape: w.variable.shape.slice(), data: (w.variable.dataSync() as Float32Array).slice() }));
}

/** A step as a worker receives it. */
export interface StepMessage {
  type: 'step';
  /** The worker's shard of the batch (sample indices into the shared data). */
  indices: Int32Array;
  /** The step's plans (see `StepSpec`). */
  plans: PlanData[];
  inplaceDistill: boolean;
  inplaceAlpha: number;
  /** The gates' routing of the step (see `StepSpec`). */
  routing?: StepRouting;
  /** Only the gates train (see `StepSpec`). */
  gatesOnly?: boolean;
  /**
   * With `gatesOnly`, and on the first step after a reload: the network's untrained weights (BatchNorm
   * statistics, which the frozen network normalizes with; a softmax temperature, annealed between epochs);
   * workers hold only the trained ones in shared memory, and calibration or annealing changes these.
   */
  statistics?: NamedArray[];
  /** Position of the shard's first sample in the step's batch (gate decisions depend on it). */
  offset: number;
  /** Weight version: the worker reloads the shared weights when it changes. */
  version: number;
}

/** An optimizer update as a worker receives it: apply `spec` to its range of the weights. */
export interface UpdateMessage {
  type: 'update';
  spec: UpdateSpec;
  lo: number;
  hi: number;
}

interface Pending {
  resolve: (r: StepResult | undefined) => void;
  reject: (e: Error) => void;
}

/**
 * Data-parallel gradients over worker threads (one per core by default): each worker holds a copy of the
 * network, reads the weights from a shared buffer when they change, computes the gradient of its shard of
 * the batch into its own shared buffer; the shard gradients are averaged, weighted by shard size.
 */
export class ThreadExecutor implements GradientExecutor {
  readonly layout: FlatLayout;
  /** Shared with the workers. */
  readonly weights: Float32Array;
  /** Each worker's gradient buffer, shared. */
  readonly gradParts: readonly Float32Array[];
  private scales: number[];
  private version = 0;
  /** The main model's weights were reloaded: the next step sends the untrained ones too. */
  private reloaded = false;
  private readonly pending: (Pending | null)[];

  private constructor(
    private readonly model: Network,
    private readonly workers: Worker[],
    weights: SharedArrayBuffer,
    grads: SharedArrayBuffer[],
  ) {
    this.layout = flatLayout(model);
    this.weights = new Float32Array(weights);
    this.gradParts = grads.map((g) => new Float32Array(g));
    this.scales = grads.map(() => 0);
    this.pending = workers.map(() => null);
    workers.forEach((w, i) => {
      w.on('message', (m: { type: string; result?: StepResult; message?: string }) => {
        const p = this.pending[i];
        this.pending[i] = null;
        if (!p) return;
        if (m.type === 'done' || m.type === 'updated') p.resolve(m.result);
        else p.reject(new DynnError(`gradient worker ${i} failed: ${m.message}${heapHint(m.message ?? "")}`));
      });
      w.on('error', (e) => {
        const p = this.pending[i];
        this.pending[i] = null;
        p?.reject(e as Error);
      });
      // A worker that dies without an error event (killed, out of memory) must not leave a step waiting.
      w.on('exit', (code) => {
        const p = this.pending[i];
        this.pending[i] = null;
        p?.reject(new DynnError(`gradient worker ${i} exited (code ${code}) during a step or an update`));
      });
    });
  }

  get threads(): number {
    return this.workers.length;
  }

  get gradScales(): readonly number[] {
    return this.scales;
  }

  /** Starts `threads` workers (default: one per core) for `model`, sharing `data` (in shared memory). */
  static async start(
    model: Network,
    data: ImageSet,
    engine: string,
    maxBatch: number,
    threads = os.availableParallelism(),
    setup: StepSetup = {},
  ): Promise<ThreadExecutor> {
    const teacher = setup.teacher
      ? { config: setup.teacher.model.config, weights: setup.teacher.model.getWeights(), settings: setup.teacher.settings }
      : undefined;
    const layout = flatLayout(model);
    const weights = new SharedArrayBuffer(layout.total * 4);
    readFlat(model, layout, new Float32Array(weights));
    const grads = Array.from({ length: threads }, () => new SharedArrayBuffer(layout.total * 4));
    const workers = grads.map(
      (_, index) =>
        new Worker(new URL('./worker.js', import.meta.url), {
          workerData: { engine, config: model.config, weights, grads, index, data, maxBatch, teacher, exitWeights: setup.exitWeights } satisfies WorkerInit,
        }),
    );
    const started = Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const onMessage = (m: { type: string; message?: string }) => {
              w.off('error', reject);
              if (m.type === 'ready') resolve();
              else reject(new DynnError(`gradient worker failed to start: ${m.message}`));
            };
            w.once('message', onMessage);
            w.once('error', reject);
            w.once('exit', (code) => reject(new DynnError(`gradient worker exited (code ${code}) while starting`)));
          }),
      ),
    );
    try {
      await started;
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
    return new ThreadExecutor(model, workers, weights, grads);
  }

  async step(indices: Int32Array, work: Plan | StepSpec): Promise<StepResult> {
    const k = this.workers.length;
    const per = Math.ceil(indices.length / k);
    const shards = Array.from({ length: k }, (_, i) => indices.subarray(i * per, Math.min(indices.length, (i + 1) * per)));
    const spec = toStepSpec(work);
    const plans = spec.plans.map(planToData);
    const inplaceDistill = spec.inplaceDistill ?? false;
    const inplaceAlpha = spec.inplaceAlpha ?? 1;
    // Untrained weights go along when only the gates train, and once after a reload (an annealed temperature).
    const statistics = spec.gatesOnly || this.reloaded ? statisticsOf(this.model) : undefined;
    this.reloaded = false;
    const results = await Promise.all(
      shards.map((shard, i) => {
        if (shard.length === 0) return Promise.resolve<StepResult>({ loss: 0, correct: 0, count: 0 });
        const message: StepMessage = { type: 'step', indices: shard, plans, inplaceDistill, inplaceAlpha, routing: spec.routing, gatesOnly: spec.gatesOnly, statistics, offset: i * per, version: this.version };
        return this.send(i, message) as Promise<StepResult>;
      }),
    );
    const total = results.reduce((a, r) => a + r.count, 0);
    // Shards are weighted by size; the optimizer sums the parts in its own pass over memory.
    this.scales = results.map((r) => (total > 0 ? r.count / total : 0));
    const routed = results.filter((r) => r.flopsRatio !== undefined && r.count > 0);
    return {
      loss: results.reduce((a, r) => a + r.loss * r.count, 0) / total,
      correct: results.reduce((a, r) => a + r.correct, 0),
      count: total,
      flopsRatio: routed.length ? routed.reduce((a, r) => a + r.flopsRatio! * r.count, 0) / routed.reduce((a, r) => a + r.count, 0) : undefined,
      executionRate: routed.length ? routed.reduce((a, r) => a + (r.executionRate ?? NaN) * r.count, 0) / routed.reduce((a, r) => a + r.count, 0) : undefined,
      ...(routed.some((r) => r.overflowRate !== undefined)
        ? { overflowRate: routed.reduce((a, r) => a + (r.overflowRate ?? 0) * r.count, 0) / routed.reduce((a, r) => a + r.count, 0) }
        : {}),
    };
  }

  /**
   * The workers, idle between steps, split the update: each applies it to its range of the shared weights and
   * slots. The pass is memory-bound, and a worker's garbage collection right after a step slows a lone main
   * thread down twofold.
   */
  async update(optimizer: Optimizer): Promise<void> {
    const n = this.layout.total;
    const spec = optimizer.begin(n, this.gradParts, this.scales);
    if (spec) {
      const k = this.workers.length;
      await Promise.all(
        this.workers.map((_, i) =>
          this.send(i, { type: 'update', spec, lo: Math.floor((i * n) / k), hi: Math.floor(((i + 1) * n) / k) } satisfies UpdateMessage),
        ),
      );
    }
    // The workers reload the weights at their next step (the version changed); the main model now.
    writeFlat(this.model, this.layout, this.weights);
    this.version++;
  }

  reload(): void {
    readFlat(this.model, this.layout, this.weights);
    this.version++;
    this.reloaded = true;
  }

  private send(i: number, message: StepMessage | UpdateMessage): Promise<StepResult | undefined> {
    return new Promise((resolve, reject) => {
      this.pending[i] = { resolve, reject };
      this.workers[i].postMessage(message);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * What a WebAssembly failure most likely means: a step's activations outgrew the engine's 4 GB heap (the
 * heap then fails as an abort or an access out of bounds, not as an allocation error). DenseNets keep every
 * concatenation: densenet41 on 28x28 images holds about 3 GB at a batch of 32 in one thread.
 */
function heapHint(message: string): string {
  return /memory access out of bounds|Aborted\(|out of memory|Cannot enlarge memory/i.test(message)
    ? '; most likely the WebAssembly engine ran out of its 4 GB of memory: train with a smaller --batch-size (worker threads split a batch between them)'
    : '';
}
