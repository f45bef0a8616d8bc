import { z } from 'zod';
import { nhwcToNchw } from '../runtime/core.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { DynnError } from '../util/errors.js';
import { SplitHead, splitIndex } from './runtime.js';
import { Shaper } from './shaper.js';
import { choosePoint, ComputeCosts, LinkMonitor } from './navisplit.js';
import { encodeFrame, frameSamples } from './wire.js';
import type { SplitFigure } from './store.js';
import type { TailResponse } from './server.js';

/** Options of `runHead`. */
export interface HeadOptions {
  /** The split directory. */
  dir: string;
  /** The tail server's base URL (`dynn serve DIR`). */
  server: string;
  /** Frames to send, one request each. */
  images: ImageSet;
  /** Only this split point's bottlenecks (default: every split point of the folder). */
  at?: string;
  /** A fixed bottleneck (default: the most accurate trained point, or the budget's choice). */
  channels?: number;
  bits?: number;
  /** Shape the uplink: rate (Mbit/s) and one-way delay (ms); unset: as fast as loopback goes. */
  bandwidthMbps?: number;
  delayMs?: number;
  /** NaviSplit: choose each frame's bottleneck to meet this end-to-end budget (ms) at the best accuracy. */
  latencyBudgetMs?: number;
  /** ONNX Runtime threads of the head (default 1). */
  threads?: number;
  /** Most time to wait for the tail's answer to one frame, ms (default 10000). */
  timeoutMs?: number;
}

/** What a head run measured. */
export interface HeadReport {
  samples: number;
  accuracy: number;
  /** End-to-end latency per frame, ms: head compute, encoding, the shaped link, HTTP and the tail. */
  meanMs: number;
  p50Ms: number;
  p95Ms: number;
  /** Mean bytes per request body. */
  meanBytes: number;
  /** How many frames each (split point, bottleneck) sent. */
  used: { at: string; channels: number; bits: number; frames: number }[];
  /** Each frame's predicted class. */
  classes: number[];
}

/** Default time a head waits for the tail's answer to one frame, ms. */
export const DEFAULT_TAIL_TIMEOUT_MS = 10_000;

const tailAnswer = (count: number) =>
  z.object({
    classes: z.array(z.number().int().nonnegative()).length(count),
    labels: z.array(z.string()).length(count),
    scores: z.array(z.array(z.number())).length(count),
    tailMs: z.number().nonnegative().optional(),
  });

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
  const parsed = tailAnswer(count).safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new DynnError(`the tail server at ${url} answered ${res.status} but not with the tail's answer for ${count} sample(s): ${issue.path.join('.') || 'the body'}: ${issue.message}`);
  }
  return parsed.data;
}

function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
}

/**
 * The device side run for real: each frame through its split point's head graph, encoded in the wire format,
 * paced by the token bucket and posted to the tail server. With a latency budget it learns the link from its own
 * requests and picks each frame's (split point, bottleneck) as NaviSplit does: the first two frames probe the
 * smallest and the largest message; each split point's head time is measured on this device (a warm-up run, then
 * every frame) and its tail time is what the server reports.
 */
export async function runHead(o: HeadOptions): Promise<HeadReport> {
  const head = await SplitHead.load(o.dir, { threads: o.threads });
  try {
    const meta = head.meta;
    const [c, h, w] = meta.input.shape;
    if (o.images.channels !== c || o.images.height !== h || o.images.width !== w) {
      throw new DynnError(`the frames are ${o.images.height}x${o.images.width}x${o.images.channels}; the head takes ${h}x${w}x${c}`);
    }
    if ((o.channels === undefined) !== (o.bits === undefined)) throw new DynnError('give both --channels and --bits, or neither');
    if (o.channels !== undefined && o.latencyBudgetMs !== undefined) throw new DynnError('a fixed bottleneck (--channels, --bits) and a latency budget exclude each other');
    const at = o.at ?? (o.channels !== undefined && meta.splits.length === 1 ? meta.splits[0].at : undefined);
    if (o.channels !== undefined && at === undefined) {
      throw new DynnError(`this split has ${meta.splits.length} split points (${meta.splits.map((s) => s.at).join(', ')}); give --at with --channels and --bits`);
    }
    if (at !== undefined) splitIndex(meta, at);
    const points = meta.points.filter((p) => at === undefined || p.at === at);
    const best = points.reduce((a, p) => (p.accuracy > a.accuracy ? p : a));
    const fixed: SplitFigure | null = o.channels !== undefined ? { at: at!, channels: o.channels, bits: o.bits!, bytesPerSample: 0, accuracy: 0 } : o.latencyBudgetMs === undefined ? best : null;
    const bySize = [...points].sort((a, b) => a.bytesPerSample - b.bytesPerSample);
    const shaper = o.bandwidthMbps !== undefined ? new Shaper({ bandwidthMbps: o.bandwidthMbps, delayMs: o.delayMs }) : null;
    if (!shaper && o.delayMs !== undefined) throw new DynnError('--delay-ms shapes the link with --bandwidth-mbps; give both');
    const pixels = (i: number) => nhwcToNchw(toFloat(o.images, i, 1), [c, h, w]);
    const monitor = new LinkMonitor();
    const costs = new ComputeCosts();
    if (!fixed && o.images.count > 0) {
      for (const [i, s] of meta.splits.entries()) {
        if (!points.some((p) => p.at === s.at)) continue;
        // The second run of each head: the first allocates.
        let ms = 0;
        for (let k = 0; k < 2; k++) {
          const t = performance.now();
          await head.run(pixels(0), 1, s.bottleneck.maxChannels, 8, i);
          ms = performance.now() - t;
        }
        costs.seed(s.at, 'headMs', ms);
        if (s.measured) costs.seed(s.at, 'tailMs', s.measured.tailMs);
      }
    }
    const times: number[] = [];
    const classes: number[] = [];
    const used = new Map<string, { at: string; channels: number; bits: number; frames: number }>();
    let bytes = 0;
    let right = 0;
    for (let i = 0; i < o.images.count; i++) {
      const t0 = performance.now();
      let point = fixed;
      if (!point) {
        const link = monitor.estimate();
        point = link ? choosePoint(points, link, o.latencyBudgetMs!, (p) => costs.of(p.at)) : bySize[i % 2 === 0 ? 0 : bySize.length - 1];
      }
      const frame = await head.run(pixels(i), 1, point.channels, point.bits, splitIndex(meta, point.at));
      const body = encodeFrame(frame);
      const t1 = performance.now();
      if (shaper) await shaper.send(body.length);
      const answer = await postFrame(o.server, body, { timeoutMs: o.timeoutMs });
      const t2 = performance.now();
      // The link's line is fitted on the frame's time less the compute at both ends, which differs by split point.
      const tailMs = answer.tailMs ?? 0;
      costs.observe(point.at, 'headMs', t1 - t0);
      costs.observe(point.at, 'tailMs', tailMs);
      monitor.observe(body.length, Math.max(0, t2 - t1 - tailMs));
      times.push(t2 - t0);
      bytes += body.length;
      classes.push(answer.classes[0]);
      if (answer.classes[0] === o.images.labels[i]) right++;
      const key = `${point.at} ${point.channels}x${point.bits}`;
      const u = used.get(key) ?? { at: point.at, channels: point.channels, bits: point.bits, frames: 0 };
      u.frames++;
      used.set(key, u);
    }
    const n = o.images.count;
    const sorted = [...times].sort((a, b) => a - b);
    return {
      samples: n,
      accuracy: n ? right / n : 0,
      meanMs: n ? times.reduce((a, b) => a + b, 0) / n : 0,
      p50Ms: quantile(sorted, 0.5),
      p95Ms: quantile(sorted, 0.95),
      meanBytes: n ? bytes / n : 0,
      used: [...used.values()],
      classes,
    };
  } finally {
    await head.release();
  }
}
