import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { raiseMallocThresholds } from '../engine/ort-kernels.js';
import { checkGraphNames, GRAPH_IO, HeadSession, SPLIT_IO, TailSession, type SplitOrt } from './core.js';
import { loadSplitMeta, type SplitMeta } from './store.js';
import type { FeatureFrame, FrameLimits } from './wire.js';

type Ort = typeof import('onnxruntime-node');

/** ONNX Runtime options of a split's sessions. */
export interface SplitSessionOptions {
  /** Intra-op threads (default 1: head and tail share a machine's cores in tests and benches). */
  threads?: number;
}

async function open(ort: Ort, file: string, options: SplitSessionOptions, part: keyof typeof GRAPH_IO): Promise<InferenceSession> {
  let bytes: Uint8Array;
  try {
    bytes = await fsp.readFile(file);
  } catch (err) {
    throw new DynnError(`cannot read ${file}: ${(err as Error).message}`);
  }
  let session: InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: options.threads ?? 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  } catch (err) {
    throw new DynnError(`${file} is not a model ONNX Runtime can load: ${(err as Error).message}`);
  }
  try {
    checkGraphNames(file, part, session);
  } catch (err) {
    await session.release();
    throw err;
  }
  return session;
}

async function loadOrt(): Promise<Ort> {
  const ort = await import('onnxruntime-node');
  raiseMallocThresholds();
  return ((ort as unknown as { default?: Ort }).default ?? ort) as Ort;
}

/** Opens one graph of every split point of a folder (sessions released if one fails). */
async function openAll(ort: Ort, dir: string, meta: SplitMeta, part: keyof typeof GRAPH_IO, options: SplitSessionOptions): Promise<InferenceSession[]> {
  const sessions: InferenceSession[] = [];
  try {
    for (const s of meta.splits) sessions.push(await open(ort, path.join(dir, s[part]), options, part));
  } catch (err) {
    await Promise.all(sessions.map((x) => x.release()));
    throw err;
  }
  return sessions;
}

/** The index of split point `at` in `meta`, or a DynnError listing the folder's. */
export function splitIndex(meta: SplitMeta, at: string): number {
  const i = meta.splits.findIndex((s) => s.at === at);
  if (i < 0) throw new DynnError(`unknown split point "${at}"; this split has ${meta.splits.map((s) => s.at).join(', ')}`);
  return i;
}

/** The device side in onnxruntime-node: images to quantized features, a head graph per split point. */
export class SplitHead {
  private constructor(
    /** One per split point, in `meta.splits` order. */
    readonly heads: HeadSession[],
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitHead> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    const sessions = await openAll(ort, dir, meta, 'head', options);
    return new SplitHead(sessions.map((s, i) => new HeadSession(ort as unknown as SplitOrt, s, { input: meta.input, bottleneck: meta.splits[i].bottleneck }, i)), meta);
  }

  /**
   * Quantized features of `count` images (NCHW float32 in [0, 1]) through split point `split`'s head and a
   * bottleneck of `channels` at `bits`.
   */
  async run(images: Float32Array, count: number, channels: number, bits: number, split = 0): Promise<FeatureFrame> {
    const head = this.heads[split];
    if (!head) throw new DynnError(`split point ${split} is not one of this split's 0 to ${this.heads.length - 1}`);
    return head.run(images, count, channels, bits);
  }

  async release(): Promise<void> {
    await Promise.all(this.heads.map((h) => h.release()));
  }
}

/** The server side in onnxruntime-node: quantized features to class scores, a tail graph per split point. */
export class SplitTail {
  private constructor(
    private readonly tails: TailSession[],
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitTail> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    const sessions = await openAll(ort, dir, meta, 'tail', options);
    return new SplitTail(sessions.map((s) => new TailSession(ort as unknown as SplitOrt, s)), meta);
  }

  /** What a frame must match to be decoded, per split point (its id is the index). */
  get limits(): FrameLimits[] {
    return this.meta.splits.map((s) => ({ at: s.at, height: s.features.shape[1], width: s.features.shape[2], maxChannels: s.bottleneck.maxChannels }));
  }

  /** Class scores, [count, classes] row-major, of a decoded frame (through its split point's tail). */
  async run(f: FeatureFrame): Promise<Float32Array> {
    const tail = this.tails[f.split];
    if (!tail) throw new DynnError(`split point ${f.split} is not one of this split's 0 to ${this.tails.length - 1}`);
    return tail.run(f);
  }

  async release(): Promise<void> {
    await Promise.all(this.tails.map((t) => t.release()));
  }
}

/**
 * Records in each split point's `measured` the median ms of one sample through its head and tail at its widest
 * bottleneck (8 bits), ONNX Runtime on one thread, after warm-up runs: the compute the metadata gives beside the
 * FLOPs, and the tail time NaviSplit's head starts from. Cheap (tens of runs of one sample).
 */
export async function measureSplit(trained: { splits: { head: Uint8Array; tail: Uint8Array }[]; meta: SplitMeta }, runs = 9): Promise<void> {
  const { splits: graphs, meta } = trained;
  const ort = await loadOrt();
  const T = ort.Tensor;
  const [c, h, w] = meta.input.shape;
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const timed = async (f: () => Promise<unknown>) => {
    for (let i = 0; i < 3; i++) await f();
    const ms: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await f();
      ms.push(performance.now() - t0);
    }
    return median(ms);
  };
  for (const [i, s] of meta.splits.entries()) {
    const opts = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };
    const head = await ort.InferenceSession.create(graphs[i].head, opts);
    let tail: InferenceSession | undefined;
    try {
      tail = await ort.InferenceSession.create(graphs[i].tail, opts);
      const tailSession = tail;
      const feeds = {
        [SPLIT_IO.images]: new T('float32', new Float32Array(c * h * w).fill(0.5), [1, c, h, w]),
        [SPLIT_IO.channels]: new T('int64', BigInt64Array.of(BigInt(s.bottleneck.maxChannels)), [1]),
        [SPLIT_IO.bits]: new T('float32', Float32Array.of(8), [1]),
      };
      const features = await head.run(feeds);
      const tailFeeds = { [SPLIT_IO.codes]: features[SPLIT_IO.codes], [SPLIT_IO.min]: features[SPLIT_IO.min], [SPLIT_IO.step]: features[SPLIT_IO.step] };
      s.measured = { headMs: await timed(() => head.run(feeds)), tailMs: await timed(() => tailSession.run(tailFeeds)) };
    } finally {
      await head.release();
      await tail?.release();
    }
  }
}
