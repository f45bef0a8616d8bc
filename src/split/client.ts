/**
 * The head's side of a split: one frame's bottleneck picked, its features computed and encoded, paced by the
 * shaped link, sent to `POST /v1/tail` and the answer checked. No node modules here: `dynn head` and the
 * browser's head page send frames with this same code.
 */
import { DynnError } from '../util/errors.js';
import type { PointPicker } from './navisplit.js';
import type { Shaper } from './shaper.js';
import type { SplitFigure } from './store.js';
import { encodeFrame, frameSamples, type FeatureFrame } from './wire.js';

/** The tail's answer to a frame. */
export interface TailResponse {
  /** The predicted class of each sample. */
  classes: number[];
  labels: string[];
  /** Class scores (logits), one row per sample. */
  scores: number[][];
  /** The tail's own time for the frame, ms: decoding, tail.onnx and the answer's scores (not the HTTP). */
  timings?: { tailMs: number };
}

/** Default time a head waits for the tail's answer to one frame, ms. */
export const DEFAULT_TAIL_TIMEOUT_MS = 10_000;

/** Why `json` is not the tail's answer for `count` samples (a field and what it should be), or null when it is. */
function answerProblem(json: unknown, count: number): string | null {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return 'the body: expected an object';
  const o = json as Record<string, unknown>;
  const rows = (key: string, what: string, ok: (v: unknown) => boolean): string | null => {
    const v = o[key];
    if (!Array.isArray(v) || v.length !== count) return `${key}: expected an array of ${count} ${what}`;
    const bad = v.findIndex((x) => !ok(x));
    return bad < 0 ? null : `${key}.${bad}: expected ${what.replace(/s$/, '')}`;
  };
  const timings = o.timings as Record<string, unknown> | undefined;
  return (
    rows('classes', 'non-negative integers', (x) => Number.isInteger(x) && (x as number) >= 0) ??
    rows('labels', 'strings', (x) => typeof x === 'string') ??
    rows('scores', 'arrays of numbers', (x) => Array.isArray(x) && x.every((y) => typeof y === 'number')) ??
    (timings !== undefined && (typeof timings !== 'object' || timings === null || typeof timings.tailMs !== 'number') ? 'timings.tailMs: expected a number' : null)
  );
}

/**
 * Sends one frame to the tail (`v1/tail` under the server's URL, so a path prefix survives) and checks its answer:
 * one class per sample. An unreachable, slow (`timeoutMs`, default 10 s) or refusing server, or an answer that is
 * not the tail's JSON, is a DynnError naming the server.
 */
export async function postFrame(server: string, body: Uint8Array, o: { timeoutMs?: number } = {}): Promise<TailResponse> {
  const url = new URL('v1/tail', server.endsWith('/') ? server : `${server}/`);
  const timeoutMs = o.timeoutMs ?? DEFAULT_TAIL_TIMEOUT_MS;
  const count = frameSamples(body);
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: new Blob([body as Uint8Array<ArrayBuffer>]),
      signal: AbortSignal.timeout(timeoutMs),
    });
    text = await res.text();
  } catch (err) {
    const e = err as Error;
    if (e.name === 'TimeoutError') throw new DynnError(`the tail server at ${url} did not answer within ${timeoutMs} ms (--timeout-ms)`);
    throw new DynnError(`cannot reach the tail server at ${url}: ${e.cause instanceof Error ? e.cause.message : e.message}`);
  }
  if (!res.ok) throw new DynnError(`the tail server at ${url} answered ${res.status}: ${text.slice(0, 500)}`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new DynnError(`the tail server at ${url} answered ${res.status} with something that is not JSON: ${JSON.stringify(text.slice(0, 200))}`);
  }
  const problem = answerProblem(json, count);
  if (problem) throw new DynnError(`the tail server at ${url} answered ${res.status} but not with the tail's answer for ${count} sample(s): ${problem}`);
  return json as TailResponse;
}

/** Where one frame went and what it cost. */
export interface SentFrame {
  /** The bottleneck it was sent through. */
  point: SplitFigure;
  /** Bytes of the request body (the frame). */
  bytes: number;
  answer: TailResponse;
  /** Wall time, ms: the head's run and the encoding; the shaped link's wait; the request until its answer (HTTP and the tail); all. */
  headMs: number;
  linkMs: number;
  requestMs: number;
  totalMs: number;
}

/** What `sendFrame` runs: a head graph per split point (`HeadSession`, or `SplitHead` with all of a folder's). */
export interface FrameHead {
  meta: { input: { shape: number[] } };
  /** Features of `count` images through split point `split` (its id on the wire). */
  run(images: Float32Array, count: number, channels: number, bits: number, split?: number): Promise<FeatureFrame>;
}

/**
 * The device side of one frame: `images` (NCHW float32 in [0, 1], one or more samples) through the picked point's
 * split point and bottleneck to the tail. `splitOf` gives a point's split id (default: 0, a head of one split point).
 */
export async function sendFrame(
  o: { head: FrameHead; picker: PointPicker<SplitFigure>; shaper?: Shaper | null; server: string; timeoutMs?: number; splitOf?: (p: SplitFigure) => number },
  images: Float32Array,
): Promise<SentFrame> {
  const [c, h, w] = o.head.meta.input.shape;
  const t0 = performance.now();
  const point = o.picker.next();
  const body = encodeFrame(await o.head.run(images, images.length / (c * h * w), point.channels, point.bits, o.splitOf?.(point) ?? 0));
  const t1 = performance.now();
  if (o.shaper) await o.shaper.send(body.length);
  const t2 = performance.now();
  const answer = await postFrame(o.server, body, { timeoutMs: o.timeoutMs });
  const t3 = performance.now();
  // The tail's own time, as the server says, within what the request took (a wrong figure cannot price the link at 0).
  const tailMs = Math.min(Math.max(answer.timings?.tailMs ?? 0, 0), t3 - t2);
  o.picker.observe(point, body.length, { headMs: t1 - t0, tailMs, totalMs: t3 - t0 });
  return { point, bytes: body.length, answer, headMs: t1 - t0, linkMs: t2 - t1, requestMs: t3 - t2, totalMs: t3 - t0 };
}
