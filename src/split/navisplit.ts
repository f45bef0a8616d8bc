import { DynnError } from '../util/errors.js';
import { FRAME_HEADER_BYTES } from './wire.js';

/** What the head knows of its link: an estimate from the messages it sent. */
export interface LinkEstimate {
  /** Bytes per ms. */
  bytesPerMs: number;
  /** Fixed cost per message, ms (propagation, HTTP; the head's and tail's compute when they are not separated). */
  overheadMs: number;
}

/**
 * Learns the link from each message's size and time on the link, as NaviSplit's head does from its own traffic:
 * a least-squares line ms = overhead + bytes / rate over the last `window` messages. (The head observes a
 * frame's end-to-end time less its own head run and the tail's reported time, so split points of different
 * compute fit one line.)
 */
export class LinkMonitor {
  private samples: { bytes: number; ms: number }[] = [];
  private last: LinkEstimate | null = null;

  constructor(private readonly window = 32) {}

  observe(bytes: number, ms: number): void {
    this.samples.push({ bytes, ms });
    if (this.samples.length > this.window) this.samples.shift();
  }

  /**
   * The line over the window; null until two sizes were seen. When the window holds one size only (the steady
   * state once a point is chosen) the rate cannot be fitted: the last fitted rate is kept and only the fixed part
   * follows the window's mean.
   */
  estimate(): LinkEstimate | null {
    const n = this.samples.length;
    if (n < 2 && !this.last) return null;
    const mx = this.samples.reduce((a, s) => a + s.bytes, 0) / n;
    const my = this.samples.reduce((a, s) => a + s.ms, 0) / n;
    let sxx = 0;
    let sxy = 0;
    for (const s of this.samples) {
      sxx += (s.bytes - mx) ** 2;
      sxy += (s.bytes - mx) * (s.ms - my);
    }
    if (sxx === 0) {
      if (!this.last) return null;
      return { bytesPerMs: this.last.bytesPerMs, overheadMs: Math.max(0, my - mx / this.last.bytesPerMs) };
    }
    const slope = Math.max(sxy / sxx, 1e-9);
    this.last = { bytesPerMs: 1 / slope, overheadMs: Math.max(0, my - slope * mx) };
    return this.last;
  }
}


/** An operating point as the picker sees it: its split point, size on the wire and accuracy. */
export interface OperatingPoint {
  at?: string;
  channels: number;
  bits: number;
  bytesPerSample: number;
  accuracy: number;
}

/** A point's compute besides the link, ms: its split point's head on this device and tail on the server. */
export interface ComputeMs {
  headMs: number;
  tailMs: number;
}

const NO_COMPUTE: ComputeMs = { headMs: 0, tailMs: 0 };

/**
 * NaviSplit's latency estimate of one frame at a point: the head on this device, its bytes (and the frame header)
 * at the link's rate, the link's fixed part (delay, HTTP), and the tail. Without `compute` the link's fixed part is
 * taken to hold the head and tail too (one split point, whose compute does not change with the bottleneck).
 */
export function predictedMs(point: OperatingPoint, link: LinkEstimate, compute: ComputeMs = NO_COMPUTE, frameHeader = FRAME_HEADER_BYTES): number {
  return compute.headMs + link.overheadMs + (point.bytesPerSample + frameHeader) / link.bytesPerMs + compute.tailMs;
}

/**
 * NaviSplit's choice: the most accurate point whose predicted latency (`predictedMs`, with each point's compute
 * from `computeOf`) meets the budget; when none does, the fastest. Ties in accuracy go to the faster point.
 */
export function choosePoint<P extends OperatingPoint>(points: P[], link: LinkEstimate, budgetMs: number, computeOf: (p: P) => ComputeMs = () => NO_COMPUTE): P {
  if (points.length === 0) throw new DynnError('no bottleneck to choose from');
  const timed = points.map((p) => ({ p, ms: predictedMs(p, link, computeOf(p)) })).sort((a, b) => a.ms - b.ms || a.p.bytesPerSample - b.p.bytesPerSample);
  const fitting = timed.filter((t) => t.ms <= budgetMs);
  if (!fitting.length) return timed[0].p;
  return fitting.reduce((best, t) => (t.p.accuracy > best.p.accuracy ? t : best)).p;
}

/**
 * Each split point's compute as the head sees it: its own head runs timed on this device, the tail's times as the
 * server reports them. Each is the median of the last `window` times, so one run slowed by the machine's load
 * does not price a split point out of the choice for good (once not chosen, its times are not renewed).
 */
export class ComputeCosts {
  private readonly ms = new Map<string, number[]>();

  constructor(private readonly window = 9) {}

  /** A first time, used until one is observed. */
  seed(at: string, kind: keyof ComputeMs, ms: number): void {
    if (!this.ms.has(`${kind} ${at}`)) this.ms.set(`${kind} ${at}`, [ms]);
  }

  observe(at: string, kind: keyof ComputeMs, ms: number): void {
    const times = this.ms.get(`${kind} ${at}`) ?? [];
    times.push(ms);
    if (times.length > this.window) times.shift();
    this.ms.set(`${kind} ${at}`, times);
  }

  /** The split point's compute (0 for what was never seen). */
  of(at: string): ComputeMs {
    const median = (xs: number[] | undefined) => (xs?.length ? [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)] : 0);
    return { headMs: median(this.ms.get(`headMs ${at}`)), tailMs: median(this.ms.get(`tailMs ${at}`)) };
  }
}

/**
 * Each frame's (split point, bottleneck) for a head: a fixed one, or NaviSplit's within a latency budget. With a
 * budget the first frames probe the smallest and the largest message in turn until the monitor has a line, then
 * each frame takes `choosePoint` over what the monitor learned from the frames before, with each split point's
 * compute from `costs`. `dynn head` and the browser's head page both pick with this.
 */
export class PointPicker<P extends OperatingPoint = OperatingPoint> {
  readonly monitor = new LinkMonitor();
  readonly costs = new ComputeCosts();
  private readonly bySize: P[];
  private frames = 0;

  constructor(
    readonly points: P[],
    private readonly o: { fixed?: P; latencyBudgetMs?: number },
  ) {
    if (points.length === 0) throw new DynnError('no bottleneck to choose from');
    if (!o.fixed && o.latencyBudgetMs === undefined) throw new DynnError('give a fixed bottleneck or a latency budget');
    this.bySize = [...points].sort((a, b) => a.bytesPerSample - b.bytesPerSample);
  }

  /** The next frame's point. */
  next(): P {
    const i = this.frames++;
    if (this.o.fixed) return this.o.fixed;
    const link = this.monitor.estimate();
    return link ? choosePoint(this.points, link, this.o.latencyBudgetMs!, (p) => this.costs.of(p.at ?? '')) : this.bySize[i % 2 === 0 ? 0 : this.bySize.length - 1];
  }

  /**
   * What a frame at `point` cost: its bytes, the head's run and encoding on this device, the tail's reported time
   * (0 when the server gives none) and the whole frame. The link's line is fitted on the whole less the compute at
   * both ends, which differs by split point; the compute goes to `costs`.
   */
  observe(point: P, bytes: number, ms: { headMs: number; tailMs: number; totalMs: number }): void {
    const at = point.at ?? '';
    this.costs.observe(at, 'headMs', ms.headMs);
    this.costs.observe(at, 'tailMs', ms.tailMs);
    this.monitor.observe(bytes, Math.max(0, ms.totalMs - ms.headMs - ms.tailMs));
  }
}
