import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { checkGraphNames, GRAPH_IO, HeadSession, TailSession, type SplitOrt } from './core.js';
import { HEAD_FILE, loadSplitMeta, TAIL_FILE, type SplitMeta } from './store.js';
import type { FrameLimits } from './wire.js';

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
  return ((ort as unknown as { default?: Ort }).default ?? ort) as Ort;
}

/** The device side in onnxruntime-node: images to quantized features (`head.onnx`). */
export class SplitHead extends HeadSession {
  declare readonly meta: SplitMeta;

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitHead> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitHead(ort as unknown as SplitOrt, await open(ort, path.join(dir, HEAD_FILE), options, 'head'), meta);
  }
}

/** The server side in onnxruntime-node: quantized features to class scores (`tail.onnx`). */
export class SplitTail extends TailSession {
  private constructor(
    ort: SplitOrt,
    session: InferenceSession,
    readonly meta: SplitMeta,
  ) {
    super(ort, session);
  }

  static async load(dir: string, options: SplitSessionOptions = {}): Promise<SplitTail> {
    const meta = await loadSplitMeta(dir);
    const ort = await loadOrt();
    return new SplitTail(ort as unknown as SplitOrt, await open(ort, path.join(dir, TAIL_FILE), options, 'tail'), meta);
  }

  /** What a frame must match to be decoded for this tail. */
  get limits(): FrameLimits {
    const [, h, w] = this.meta.features.shape;
    return { height: h, width: w, maxChannels: this.meta.bottleneck.maxChannels };
  }
}
