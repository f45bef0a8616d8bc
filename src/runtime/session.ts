import { DynnError } from '../util/errors.js';
import { levelIndexFor, type OnnxMetadata } from '../export/metadata.js';

/**
 * What a session needs of a run of frames at one action (`ModelSession.step`'s `PlannedPrediction`; this
 * module does not import the core one, which builds sessions).
 */
export interface StepResult {
  scores: Float32Array;
  classes: Int32Array;
  /** The utilization that ran: the representative u of the action's exported level. */
  u: number;
  /** The network level that ran. */
  level: number;
  ms: number;
  /** The next action index of each frame (argmax of `controller_scores`). */
  next: Int32Array;
  /** The input resolution the frames ran at, for actions (u, r). */
  resolution?: number;
}

/** Runs frames at an action index and plans the next: `ModelSession.step`, in or out of a worker thread; `O` its run options. */
export type StepFn<O> = (frames: Float32Array, action: number, options: O | undefined) => Promise<StepResult>;

/** A frame whose class scores are not all finite: refused, the session's plan unchanged. */
export class NonFiniteScoresError extends DynnError {
  constructor(readonly scores: Float32Array) {
    super(`the model's scores for this frame are not finite (${scores.find((v) => !Number.isFinite(v))}); the session's plan is unchanged`);
  }
}

/** What `TemporalSession.next` answers for one frame. */
export interface SessionStep {
  /** The highest-scoring class. */
  class: number;
  /** Class scores (logits). */
  scores: Float32Array;
  /** The utilization the frame ran at: the representative u of the exported level of the controller's action (the first frame: the start action's). */
  u: number;
  /** The network level that ran. */
  level: number;
  /** The utilization the next frame will run at (its planned action's level's u). */
  nextU: number;
  /** Actions (u, r): the input resolution (height) the frame ran at, and the next frame's. */
  resolution?: number;
  nextResolution?: number;
  /** FLOPs of the frame over the network's at u = 1, the controller's decision included. */
  flopsRatio: number;
  /** Time inside ONNX Runtime, ms. */
  ms: number;
}

/** The temporal controller's part of a model's metadata; a DynnError for a model exported without one. */
export function temporalOf(meta: OnnxMetadata): { actions: number[]; start: number; flopsRatio: number; resolutions?: number[]; actionFlopsRatios?: number[] } {
  const c = meta.controller;
  if (!c?.temporal) {
    throw new DynnError(`this ${meta.model.model} model was exported without a temporal controller (dynn export RUN --onnx FILE --controller DIR, with a controller from \`dynn controller train --temporal\`)`);
  }
  const { resolutions, actionFlopsRatios } = c.temporal;
  return { actions: c.actions, start: c.temporal.start, flopsRatio: c.flopsRatio, ...(resolutions && { resolutions, actionFlopsRatios }) };
}

/**
 * One stream's state on a model exported with a temporal controller: the action planned for its next frame.
 * `next(frame)` runs the frame at that action and plans the one after in the same graph run (the controller
 * reads the frame's scores), so deciding costs no extra pass. A stream's first frame runs at the start action.
 * Calls on one session run in order, each frame planning the next.
 */
export class TemporalSession<O = object> {
  private action: number;
  private tail: Promise<unknown> = Promise.resolve();
  private readonly temporal: ReturnType<typeof temporalOf>;

  constructor(
    private readonly meta: OnnxMetadata,
    private readonly step: StepFn<O>,
  ) {
    this.temporal = temporalOf(meta);
    this.action = this.temporal.start;
  }

  /** The utilization the next frame will run at. */
  get plannedU(): number {
    return this.levelOf(this.action).u;
  }

  /** The input resolution the next frame will run at, for a controller over (u, r). */
  get plannedResolution(): number | undefined {
    return this.temporal.resolutions?.[this.action];
  }

  private levelOf(action: number) {
    return this.meta.levels[levelIndexFor(this.meta.levels, this.temporal.actions[action])];
  }

  /** Runs one frame (a Float32Array of one sample, NCHW unless `options.layout` says NHWC) at the planned u. */
  next(frame: Float32Array, options?: O): Promise<SessionStep> {
    const run = this.tail.then(() => this.advance(frame, options));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async advance(frame: Float32Array, options: O | undefined): Promise<SessionStep> {
    const per = this.meta.input.shape.reduce((a, b) => a * b, 1);
    if (!(frame instanceof Float32Array) || frame.length !== per) {
      throw new DynnError(`a session takes one frame of [${this.meta.input.shape}] (${per} values) at a time, got ${frame instanceof Float32Array ? `${frame.length} values` : 'no Float32Array'}`);
    }
    const { actions, flopsRatio, resolutions, actionFlopsRatios } = this.temporal;
    const ran = this.action;
    const p = await this.step(frame, ran, options);
    const next = p.next[0];
    // Non-finite scores make a meaningless plan: refuse the frame and keep the session's plan as it was.
    if (p.scores.some((v) => !Number.isFinite(v))) throw new NonFiniteScoresError(p.scores);
    if (!Number.isInteger(next) || next < 0 || next >= actions.length) throw new DynnError(`the controller planned action ${next}, not an index of its ${actions.length} actions`);
    this.action = next;
    const network = actionFlopsRatios ? actionFlopsRatios[ran] : this.levelOf(ran).flopsRatio;
    const at = resolutions && { resolution: resolutions[ran], nextResolution: resolutions[next] };
    return { class: p.classes[0], scores: p.scores, u: p.u, level: p.level, nextU: this.levelOf(next).u, ...at, flopsRatio: network + flopsRatio, ms: p.ms };
  }
}
