import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { SPLIT_IO } from './export.js';
import { HEAD_FILE, loadSplitMeta, TAIL_FILE, type SplitMeta } from './store.js';
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
function checkNames(file: string, session: InferenceSession, want: { inputs: string[]; outputs: string[] }): void {
  for (const [kind, got, expected] of [['inputs', session.inputNames, want.inputs], ['outputs', session.outputNames, want.outputs]] as const) {
    if (got.length !== expected.length || expected.some((n) => !got.includes(n))) {
      throw new DynnError(`${file} has ${kind} ${got.join(', ') || '(none)'}; a split's ${path.basename(file)} has ${expected.join(', ')}`);
    }
  }
}

async function open(ort: Ort, file: string, options: SplitSessionOptions, io: { inputs: string[]; outputs: string[] }): Promise<InferenceSession> {
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
    checkNames(file, session, io);
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

/** The device side: images to quantized features (`head.onnx`). */
export class SplitHead {
  private constructor(
    private readonly ort: Ort,
    private readonly session: InferenceSession,
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitHead> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitHead(ort, await open(ort, path.join(dir, HEAD_FILE), options, GRAPH_IO.head), meta);
  }

  /** Quantized features of `count` images (NCHW float32 in [0, 1]) through a bottleneck of `channels` at `bits`. */
  async run(images: Float32Array, count: number, channels: number, bits: number): Promise<FeatureFrame> {
    const [c, h, w] = this.meta.input.shape;
    if (images.length !== count * c * h * w) throw new DynnError(`${images.length} values for ${count} images of ${c}x${h}x${w}`);
    if (!Number.isInteger(channels) || channels < 1 || channels > this.meta.bottleneck.maxChannels) {
      throw new DynnError(`channels must be from 1 to ${this.meta.bottleneck.maxChannels}, got ${channels}`);
    }
    checkBits(bits);
    const T = this.ort.Tensor;
    const out = await this.session.run({
      [SPLIT_IO.images]: new T('float32', images, [count, c, h, w]),
      [SPLIT_IO.channels]: new T('int64', BigInt64Array.of(BigInt(channels)), [1]),
      [SPLIT_IO.bits]: new T('float32', Float32Array.of(bits), [1]),
    });
    const codes = Uint16Array.from(out[SPLIT_IO.codes].data as Int32Array);
    const [, , fh, fw] = out[SPLIT_IO.codes].dims as number[];
    return { bits, channels, height: fh, width: fw, count, codes, min: Float32Array.from(out[SPLIT_IO.min].data as Float32Array), step: Float32Array.from(out[SPLIT_IO.step].data as Float32Array) };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** The server side: quantized features to class scores (`tail.onnx`). */
export class SplitTail {
  private constructor(
    private readonly ort: Ort,
    private readonly session: InferenceSession,
    readonly meta: SplitMeta,
  ) {}

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitTail> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitTail(ort, await open(ort, path.join(dir, TAIL_FILE), options, GRAPH_IO.tail), meta);
  }

  /** What a frame must match to be decoded for this tail. */
  get limits(): FrameLimits {
    const [, h, w] = this.meta.features.shape;
    return { height: h, width: w, maxChannels: this.meta.bottleneck.maxChannels };
  }

  /** Class scores, [count, classes] row-major, of a decoded frame. */
  async run(f: FeatureFrame): Promise<Float32Array> {
    const T = this.ort.Tensor;
    const out = await this.session.run({
      [SPLIT_IO.codes]: new T('int32', Int32Array.from(f.codes), [f.count, f.channels, f.height, f.width]),
      [SPLIT_IO.min]: new T('float32', f.min, [f.count]),
      [SPLIT_IO.step]: new T('float32', f.step, [f.count]),
    });
    return Float32Array.from((out[SPLIT_IO.scores] as Tensor).data as Float32Array);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
