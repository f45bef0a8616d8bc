import { DynnError } from '../util/errors.js';
import { applyLimits, checkLimits, dataDirSource, findFiles, searchDirs } from './common.js';
import { loadIdxPair } from './idx.js';
import type { Dataset, LoadOptions } from './types.js';

/** Where Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files. */
export const FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist';

/** Fashion-MNIST class names, by label. */
export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
];

const BASES = [
  'train-images-idx3-ubyte',
  'train-labels-idx1-ubyte',
  't10k-images-idx3-ubyte',
  't10k-labels-idx1-ubyte',
];

/** Accepted names for one file: the canonical gzipped one first, then raw, then the `.idx` spelling. */
function acceptedNames(base: string): string[] {
  const dotted = base.replace('-idx', '.idx');
  return [`${base}.gz`, base, `${dotted}.gz`, dotted];
}

/**
 * Loads Fashion-MNIST (60,000 train / 10,000 test, 28x28x1) from the four IDX files, gzipped or raw. Looks only
 * in `opts.dataDir` (or its `fashion-mnist` subfolder) when given, else in `DYNN_DATA` (likewise) when set, else
 * in {@link FASHION_MNIST_SYSTEM_DIR}. The files' order is kept.
 */
export async function loadFashionMnist(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  const dirs = searchDirs(opts, 'fashion-mnist', [FASHION_MNIST_SYSTEM_DIR]);
  const found = await findFiles(dirs, BASES.map(acceptedNames));
  if ('report' in found) {
    const source = dataDirSource(opts);
    throw new DynnError(
      [
        `fashion-mnist data not found. Looked in${source ? ` (from ${source})` : ''}:`,
        ...found.report.map((line) => `  ${line}`),
        ...(source?.startsWith('DYNN_DATA') ? [`(unset DYNN_DATA to use the system copy in ${FASHION_MNIST_SYSTEM_DIR})`] : []),
        `Install it with \`apt-get install dataset-fashion-mnist\` (puts it in ${FASHION_MNIST_SYSTEM_DIR}),`,
        `or download ${BASES.map((b) => `${b}.gz`).join(', ')}`,
        'from https://github.com/zalandoresearch/fashion-mnist into a directory DIR',
        'and pass --data-dir DIR or set DYNN_DATA=DIR.',
      ].join('\n'),
    );
  }
  const [trainImages, trainLabels, testImages, testLabels] = found.files;
  const n = FASHION_MNIST_CLASSES.length;
  const [train, test] = await Promise.all([
    loadIdxPair(trainImages, trainLabels, n),
    loadIdxPair(testImages, testLabels, n),
  ]);
  const ds: Dataset = { name: 'fashion-mnist', numClasses: n, classNames: [...FASHION_MNIST_CLASSES], train, test };
  return applyLimits(ds, opts);
}
