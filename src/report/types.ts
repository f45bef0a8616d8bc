import type { TopLevelSpec } from 'vega-lite';
import type { TrainMeta } from '../train/run.js';
import type { SweepPoint } from '../eval/sweep.js';
import type { DynamicSweepData } from './dynamic.js';
import type { MixtureStats } from '../eval/mixtures.js';

/** A sweep of one run: accuracy, FLOPs and latency at fixed utilizations. */
export interface SweepData {
  /** The data set it was measured on. */
  dataset: string;
  points: SweepPoint[];
  /** Test samples evaluated, when known. */
  testSamples?: number;
  /** Gating used for the evaluation, when known. */
  gating?: string;
  /** Class names of the data set, when known. */
  classNames?: string[];
  /** The command line that produced it (or one that reproduces it). */
  command: string;
  /** Where it came from: a file beside the run, or measured by this report. */
  source: { kind: 'file'; path: string } | { kind: 'computed'; savedTo?: string };
  /** Routing statistics of a model with conditional convolutions (dynamic parameters), when measured. */
  routing?: MixtureStats;
}

/** The summary `dynn eval --controller ... --json` prints (ControllerReport); only the fields the report draws. */
export interface ControllerEvalData {
  /** A readable name: the eval file's suffix or the controller checkpoint's folder. */
  name: string;
  /** Which samples: 'validation split', or the eval file's name. */
  samples: string;
  /** The eval file it was read from (unset for a controller checkpoint's validation result). */
  file?: string;
  /** The registered controller evaluated (`oracle`, `cascade`, `bandit`, ...), when the file records it. */
  controller?: string;
  /** Data set, split (`test`, `val`) and sample count, when recorded (`dynn eval --json` writes them). */
  dataset?: string;
  split?: string;
  testSamples?: number;
  accuracy: number;
  meanU: number;
  meanFlopsRatio: number;
  uHistogram: Record<string, number>;
  fixed: { u: number; accuracy: number; flopsRatio: number }[];
  oracle: { accuracy: number; meanU: number; meanFlopsRatio: number; uHistogram?: Record<string, number>; curve?: { accuracy: number; flopsRatio: number }[] };
  command: string;
}

/** Learned gates of a run (a `dynn gates train` checkpoint): the active fraction per block at each u. */
export interface GatesData {
  name: string;
  dir: string;
  method?: string;
  pattern: { u: number; complexity: number; blocks: Record<string, number> }[];
  command: string;
}

/** Learned gates against nested fixed u on the same samples (`dynn gates eval RUN --gates DIR --json`). */
export interface GatesEvalData {
  /** The eval file's name suffix, e.g. `gates-eval-reinforce.json` gives "reinforce" ("gates" for `gates-eval.json`). */
  name: string;
  dataset: string;
  split: string;
  points: { u: number; complexity: number; flopsRatio: number; accuracy: number; nested: { accuracy: number; flopsRatio: number } }[];
  command: string;
}

/** An early-exit sweep (`dynn sweep RUN --thresholds ... --json`). */
export interface ExitData {
  dataset: string;
  /** Test samples, when the file records it. */
  testSamples?: number;
  rule: string;
  u: number;
  exitAccuracy: number[];
  baseline: { accuracy: number; flops: number };
  points: { threshold: number | number[]; accuracy: number; flops: number; flopsRatio: number; exitShares: number[] }[];
  command: string;
}

/** ONNX Runtime latency per exported level (`dynn profile RUN/model.onnx`). */
export interface OnnxLatencyData {
  path: string;
  batches: number[];
  threads: number;
  levels: { u: number; flopsRatio: number; latencyMs: Record<string, number> }[];
  command: string;
}

/** Everything the report knows about one run; absent data is null or an empty list, never invented. */
export interface RunData {
  /** The run directory as given. */
  dir: string;
  /** Short unique name used in legends. */
  name: string;
  model: string;
  modelArgs: Record<string, unknown>;
  meta: TrainMeta;
  /** How u was drawn in training ('uniform', 'curriculum', 'vanilla', ...). */
  schedule: string;
  gating: string;
  /** `dynn train` command line that reproduces the run. */
  trainCommand: string;
  sweep: SweepData | null;
  /** Why there is no sweep, when there is none. */
  sweepMissing?: string;
  /** The run has no network at a fixed u (a mixture of experts): no sweep over u can be made. */
  noFixedU?: boolean;
  /** A dynamic run's threshold sweep (`dynn sweep` of a run with gates), when beside it. */
  dynamic: DynamicSweepData | null;
  /** Why a dynamic run has no threshold sweep to draw (absent or malformed); unset for other runs. */
  dynamicMissing?: string;
  controllers: ControllerEvalData[];
  gates: GatesData[];
  gatesEvals: GatesEvalData[];
  exits: ExitData | null;
  onnxLatency: OnnxLatencyData | null;
}

/** A table of the numbers behind a chart. */
export interface DataTable {
  caption: string;
  head: string[];
  rows: (string | number)[][];
}

/** One chart: a Vega-Lite spec, rendered to inline SVG when the page is written. */
export interface Chart {
  /** Stable identifier (used as the figure's id). */
  id: string;
  title: string;
  spec: TopLevelSpec;
}

/** What a section draws. */
export interface SectionContent {
  charts: Chart[];
  tables: DataTable[];
  /** Command lines that produced the data. */
  commands: string[];
  /** What is partly missing (e.g. one run of several has no sweep). */
  notes: string[];
}

/** Whether a section can draw from the runs, and if not, what is missing and how to get it. */
export type Availability = { ok: true } | { ok: false; missing: string };

/** A chart section of the report: registered by name; each says when it can draw and draws. */
export interface ReportSection {
  name: string;
  title: string;
  /** One sentence: what the chart shows and why it matters. */
  description: string;
  available(runs: RunData[]): Availability;
  render(runs: RunData[]): SectionContent;
}
