import { loadCheckpoint, saveCheckpoint } from '../checkpoint/checkpoint.js';
import { loadDataset } from '../data/datasets.js';
import { head } from '../data/imageset.js';
import { checkUtilization, type GatingMode } from '../gating/gating.js';
import { createModel } from '../models/zoo.js';
import { calibrateBatchNorm } from '../train/calibrate.js';
import { checkDynamicMatch, type TrainMeta } from '../train/run.js';
import { DynnError } from '../util/errors.js';

export interface CalibrateRunOptions {
  /** Utilizations whose BatchNorm statistics are recomputed (their levels' rows; nothing else changes). */
  us: number[];
  /** Data set whose training split is used (default: the run's). */
  dataset?: string;
  /** Where the data set's files are. */
  dataDir?: string;
  /** Training samples per utilization (default 2048). */
  samples?: number;
  /** Gating of the calibrated plans (default 'nested'). */
  gating?: GatingMode;
  /** Seed of independent gating's choices (default: the run's seed). */
  seed?: number;
}

/** What a calibration changed. */
export interface CalibrateRunResult {
  /** The BatchNorm statistic row (operating level) of each requested utilization. */
  levels: number[];
  /** (layer, level) statistic rows rewritten. */
  rows: number;
  /** The data set whose training split was used. */
  dataset: string;
  /** Samples run per utilization. */
  samples: number;
}

/**
 * Recomputes the BatchNorm statistics of a checkpoint for exactly the requested widths (US-Nets'
 * post-training calibration) from its training split (without the held-out validation samples), and saves
 * the checkpoint atomically with the optimizer state kept and the calibration recorded in its metadata.
 */
export async function calibrateRun(dir: string, options: CalibrateRunOptions): Promise<CalibrateRunResult> {
  if (!options.us.length) throw new DynnError('calibration needs at least one utilization');
  options.us.forEach(checkUtilization);
  const ckpt = await loadCheckpoint(dir);
  const meta = ckpt.meta as unknown as TrainMeta;
  const model = createModel(ckpt.config.model, ckpt.config.args);
  try {
    checkDynamicMatch(dir, ckpt, model);
    if (model.gated) {
      // Its gated units' rows are per-route statistics, gathered at the gates' threshold after every epoch.
      throw new DynnError(`${dir} is a dynamic model (${String(ckpt.config.args.dynamic)} gates): its BatchNorm rows hold statistics per route, which calibrating at fixed widths would overwrite`);
    }
    model.setWeights(ckpt.weights);
    const dataset = options.dataset ?? meta.dataset;
    if (!dataset) throw new DynnError(`${dir} records no data set; pass one`);
    const sameData = dataset === meta.dataset;
    const trainLimit = sameData ? (meta.options?.trainLimit as number | undefined) : undefined;
    const data = await loadDataset(dataset, { dataDir: options.dataDir, trainLimit, seed: meta.seed });
    const { height, width, channels } = data.train;
    if ([height, width, channels].join() !== model.inputShape.join()) {
      throw new DynnError(`data set ${dataset} has ${height}x${width}x${channels} images; the model takes ${model.inputShape.join('x')}`);
    }
    const held = sameData ? (meta.validationSamples ?? 0) : 0;
    const train = head(data.train, data.train.count - held);
    const samples = Math.min(options.samples ?? 2048, train.count);
    const rows = calibrateBatchNorm(model, train, { us: options.us, samples, gating: options.gating, seed: options.seed ?? meta.seed });
    const levels = options.us.map((u) => model.levelOf(u));
    const record = { us: options.us, levels, dataset, samples };
    const previous = Array.isArray(ckpt.meta.calibrations) ? ckpt.meta.calibrations : [];
    await saveCheckpoint(dir, {
      config: ckpt.config,
      weights: model.getWeights(),
      optimizer: ckpt.optimizer,
      meta: { ...ckpt.meta, calibrations: [...previous, record] },
    });
    return { levels, rows, dataset, samples };
  } finally {
    model.dispose();
  }
}
