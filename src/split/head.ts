import { nhwcToNchw } from '../runtime/core.js';
import { toFloat } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { DynnError } from '../util/errors.js';
import { SplitHead } from './runtime.js';
import { Shaper } from './shaper.js';
import { PointPicker } from './navisplit.js';
import type { SplitFigure } from './store.js';
import { sendFrame } from './client.js';

/** Options of `runHead`. */
export interface HeadOptions {
  /** The split directory. */
  dir: string;
  /** The tail server's base URL (`dynn serve DIR`). */
  server: string;
  /** Frames to send, one request each. */
  images: ImageSet;
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
  /** How many frames each bottleneck sent. */
  used: { channels: number; bits: number; frames: number }[];
  /** Each frame's predicted class. */
  classes: number[];
}

function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
}

/**
 * The device side run for real: each frame through `head.onnx`, encoded in the wire format, paced by the token
 * bucket and posted to the tail server. With a latency budget it learns the link from its own requests and picks
 * each frame's bottleneck as NaviSplit does (the first two frames probe the smallest and the largest).
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
    const points = meta.points;
    const best = points.reduce((a, p) => (p.accuracy > a.accuracy ? p : a));
    const fixed: SplitFigure | undefined = o.channels !== undefined ? { channels: o.channels, bits: o.bits!, bytesPerSample: 0, accuracy: 0 } : o.latencyBudgetMs === undefined ? best : undefined;
    const shaper = o.bandwidthMbps !== undefined ? new Shaper({ bandwidthMbps: o.bandwidthMbps, delayMs: o.delayMs }) : null;
    if (!shaper && o.delayMs !== undefined) throw new DynnError('--delay-ms shapes the link with --bandwidth-mbps; give both');
    const picker = new PointPicker(points, { fixed, latencyBudgetMs: o.latencyBudgetMs });
    const times: number[] = [];
    const classes: number[] = [];
    const used = new Map<string, { channels: number; bits: number; frames: number }>();
    let bytes = 0;
    let right = 0;
    for (let i = 0; i < o.images.count; i++) {
      const { point, bytes: sent, answer, totalMs } = await sendFrame({ head, picker, shaper, server: o.server, timeoutMs: o.timeoutMs }, nhwcToNchw(toFloat(o.images, i, 1), [c, h, w]));
      times.push(totalMs);
      bytes += sent;
      classes.push(answer.classes[0]);
      if (answer.classes[0] === o.images.labels[i]) right++;
      const key = `${point.channels}x${point.bits}`;
      const u = used.get(key) ?? { channels: point.channels, bits: point.bits, frames: 0 };
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
