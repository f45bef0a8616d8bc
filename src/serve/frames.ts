import type { OnnxMetadata } from '../export/metadata.js';
import type { StepFn, StepResult } from '../runtime/session.js';
import { argmaxRows } from '../runtime/core.js';
import { arrayRows, partition, rowsOf } from '../route/dispatch.js';
import { DynnError } from '../util/errors.js';
import type { RunRecord } from './batcher.js';

/**
 * The frames of every open session, batched across sessions: a frame waits while this batcher's previous
 * batch runs, and then every waiting frame (up to `maxBatch`) runs at once, split by the action its session
 * planned (`partition`, the routing primitive: one graph run per action present). N streams then cost one
 * run per distinct action, not N runs of one frame. Each action's frames are answered as soon as their own
 * run ends, and a failed run fails only its own frames. Sessions built on `step` (`new
 * TemporalSession(meta, frames.step)`) keep their own order and plans; only the runs are shared.
 */
export class FrameBatcher {
  private readonly waiting: { frame: Float32Array; action: number; done: (r: StepResult) => void; fail: (err: unknown) => void }[] = [];
  private running = false;
  private count = 0;

  /** @param onRun called after every run, as `MicroBatcher`'s (for the server's metrics). */
  constructor(
    private readonly run: StepFn<undefined>,
    private readonly meta: OnnxMetadata,
    private readonly maxBatch: number,
    private readonly onRun?: (r: RunRecord) => void,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new DynnError(`max batch must be a positive integer, got ${maxBatch}`);
  }

  /** Graph runs so far (one per action present in each batch). */
  get runs(): number {
    return this.count;
  }

  /** One session's frame (NCHW) at its planned action, answered from the next batch (a session's `StepFn`). */
  readonly step: StepFn<undefined> = (frame, action) =>
    new Promise<StepResult>((done, fail) => {
      this.waiting.push({ frame, action, done, fail });
      void this.pump();
    });

  private async pump(): Promise<void> {
    if (this.running || this.waiting.length === 0) return;
    this.running = true;
    const batch = this.waiting.splice(0, this.maxBatch);
    const rows = arrayRows(this.meta.input.shape.reduce((a, b) => a * b, 1));
    const x = rows.concat(batch.map((b) => b.frame));
    const C = this.meta.numClasses;
    for (const g of partition(batch.map((b) => b.action)).groups) {
      const t0 = performance.now();
      try {
        const r = await this.run(rowsOf(rows, x, g.rows), g.route, undefined);
        this.count++;
        this.onRun?.({ level: this.meta.levels.findIndex((l) => l.level === r.level), u: r.u, batch: g.rows.length, runMs: r.ms, wallMs: performance.now() - t0 });
        g.rows.forEach((row, j) => {
          const own = r.scores.slice(j * C, (j + 1) * C);
          batch[row].done({ scores: own, classes: argmaxRows(own, C), u: r.u, level: r.level, ms: r.ms, next: Int32Array.of(r.next[j]), ...(r.resolution !== undefined && { resolution: r.resolution }) });
        });
      } catch (err) {
        for (const row of g.rows) batch[row].fail(err);
      }
    }
    this.running = false;
    void this.pump();
  }
}
