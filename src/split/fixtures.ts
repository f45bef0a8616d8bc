// Test support: a small split folder, trained in a few seconds.
import { createModel } from '../models/zoo.js';
import { loadSynthetic } from '../data/synthetic.js';
import type { Dataset } from '../data/types.js';
import { splitNetwork } from './split.js';
import { saveSplit } from './store.js';

/**
 * A vgg-w on the synthetic set split after pool2 (7x7 features), bottlenecks of 1, 2 and 4 channels at 2 and 4 bits,
 * saved in `dir` with the data set recorded. Call after `initEngine`. Returns the data it trained and measured on.
 */
export async function tinySplit(dir: string): Promise<Dataset> {
  const data = await loadSynthetic({ trainLimit: 128, testLimit: 24 });
  const model = createModel('vgg-w', { widths: [8, 8, 16, 16], hidden: 32, groups: 2 });
  try {
    const r = splitNetwork(model, data.train, data.test, { at: 'pool2', channels: [1, 2, 4], bits: [2, 4], batchSize: 32, pngSamples: 4 }, data.classNames);
    r.meta.dataset = 'synthetic';
    await saveSplit(dir, r.head, r.tail, r.meta);
    r.split.bottleneck.dispose();
  } finally {
    model.dispose();
  }
  return data;
}
