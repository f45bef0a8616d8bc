import { Registry } from '../util/registry.js';
import { loadCifar10 } from './cifar10.js';
import { loadFashionMnist } from './fashion-mnist.js';
import { loadMnist } from './mnist.js';
import { loadFashionMnistDistorted, loadFashionMnistStream } from './stream.js';
import { loadSynthetic } from './synthetic.js';
import type { Dataset, LoadOptions } from './types.js';

/** A data set loader: resolves to the whole set, trimmed to `trainLimit` / `testLimit` when given. */
export type DatasetLoader = (opts: LoadOptions) => Promise<Dataset>;

/**
 * Every data set dynn knows, by name: `cifar10`, `fashion-mnist`, `fashion-mnist-stream` (sequences of frames made
 * from Fashion-MNIST, `data/stream.ts`), `fashion-mnist-distorted` (its frames drawn independently), `mnist` (the embedded default), `synthetic`.
 */
export const datasets = new Registry<DatasetLoader>('dataset');
datasets.register('mnist', loadMnist);
datasets.register('fashion-mnist', loadFashionMnist);
datasets.register('fashion-mnist-stream', loadFashionMnistStream);
datasets.register('fashion-mnist-distorted', loadFashionMnistDistorted);
datasets.register('cifar10', loadCifar10);
datasets.register('synthetic', loadSynthetic);

/** The data set used when none is named. */
export const DEFAULT_DATASET = 'mnist';

/** Loads a data set by name; an unknown name is a DynnError listing the known ones. */
export async function loadDataset(name: string, opts: LoadOptions = {}): Promise<Dataset> {
  return datasets.get(name)(opts);
}
