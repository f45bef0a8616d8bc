export type { Dataset, ImageSet, LoadOptions } from './types.js';
export { allocShared, head, sampleSize, subset, tail, toFloat } from './imageset.js';
export { datasets, DEFAULT_DATASET, loadDataset, type DatasetLoader } from './datasets.js';
export { loadMnist, MNIST_TRAIN_FRACTION } from './mnist.js';
export { FASHION_MNIST_CLASSES, FASHION_MNIST_SYSTEM_DIR, loadFashionMnist } from './fashion-mnist.js';
export { difficultyOf, loadFashionMnistDistorted, loadFashionMnistStream, makeStream, STREAM_DEFAULTS, STREAM_RANGES, STREAM_SEED, type Stream, type StreamOptions } from './stream.js';
export { CIFAR10_CLASSES, loadCifar10 } from './cifar10.js';
export { loadSynthetic, makeSynthetic, SYNTHETIC_DEFAULTS, type SyntheticOptions } from './synthetic.js';
export {
  IDX_IMAGES_MAGIC,
  IDX_LABELS_MAGIC,
  loadIdxPair,
  parseIdxImages,
  parseIdxLabels,
  readMaybeGzip,
} from './idx.js';
