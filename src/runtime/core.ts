import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { checkUtilization } from '../gating/gating.js';
import { DynnError } from '../util/errors.js';
import { levelIndexFor, ONNX_IO, readOnnxMetadata, type OnnxLevel, type OnnxMetadata } from '../export/metadata.js';

/** What dynn needs of an ONNX Runtime package: onnxruntime-node and onnxruntime-web both provide it. */
export interface OrtApi {
  InferenceSession: { create(model: Uint8Array, options?: InferenceSession.SessionOptions): Promise<InferenceSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => Tensor;
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
    private readonly session: InferenceSession,
    private readonly ort: OrtApi,
    /** The model's dynn metadata. */
    readonly metadata: OnnxMetadata,
  ) {}

  /** Reads the metadata (clear errors for corrupt or foreign files), then creates the session. */
  static async create(ort: OrtApi, bytes: Uint8Array, source: string, options: InferenceSession.SessionOptions): Promise<ModelSession> {
    const metadata = readOnnxMetadata(bytes, source);
    let session: InferenceSession;
    try {
      session = await ort.InferenceSession.create(bytes, options);
    } catch (err) {
      throw new DynnError(`${source}: ONNX Runtime cannot load it: ${(err as Error).message}`);
    }
    return new ModelSession(session, ort, metadata);
  }

  /** Runs a batch at utilization u (see `OnnxModel.run`). */
  async run(images: Float32Array, u: number, options: RunOptions = {}): Promise<Prediction> {
    const meta = this.metadata;
    const level = levelFor(meta, u);
    const batch = checkImages(meta, images);
    const nchw = (options.layout ?? 'NCHW') === 'NHWC' ? nhwcToNchw(images, meta.input.shape) : images;
    const feeds = {
      [ONNX_IO.images]: new this.ort.Tensor('float32', nchw, [batch, ...meta.input.shape]),
      // The level's own u, not the caller's: float32 rounding near a threshold cannot pick another branch.
      [ONNX_IO.u]: new this.ort.Tensor('float32', Float32Array.of(level.u), []),
    };
    const start = performance.now();
    const out = await this.session.run(feeds);
    const ms = performance.now() - start;
    const scores = out[ONNX_IO.scores].data as Float32Array;
    return { scores, classes: argmaxRows(scores, meta.numClasses), batch, numClasses: meta.numClasses, u: level.u, level: level.level, ms };
  }

  /** Frees the session. */
  async release(): Promise<void> {
    await this.session.release();
  }
}
