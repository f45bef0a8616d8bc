import { DynnError } from '../util/errors.js';

/** Options of a link shaper. */
export interface ShaperOptions {
  /** Link rate, Mbit/s (10^6 bits per second). */
  bandwidthMbps: number;
  /** One-way propagation delay added to every message, ms (default 0). */
  delayMs?: number;
  /**
   * Bucket size, bytes: what may leave at once after the link was idle. Default 0: every message pays its
   * serialization time (bytes / rate), as on a link of that rate; a bucket lets small messages pass unpaced, as
   * a rate limiter does, which would hide the difference between a 37-byte and a 784-byte message.
   */
  burstBytes?: number;
}

/**
 * A token bucket on the sender: tokens (bytes) refill at the link rate up to the bucket size; a message waits
 * until the bucket has paid for it (its debt carries over to the next message, so back-to-back messages share
 * the rate), then the propagation delay. What the head's sender sees of a link of that bandwidth and delay.
 */
export class Shaper {
  private tokens: number;
  private last = performance.now();
  readonly bytesPerMs: number;
  readonly delayMs: number;
  readonly burstBytes: number;

  constructor(o: ShaperOptions) {
    if (!(o.bandwidthMbps > 0 && Number.isFinite(o.bandwidthMbps))) throw new DynnError(`the bandwidth must be a positive number of Mbit/s, got ${o.bandwidthMbps}`);
    const delay = o.delayMs ?? 0;
    if (!(delay >= 0 && Number.isFinite(delay))) throw new DynnError(`the delay must be a number of ms >= 0, got ${delay}`);
    this.bytesPerMs = (o.bandwidthMbps * 1e6) / 8 / 1000;
    this.delayMs = delay;
    this.burstBytes = o.burstBytes ?? 0;
    if (!(this.burstBytes >= 0 && Number.isFinite(this.burstBytes))) throw new DynnError(`the bucket size must be a number of bytes >= 0, got ${this.burstBytes}`);
    this.tokens = this.burstBytes;
  }

  /** How long a message of `bytes` waits now (ms), and takes its tokens. */
  take(bytes: number, now = performance.now()): number {
    this.tokens = Math.min(this.burstBytes, this.tokens + (now - this.last) * this.bytesPerMs);
    this.last = now;
    this.tokens -= bytes;
    return (this.tokens < 0 ? -this.tokens / this.bytesPerMs : 0) + this.delayMs;
  }

  /** Waits as the link would before `bytes` have arrived. */
  async send(bytes: number): Promise<void> {
    const until = performance.now() + this.take(bytes);
    // Timers count whole ms (node and browsers drop the fraction; node waits 1 ms for less): sleep the whole ms and
    // spin the rest, so 37 bytes at 100 Mbit/s wait their 3 µs and 122 bytes at 1 Mbit/s their 0.976 ms. A plain
    // timer, so the page's head shapes its link with this same bucket.
    const whole = Math.floor(until - performance.now());
    if (whole >= 1) await new Promise((resolve) => setTimeout(resolve, whole));
    while (performance.now() < until);
  }
}
