import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { SPLIT_IO } from './export.js';
import { loadSplitMeta, type SplitMeta } from './store.js';
import { checkBits } from './quantize.js';
import type { FeatureFrame, FrameLimits } from './wire.js';

type Ort = typeof import('onnxruntime-node');

/** ONNX Runtime options of a split's sessions. */
export interface SplitSessionOptions {
  /** Intra-op threads (default 1: head and tail share a machine's cores in tests and benches). */
  threads?: number;
}

/** The graphs' input and output names, as `export.ts` writes them and `run` feeds and reads them. */
const GRAPH_IO = {
  head: { inputs: [SPLIT_IO.images, SPLIT_IO.channels, SPLIT_IO.bits], outputs: [SPLIT_IO.codes, SPLIT_IO.min, SPLIT_IO.step] },
  tail: { inputs: [SPLIT_IO.codes, SPLIT_IO.min, SPLIT_IO.step], outputs: [SPLIT_IO.scores] },
};

/** A file swapped or edited by hand would fail at the first frame with ONNX Runtime's message; refuse it at load. */
function checkNames(file: string, session: InferenceSession, want: { inputs: string[]; outputs: string[] }, graph: string): void {
  for (const [kind, got, expected] of [['inputs', session.inputNames, want.inputs], ['outputs', session.outputNames, want.outputs]] as const) {
    if (got.length !== expected.length || expected.some((n) => !got.includes(n))) {
      throw new DynnError(`${file} has ${kind} ${got.join(', ') || '(none)'}; a split's ${graph} has ${expected.join(', ')}`);
    }
  }
}

async function open(ort: Ort, file: string, options: SplitSessionOptions, kind: 'head' | 'tail'): Promise<InferenceSession> {
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
    checkNames(file, session, GRAPH_IO[kind], kind);
  } catch (err) {
    await session.release();
    throw err;
  }
  return session;
}

async function loadOrt(): Promise<Ort> {
  const ort = await import('onnxruntime-node');
  return ((ort as unknown as { default?: Ort }).default ?? ort) as Ort;
}

/** Opens one graph of every split point of a folder (sessions released if one fails). */
async function openAll(ort: Ort, dir: string, meta: SplitMeta, kind: 'head' | 'tail', options: SplitSessionOptions): Promise<InferenceSession[]> {
  const sessions: InferenceSession[] = [];
  try {
    for (const s of meta.splits) sessions.push(await open(ort, path.join(dir, s[kind]), options, kind));
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

/** The device side: images to quantized features (a head graph per split point). */
export class SplitHead {
  private constructor(
    private readonly ort: Ort,
    private readonly sessions: InferenceSession[],
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitHead> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitHead(ort, await openAll(ort, dir, meta, 'head', options), meta);
  }

  /**
   * Quantized features of `count` images (NCHW float32 in [0, 1]) through split point `split`'s head and a
   * bottleneck of `channels` at `bits`.
   */
  async run(images: Float32Array, count: number, channels: number, bits: number, split = 0): Promise<FeatureFrame> {
    const [c, h, w] = this.meta.input.shape;
    const s = this.meta.splits[split];
    if (!s) throw new DynnError(`split point ${split} is not one of this split's 0 to ${this.meta.splits.length - 1}`);
    if (images.length !== count * c * h * w) throw new DynnError(`${images.length} values for ${count} images of ${c}x${h}x${w}`);
    if (!Number.isInteger(channels) || channels < 1 || channels > s.bottleneck.maxChannels) {
      throw new DynnError(`channels must be from 1 to ${s.bottleneck.maxChannels} at ${s.at}, got ${channels}`);
    }
    checkBits(bits);
    const T = this.ort.Tensor;
    const out = await this.sessions[split].run({
      [SPLIT_IO.images]: new T('float32', images, [count, c, h, w]),
      [SPLIT_IO.channels]: new T('int64', BigInt64Array.of(BigInt(channels)), [1]),
      [SPLIT_IO.bits]: new T('float32', Float32Array.of(bits), [1]),
    });
    const codes = Uint16Array.from(out[SPLIT_IO.codes].data as Int32Array);
    const [, , fh, fw] = out[SPLIT_IO.codes].dims as number[];
    return { split, bits, channels, height: fh, width: fw, count, codes, min: Float32Array.from(out[SPLIT_IO.min].data as Float32Array), step: Float32Array.from(out[SPLIT_IO.step].data as Float32Array) };
  }

  async release(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.release()));
  }
}

/** The server side: quantized features to class scores (a tail graph per split point). */
export class SplitTail {
  private constructor(
    private readonly ort: Ort,
    private readonly sessions: InferenceSession[],
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitTail> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitTail(ort, await openAll(ort, dir, meta, 'tail', options), meta);
  }

  /** What a frame must match to be decoded, per split point (its id is the index). */
  get limits(): FrameLimits[] {
    return this.meta.splits.map((s) => ({ at: s.at, height: s.features.shape[1], width: s.features.shape[2], maxChannels: s.bottleneck.maxChannels }));
  }

  /** Class scores, [count, classes] row-major, of a decoded frame (through its split point's tail). */
  async run(f: FeatureFrame): Promise<Float32Array> {
    const session = this.sessions[f.split];
    if (!session) throw new DynnError(`split point ${f.split} is not one of this split's 0 to ${this.sessions.length - 1}`);
    const T = this.ort.Tensor;
    const out = await session.run({
      [SPLIT_IO.codes]: new T('int32', Int32Array.from(f.codes), [f.count, f.channels, f.height, f.width]),
      [SPLIT_IO.min]: new T('float32', f.min, [f.count]),
      [SPLIT_IO.step]: new T('float32', f.step, [f.count]),
    });
    return Float32Array.from((out[SPLIT_IO.scores] as Tensor).data as Float32Array);
  }

  async release(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.release()));
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
    const tail = await ort.InferenceSession.create(graphs[i].tail, opts);
    try {
      const feeds = {
        [SPLIT_IO.images]: new T('float32', new Float32Array(c * h * w).fill(0.5), [1, c, h, w]),
        [SPLIT_IO.channels]: new T('int64', BigInt64Array.of(BigInt(s.bottleneck.maxChannels)), [1]),
        [SPLIT_IO.bits]: new T('float32', Float32Array.of(8), [1]),
      };
      const features = await head.run(feeds);
      const tailFeeds = { [SPLIT_IO.codes]: features[SPLIT_IO.codes], [SPLIT_IO.min]: features[SPLIT_IO.min], [SPLIT_IO.step]: features[SPLIT_IO.step] };
      s.measured = { headMs: await timed(() => head.run(feeds)), tailMs: await timed(() => tail.run(tailFeeds)) };
    } finally {
      await head.release();
      await tail.release();
    }
  }
}
