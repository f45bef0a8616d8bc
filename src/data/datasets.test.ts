import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { DynnError } from '../util/errors.js';
import {
  allocShared,
  datasets,
  loadDataset,
  makeSynthetic,
  subset,
  toFloat,
  type Dataset,
  type ImageSet,
} from './index.js';

const made: string[] = [];
after(() => made.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-data-'));
  made.push(dir);
  return dir;
}

const sha = (a: Uint8Array) => createHash('sha256').update(a).digest('hex');
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Asserts that `promise` rejects with a DynnError whose message matches `message`. */
async function rejectsDynn(promise: Promise<unknown>, message: RegExp | string): Promise<void> {
  await assert.rejects(promise, { name: 'DynnError', message });
}

/** Per-class sample counts. */
function histogram(set: ImageSet, numClasses: number): number[] {
  const h = new Array<number>(numClasses).fill(0);
  for (const l of set.labels) h[l]++;
  return h;
}

/** Accuracy of a nearest-class-mean classifier fitted on train: a framework-free proxy for "learnable". */
function nearestMeanAccuracy(ds: Dataset): number {
  const size = ds.train.height * ds.train.width * ds.train.channels;
  const means = Array.from({ length: ds.numClasses }, () => new Float64Array(size));
  const counts = histogram(ds.train, ds.numClasses);
  for (let i = 0; i < ds.train.count; i++) {
    const m = means[ds.train.labels[i]];
    for (let p = 0; p < size; p++) m[p] += ds.train.images[i * size + p] / counts[ds.train.labels[i]];
  }
  let right = 0;
  for (let i = 0; i < ds.test.count; i++) {
    let best = -1;
    let bestDist = Infinity;
    means.forEach((m, k) => {
      let d = 0;
      for (let p = 0; p < size; p++) d += (ds.test.images[i * size + p] - m[p]) ** 2;
      if (d < bestDist) [best, bestDist] = [k, d];
    });
    if (best === ds.test.labels[i]) right++;
  }
  return right / ds.test.count;
}

test('the registry lists every data set and an unknown name lists the known ones', async () => {
  assert.deepEqual(datasets.list(), ['cifar10', 'fashion-mnist', 'fashion-mnist-distorted', 'fashion-mnist-stream', 'mnist', 'synthetic']);
  await rejectsDynn(
    loadDataset('imagenet'),
    'unknown dataset "imagenet"; expected one of cifar10, fashion-mnist, fashion-mnist-distorted, fashion-mnist-stream, mnist, synthetic',
  );
});

test('mnist: embedded digits with a fixed 80/20 per-class split', async () => {
  const dir = path.join(path.dirname(createRequire(import.meta.url).resolve('mnist/package.json')), 'src', 'digits');
  const perClass = Array.from({ length: 10 }, (_, c) => {
    const { data } = JSON.parse(fs.readFileSync(path.join(dir, `${c}.json`), 'utf8')) as { data: number[] };
    return data.length / 784;
  });
  const ds = await loadDataset('mnist');
  assert.equal(ds.name, 'mnist');
  assert.equal(ds.numClasses, 10);
  assert.deepEqual(ds.classNames, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  assert.equal(ds.train.count + ds.test.count, perClass.reduce((a, b) => a + b));
  assert.deepEqual([ds.train.count, ds.test.count], [8000, 2000]);
  const trainPerClass = perClass.map((n) => Math.round(n * 0.8));
  assert.deepEqual(histogram(ds.train, 10), trainPerClass);
  assert.deepEqual(histogram(ds.test, 10), perClass.map((n, c) => n - trainPerClass[c]));
  for (const set of [ds.train, ds.test]) {
    assert.deepEqual([set.height, set.width, set.channels], [28, 28, 1]);
    assert.equal(set.images.length, set.count * 784);
    assert.equal(Math.max(...set.images.subarray(0, 784 * 50)), 255);
    assert.equal(Math.min(...set.images.subarray(0, 784 * 50)), 0);
  }
  assert.equal(new Set(ds.train.labels.subarray(0, 100)).size, 10, 'train is shuffled across classes');
  // Hashes pin the split and its order across runs, machines and library versions.
  assert.equal(sha(ds.train.images), '37bdd0f4fd4cd9f52d8afe78d734810a9530c1261b53e63e9d1e6c217238907d');
  assert.equal(sha(ds.train.labels), 'aa640770379e5aee144a891ee40c1608f62768b235a837b901cc05f160575fbc');
  assert.equal(sha(ds.test.images), 'd091d377fe472210709a52b586f9ee68e4e53aacfa9dcf8a13e6d668fff0faf9');
  assert.equal(sha(ds.test.labels), '80639b2e67467d4aaaad80badca4ca18642f00e2d9611094e9b504d38b30ec6e');
  const again = await loadDataset('mnist');
  assert.equal(sha(again.train.images), sha(ds.train.images));
  const trainImages = new Set<string>();
  for (let i = 0; i < ds.train.count; i++) trainImages.add(sha(ds.train.images.subarray(i * 784, (i + 1) * 784)));
  for (let i = 0; i < ds.test.count; i++) {
    assert.ok(!trainImages.has(sha(ds.test.images.subarray(i * 784, (i + 1) * 784))), `test image ${i} is in train`);
  }
});

test('trainLimit / testLimit keep the first N samples and must be positive integers', async () => {
  const full = await loadDataset('mnist');
  const small = await loadDataset('mnist', { trainLimit: 100, testLimit: 30 });
  assert.equal(small.train.count, 100);
  assert.equal(small.test.count, 30);
  assert.deepEqual(small.train.images, full.train.images.subarray(0, 100 * 784));
  assert.deepEqual(small.test.labels, full.test.labels.subarray(0, 30));
  assert.equal((await loadDataset('mnist', { trainLimit: 1e6 })).train.count, 8000);
  for (const bad of [0, -5, 1.5, Number.NaN, Infinity]) {
    for (const name of ['mnist', 'synthetic', 'fashion-mnist', 'fashion-mnist-stream', 'fashion-mnist-distorted', 'cifar10']) {
      await rejectsDynn(loadDataset(name, { trainLimit: bad }), /trainLimit must be a positive integer/);
      await rejectsDynn(loadDataset(name, { testLimit: bad }), /testLimit must be a positive integer/);
    }
  }
});

/** A CIFAR-10 binary batch: record r has label (r + first) % 10 and channel c, pixel p holding (p + 50c + r) % 256. */
function cifarBatch(records: number, first = 0): Buffer {
  const buf = Buffer.alloc(records * 3073);
  for (let r = 0; r < records; r++) {
    buf[r * 3073] = (r + first) % 10;
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < 1024; p++) buf[r * 3073 + 1 + c * 1024 + p] = (p + 50 * c + r) % 256;
    }
  }
  return buf;
}

function writeCifar(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 1; i <= 5; i++) fs.writeFileSync(path.join(dir, `data_batch_${i}.bin`), cifarBatch(2, 2 * (i - 1)));
  fs.writeFileSync(path.join(dir, 'test_batch.bin'), cifarBatch(3));
}

test('cifar10: binary batches, CHW converted to HWC', async () => {
  const dir = tempDir();
  writeCifar(dir);
  const ds = await loadDataset('cifar10', { dataDir: dir });
  assert.equal(ds.numClasses, 10);
  assert.equal(ds.classNames[0], 'airplane');
  assert.deepEqual([ds.train.count, ds.train.height, ds.train.width, ds.train.channels], [10, 32, 32, 3]);
  assert.equal(ds.test.count, 3);
  assert.deepEqual(Array.from(ds.train.labels), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const r = 1;
  for (const p of [0, 1, 33, 1023]) {
    for (let c = 0; c < 3; c++) assert.equal(ds.test.images[r * 3072 + p * 3 + c], (p + 50 * c + r) % 256);
  }
});

test('cifar10: found in a cifar-10-batches-bin subfolder of DYNN_DATA', async (t) => {
  const root = tempDir();
  writeCifar(path.join(root, 'cifar-10-batches-bin'));
  const saved = process.env.DYNN_DATA;
  t.after(() => {
    if (saved === undefined) delete process.env.DYNN_DATA;
    else process.env.DYNN_DATA = saved;
  });
  process.env.DYNN_DATA = root;
  const ds = await loadDataset('cifar10', { testLimit: 1 });
  assert.equal(ds.train.count, 10);
  assert.equal(ds.test.count, 1);
});

test('cifar10: a bad length or label names the file; missing data names where it looked', async () => {
  const dir = tempDir();
  writeCifar(dir);
  const bad = path.join(dir, 'data_batch_3.bin');
  fs.writeFileSync(bad, cifarBatch(2).subarray(0, 5000));
  await rejectsDynn(
    loadDataset('cifar10', { dataDir: dir }),
    new RegExp(`${escape(bad)}: 5000 bytes is not a positive multiple of the 3073-byte`),
  );
  const badLabel = cifarBatch(2);
  badLabel[3073] = 10;
  fs.writeFileSync(bad, badLabel);
  await rejectsDynn(loadDataset('cifar10', { dataDir: dir }), new RegExp(`${escape(bad)}: record 1 has label 10`));
  fs.rmSync(bad);
  await assert.rejects(loadDataset('cifar10', { dataDir: dir }), {
    name: 'DynnError',
    message: new RegExp(
      [
        escape(`${dir} (missing data_batch_3.bin)`),
        escape(`${path.join(dir, 'cifar-10-batches-bin')} (no such directory)`),
        escape('cifar-10-binary.tar.gz'),
      ].join('[\\s\\S]*'),
    ),
  });
});

test('synthetic: sizes, determinism under a seed, learnable', async () => {
  const a = await loadDataset('synthetic', { seed: 3 });
  assert.deepEqual([a.train.count, a.test.count, a.numClasses], [2000, 500, 10]);
  assert.deepEqual([a.train.height, a.train.width, a.train.channels], [28, 28, 1]);
  assert.deepEqual(histogram(a.train, 10), new Array(10).fill(200));
  const b = await loadDataset('synthetic', { seed: 3, trainLimit: 300, testLimit: 200 });
  const a2 = await loadDataset('synthetic', { seed: 3, trainLimit: 300, testLimit: 200 });
  assert.deepEqual(b.train, a2.train);
  assert.deepEqual(b.test, a2.test);
  const c = await loadDataset('synthetic', { seed: 4, trainLimit: 300, testLimit: 200 });
  assert.notDeepEqual(c.train.images, b.train.images);
  assert.notDeepEqual(b.train.images, b.test.images.subarray(0, b.train.images.length));
  assert.ok(nearestMeanAccuracy(b) > 0.9, 'the classes are separable');
  await rejectsDynn(loadDataset('synthetic', { seed: 0.5 }), /seed must be an integer/);
});

test('makeSynthetic: any shape, balanced labels, same options give the same bytes', () => {
  const opts = { count: 40, height: 8, width: 12, channels: 3, numClasses: 4, seed: 7 };
  const s = makeSynthetic(opts);
  assert.deepEqual([s.count, s.height, s.width, s.channels], [40, 8, 12, 3]);
  assert.equal(s.images.length, 40 * 8 * 12 * 3);
  assert.deepEqual(histogram(s, 4), [10, 10, 10, 10]);
  assert.deepEqual(makeSynthetic(opts), s);
  assert.throws(() => makeSynthetic({ ...opts, count: 0 }), DynnError);
  assert.throws(() => makeSynthetic({ ...opts, numClasses: 300 }), DynnError);
});

test('toFloat scales to [0, 1], optionally into a given buffer', () => {
  const images = Uint8Array.from([0, 51, 255, 102, 1, 2]);
  const set: ImageSet = { images, labels: Uint8Array.from([0, 1, 2]), count: 3, height: 1, width: 2, channels: 1 };
  assert.deepEqual(Array.from(toFloat(set, 0, 2)), [0, 0.2, 1, 0.4].map(Math.fround));
  const out = new Float32Array(10).fill(-1);
  const view = toFloat(set, 1, 2, out);
  assert.equal(view.length, 4);
  assert.equal(view.buffer, out.buffer);
  assert.deepEqual(Array.from(out.subarray(0, 5)), [1, 0.4, 1 / 255, 2 / 255, -1].map(Math.fround));
  assert.throws(() => toFloat(set, 2, 2), RangeError);
  assert.throws(() => toFloat(set, 0, 3, new Float32Array(5)), RangeError);
});

test('subset copies the chosen samples; allocShared copies into SharedArrayBuffers', async () => {
  const ds = await loadDataset('synthetic', { trainLimit: 20, testLimit: 1 });
  const sub = subset(ds.train, Int32Array.from([5, 0, 5]));
  assert.equal(sub.count, 3);
  assert.deepEqual(Array.from(sub.labels), [ds.train.labels[5], ds.train.labels[0], ds.train.labels[5]]);
  assert.deepEqual(sub.images.subarray(784, 1568), ds.train.images.subarray(0, 784));
  assert.deepEqual(subset(ds.train, []).count, 0);
  assert.throws(() => subset(ds.train, [20]), RangeError);
  const shared = allocShared(ds.train);
  assert.ok(shared.images.buffer instanceof SharedArrayBuffer);
  assert.ok(shared.labels.buffer instanceof SharedArrayBuffer);
  assert.deepEqual(Array.from(shared.images), Array.from(ds.train.images));
  assert.deepEqual(Array.from(shared.labels), Array.from(ds.train.labels));
  assert.equal(shared.count, 20);
});
