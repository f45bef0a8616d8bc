/**
 * What runs the split's graphs in either ONNX Runtime (onnxruntime-node in `dynn head` and `dynn serve`,
 * onnxruntime-web in the browser's head page): their input and output names, the check of a loaded file's names,
 * and the head's and tail's run. No node modules here: the page loads this file as it is.
 */
import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { checkBits } from './bits.js';
import type { FeatureFrame } from './wire.js';

/** Input and output names of the head and tail graphs. */
export const SPLIT_IO = {
  images: 'images',
  /** Head input, int64 [1]: the bottleneck's channel count (the first c encoder outputs). */
  channels: 'channels',
  /** Head input, float32 [1]: the bit width. */
  bits: 'bits',
  /** Head output, tail input: int32 [batch, c, H, W] codes. */
  codes: 'codes',
  /** Head output, tail input: float32 [batch], each sample's minimum. */
  min: 'min',
  /** Head output, tail input: float32 [batch], each sample's quantization step. */
  step: 'step',
  scores: 'scores',
} as const;

/** The graphs' input and output names, as `export.ts` writes them and `run` feeds and reads them. */
export const GRAPH_IO = {
  head: { inputs: [SPLIT_IO.images, SPLIT_IO.channels, SPLIT_IO.bits], outputs: [SPLIT_IO.codes, SPLIT_IO.min, SPLIT_IO.step] },
  tail: { inputs: [SPLIT_IO.codes, SPLIT_IO.min, SPLIT_IO.step], outputs: [SPLIT_IO.scores] },
} as const;

/** What the split needs of an ONNX Runtime package: onnxruntime-node and onnxruntime-web both provide it. */
export interface SplitOrt {
  Tensor: new (type: 'float32' | 'int32' | 'int64', data: Float32Array | Int32Array | BigInt64Array, dims: readonly number[]) => Tensor;
}

/** What the head's run reads of the split's metadata (`split.json`, or `GET /v1/split`). */
export interface HeadShape {
  /** The images: NCHW, per-sample [C, H, W]. */
  input: { shape: number[] };
  bottleneck: { maxChannels: number };
}

/**
 * A file swapped or edited by hand would fail at the first frame with ONNX Runtime's message: refuse it at load,
 * naming the file (`head.onnx` or `tail.onnx`, or a path ending in it) and its names.
 */
export function checkGraphNames(file: string, part: keyof typeof GRAPH_IO, session: Pick<InferenceSession, 'inputNames' | 'outputNames'>): void {
  const want = GRAPH_IO[part];
  for (const [kind, got, expected] of [['inputs', session.inputNames, want.inputs], ['outputs', session.outputNames, want.outputs]] as const) {
    if (got.length !== expected.length || expected.some((n) => !got.includes(n))) {
      throw new DynnError(`${file} has ${kind} ${got.join(', ') || '(none)'}; a split's ${part}.onnx has ${expected.join(', ')}`);
    }
  }
}

/** The device side on a loaded `head.onnx`: images to quantized features. */
export class HeadSession {
  constructor(
    protected readonly ort: SplitOrt,
    protected readonly session: InferenceSession,
    readonly meta: HeadShape,
  ) {}

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

/** The server side on a loaded `tail.onnx`: quantized features to class scores. */
export class TailSession {
  constructor(
    protected readonly ort: SplitOrt,
    protected readonly session: InferenceSession,
  ) {}

  /** Class scores, [count, classes] row-major, of a decoded frame. */
  async run(f: FeatureFrame): Promise<Float32Array> {
    const T = this.ort.Tensor;
    const out = await this.session.run({
      [SPLIT_IO.codes]: new T('int32', Int32Array.from(f.codes), [f.count, f.channels, f.height, f.width]),
      [SPLIT_IO.min]: new T('float32', f.min, [f.count]),
      [SPLIT_IO.step]: new T('float32', f.step, [f.count]),
    });
    return Float32Array.from(out[SPLIT_IO.scores].data as Float32Array);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
