// Test support: a small split folder, trained in a few seconds.
import { createModel } from '../models/zoo.js';
import { loadSynthetic } from '../data/synthetic.js';
import type { Dataset } from '../data/types.js';
import { splitNetwork, type TrainedSplit } from './split.js';
import { saveSplit } from './store.js';
import { measureSplit } from './runtime.js';

/**
 * A vgg-w on the synthetic set split after `at` (default pool2, 7x7 features; pool1 has 14x14), bottlenecks of 1,
 * 2 and 4 channels at 2 and 4 bits, saved in `dir` with the data set recorded. `inspect` sees the trained split
 * before its bottlenecks are freed. Call after `initEngine`. Returns the data it trained and measured on.
 */
export async function tinySplit(dir: string, o: { at?: string | string[]; inspect?: (r: TrainedSplit, data: Dataset) => void } = {}): Promise<Dataset> {
  const data = await loadSynthetic({ trainLimit: 128, testLimit: 24 });
  const model = createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, groups: 2 });
  try {
    const r = splitNetwork(model, data.train, data.test, { at: o.at ?? 'pool2', channels: [1, 2, 4], bits: [2, 4], batchSize: 32, pngSamples: 4 }, data.classNames);
    try {
      r.meta.dataset = 'synthetic';
      await measureSplit(r);
      await saveSplit(dir, r.splits, r.meta);
      o.inspect?.(r, data);
    } finally {
      r.dispose();
    }
  } finally {
    model.dispose();
  }
  return data;
}
