import { DynnError } from '../util/errors.js';
import type { SplitFigure } from './store.js';

/** What the head knows of its link: an estimate from the messages it sent. */
export interface LinkEstimate {
  /** Bytes per ms. */
  bytesPerMs: number;
  /** Fixed cost per message, ms (the head's compute, propagation, HTTP and the tail's compute). */
  overheadMs: number;
}

/**
 * Learns the link from each message's size and end-to-end time, as NaviSplit's head does from its own traffic:
 * a least-squares line ms = overhead + bytes / rate over the last `window` messages.
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

/** Predicted latency of a point over a link: the fixed part plus its bytes (and the frame header) at the rate. */
export function predictedMs(point: SplitFigure, link: LinkEstimate, frameHeader = 16): number {
  return link.overheadMs + (point.bytesPerSample + frameHeader) / link.bytesPerMs;
}

/**
 * NaviSplit's choice: the most accurate bottleneck whose predicted latency meets the budget; when none does,
 * the fastest (smallest) one. Ties in accuracy go to the smaller message.
 */
export function choosePoint(points: SplitFigure[], link: LinkEstimate, budgetMs: number): SplitFigure {
  if (points.length === 0) throw new DynnError('no bottleneck to choose from');
  const bySize = [...points].sort((a, b) => a.bytesPerSample - b.bytesPerSample);
  const fitting = bySize.filter((p) => predictedMs(p, link) <= budgetMs);
  if (!fitting.length) return bySize[0];
  return fitting.reduce((best, p) => (p.accuracy > best.accuracy ? p : best));
}

/**
 * Each frame's bottleneck for a head: a fixed one, or NaviSplit's within a latency budget. With a budget the first
 * frames probe the smallest and the largest point in turn until the monitor has a line, then each frame takes
 * `choosePoint` over what the monitor learned from the frames before. `dynn head` and the browser's head page
 * both pick with this.
 */
export class PointPicker {
  readonly monitor = new LinkMonitor();
  private readonly bySize: SplitFigure[];
  private frames = 0;

  constructor(
    readonly points: SplitFigure[],
    private readonly o: { fixed?: SplitFigure; latencyBudgetMs?: number },
  ) {
    if (points.length === 0) throw new DynnError('no bottleneck to choose from');
    if (!o.fixed && o.latencyBudgetMs === undefined) throw new DynnError('give a fixed bottleneck or a latency budget');
    this.bySize = [...points].sort((a, b) => a.bytesPerSample - b.bytesPerSample);
  }

  /** The next frame's point. */
  next(): SplitFigure {
    const i = this.frames++;
    if (this.o.fixed) return this.o.fixed;
    const link = this.monitor.estimate();
    return link ? choosePoint(this.points, link, this.o.latencyBudgetMs!) : this.bySize[i % 2 === 0 ? 0 : this.bySize.length - 1];
  }

  /**
   * What a frame cost end to end. The budget is end to end, so the monitor learns from the whole frame: the head's
   * run and encoding land in the fixed part of its line (the encoding's share that grows with the bytes, in the rate).
   */
  observe(bytes: number, ms: number): void {
    this.monitor.observe(bytes, ms);
  }
}
