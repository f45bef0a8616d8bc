import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { DynnError } from '../util/errors.js';
import { loadFashionMnist, FASHION_MNIST_SYSTEM_DIR } from './fashion-mnist.js';
import { parseIdxImages, parseIdxLabels, readMaybeGzip } from './idx.js';
import fc from 'fast-check';

/** An IDX unsigned-byte file: magic, big-endian dims, then the payload. */
function idx(magic: number, dims: number[], payload: Uint8Array): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, payload]);
}

function images(count: number, h = 28, w = 28): Buffer {
  return idx(0x803, [count, h, w], Uint8Array.from({ length: count * h * w }, (_, i) => (i * 7) % 256));
}

function labels(count: number, numClasses = 10): Buffer {
  return idx(0x801, [count], Uint8Array.from({ length: count }, (_, i) => i % numClasses));
}

const made: string[] = [];
after(() => made.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-idx-'));
  made.push(dir);
  return dir;
}

/** Writes the four Fashion-MNIST files into `dir`, gzipped or raw; `overrides` replaces single files' bytes. */
function writeFashion(dir: string, gzip: boolean, overrides: Record<string, Buffer> = {}): Record<string, string> {
  const files: Record<string, Buffer> = {
    'train-images-idx3-ubyte': images(6),
    'train-labels-idx1-ubyte': labels(6),
    't10k-images-idx3-ubyte': images(4),
    't10k-labels-idx1-ubyte': labels(4),
    ...overrides,
  };
  const paths: Record<string, string> = {};
  for (const [base, bytes] of Object.entries(files)) {
    const file = path.join(dir, gzip ? `${base}.gz` : base);
    fs.writeFileSync(file, gzip ? zlib.gzipSync(bytes) : bytes);
    paths[base] = file;
  }
  return paths;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Asserts that `fn` throws a DynnError whose message matches `message`. */
function throwsDynn(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, { name: 'DynnError', message });
}

test('parseIdxImages and parseIdxLabels read dims and payload', () => {
  const img = parseIdxImages(images(3, 2, 5), 'x');
  assert.deepEqual([img.count, img.height, img.width], [3, 2, 5]);
  assert.equal(img.images.length, 30);
  assert.equal(img.images[9], 63);
  assert.deepEqual(Array.from(parseIdxLabels(labels(4), 'y', 10)), [0, 1, 2, 3]);
});

test('parsing rejects wrong magic, truncation, trailing bytes and out-of-range labels, naming the file', () => {
  throwsDynn(
    () => parseIdxImages(labels(3), 'imgs.idx'),
    /imgs\.idx: wrong magic number 0x00000801, expected 0x00000803/,
  );
  throwsDynn(() => parseIdxLabels(images(1), 'labs.idx', 10), /labs\.idx: wrong magic/);
  throwsDynn(() => parseIdxImages(images(2).subarray(0, 100), 'short.idx'), /short\.idx: truncated/);
  throwsDynn(() => parseIdxImages(images(2).subarray(0, 10), 'hdr.idx'), /hdr\.idx: truncated.*header/);
  throwsDynn(() => parseIdxImages(Buffer.from([0, 0]), 'tiny.idx'), /tiny\.idx: truncated/);
  const long = Buffer.concat([images(1), Buffer.from([1])]);
  throwsDynn(() => parseIdxImages(long, 'long.idx'), /long\.idx: trailing bytes/);
  throwsDynn(() => parseIdxLabels(labels(12, 12), 'many.idx', 10), /many\.idx: label 10 at index 10 is out of range/);
});

test('readMaybeGzip detects gzip by its magic bytes, not by the file name', async () => {
  const dir = tempDir();
  const raw = images(1);
  fs.writeFileSync(path.join(dir, 'gzipped-without-suffix'), zlib.gzipSync(raw));
  fs.writeFileSync(path.join(dir, 'raw.gz'), raw);
  assert.deepEqual(Buffer.from(await readMaybeGzip(path.join(dir, 'gzipped-without-suffix'))), raw);
  assert.deepEqual(Buffer.from(await readMaybeGzip(path.join(dir, 'raw.gz'))), raw);
});

for (const gzip of [true, false]) {
  test(`fashion-mnist loads ${gzip ? 'gzipped' : 'raw'} IDX files from dataDir`, async () => {
    const dir = tempDir();
    writeFashion(dir, gzip);
    const ds = await loadFashionMnist({ dataDir: dir });
    assert.equal(ds.name, 'fashion-mnist');
    assert.equal(ds.numClasses, 10);
    assert.equal(ds.classNames[0], 'T-shirt/top');
    assert.equal(ds.classNames[9], 'Ankle boot');
    assert.deepEqual([ds.train.count, ds.train.height, ds.train.width, ds.train.channels], [6, 28, 28, 1]);
    assert.equal(ds.test.count, 4);
    assert.equal(ds.train.images.length, 6 * 784);
    assert.deepEqual(Array.from(ds.train.labels), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(Buffer.from(ds.test.images), images(4).subarray(16));
  });
}

test('fashion-mnist finds the files in a fashion-mnist subfolder of DYNN_DATA', async (t) => {
  const root = tempDir();
  fs.mkdirSync(path.join(root, 'fashion-mnist'));
  writeFashion(path.join(root, 'fashion-mnist'), true);
  const saved = process.env.DYNN_DATA;
  t.after(() => {
    if (saved === undefined) delete process.env.DYNN_DATA;
    else process.env.DYNN_DATA = saved;
  });
  process.env.DYNN_DATA = root;
  const ds = await loadFashionMnist({ trainLimit: 2 });
  assert.equal(ds.train.count, 2);
  assert.equal(ds.test.count, 4);
});

test('fashion-mnist reports corrupt files by name', async () => {
  const cases: [string, Record<string, Buffer>, boolean, RegExp][] = [
    [
      'truncated images',
      { 'train-images-idx3-ubyte': images(6).subarray(0, 1000) },
      false,
      /train-images-idx3-ubyte: truncated/,
    ],
    ['wrong magic', { 't10k-labels-idx1-ubyte': images(4) }, true, /t10k-labels-idx1-ubyte\.gz: wrong magic number/],
    [
      'count mismatch',
      { 'train-labels-idx1-ubyte': labels(5) },
      true,
      /train-labels-idx1-ubyte\.gz: holds 5 labels but .*train-images-idx3-ubyte\.gz holds 6 images/,
    ],
    [
      'label out of range',
      { 't10k-labels-idx1-ubyte': idx(0x801, [4], Uint8Array.from([0, 1, 10, 2])) },
      false,
      /t10k-labels-idx1-ubyte: label 10 at index 2/,
    ],
  ];
  for (const [what, overrides, gzip, message] of cases) {
    const dir = tempDir();
    writeFashion(dir, gzip, overrides);
    await assert.rejects(loadFashionMnist({ dataDir: dir }), { name: 'DynnError', message }, what);
  }
});

test('fashion-mnist reports bad and truncated gzip data by file name', async () => {
  const dir = tempDir();
  const paths = writeFashion(dir, true);
  const file = paths['train-images-idx3-ubyte'];
  const gz = fs.readFileSync(file);
  const expected = { name: 'DynnError', message: new RegExp(`${escape(file)}: corrupt gzip data`) };
  fs.writeFileSync(file, gz.subarray(0, gz.length >> 1));
  await assert.rejects(loadFashionMnist({ dataDir: dir }), expected);
  fs.writeFileSync(file, Buffer.concat([Buffer.from([0x1f, 0x8b]), Buffer.from('definitely not deflate data')]));
  await assert.rejects(loadFashionMnist({ dataDir: dir }), expected);
});

test('fashion-mnist missing: the error names every place looked in and how to get the data', async () => {
  const dir = tempDir();
  const missing = path.join(dir, 'nowhere');
  const err = await loadFashionMnist({ dataDir: missing }).then(
    () => assert.fail('expected an error'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof DynnError);
  assert.match(err.message, new RegExp(`${escape(missing)} \\(no such directory\\)`));
  assert.match(err.message, new RegExp(`${escape(path.join(missing, 'fashion-mnist'))} \\(no such directory\\)`));
  assert.match(err.message, /apt-get install dataset-fashion-mnist/);
  assert.match(err.message, /--data-dir/);
  assert.match(err.message, /DYNN_DATA/);
  fs.writeFileSync(path.join(dir, 'train-images-idx3-ubyte.gz'), zlib.gzipSync(images(1)));
  const lacking = 'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz';
  await assert.rejects(loadFashionMnist({ dataDir: dir }), {
    name: 'DynnError',
    message: new RegExp(escape(`${dir} (missing ${lacking})`)),
  });
});

const debianInstalled = fs.existsSync(path.join(FASHION_MNIST_SYSTEM_DIR, 'train-images-idx3-ubyte.gz'));

test('fashion-mnist from the Debian package, when installed', { skip: !debianInstalled }, async () => {
  const ds = await loadFashionMnist({ dataDir: FASHION_MNIST_SYSTEM_DIR, trainLimit: 10 });
  assert.equal(ds.test.count, 10000);
  assert.deepEqual(Array.from(ds.train.labels), [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
});

test('a DYNN_DATA that holds no data set is an error that names it, not a silent fall back to the system copy', async (t) => {
  const saved = process.env.DYNN_DATA;
  t.after(() => {
    if (saved === undefined) delete process.env.DYNN_DATA;
    else process.env.DYNN_DATA = saved;
  });
  const nowhere = path.join(tempDir(), 'no-such-folder');
  process.env.DYNN_DATA = nowhere;
  await assert.rejects(loadFashionMnist({ trainLimit: 2 }), (err: Error) => {
    assert.ok(err instanceof DynnError);
    assert.match(err.message, new RegExp(`from DYNN_DATA=${nowhere}`));
    assert.match(err.message, /no-such-folder \(no such directory\)/);
    assert.doesNotMatch(err.message, new RegExp(`^  ${FASHION_MNIST_SYSTEM_DIR}`, 'm'), 'the system copy is not looked in');
    assert.match(err.message, /unset DYNN_DATA to use/);
    return true;
  });
});

test('a gzip bomb stops at the size limit with a clear error', async () => {
  const file = path.join(tempDir(), 'bomb.gz');
  // 16 MiB of zeros gzip to 16 KiB; the limit (1 GiB by default) is lowered so the test stays small.
  fs.writeFileSync(file, zlib.gzipSync(Buffer.alloc(16 * 2 ** 20), { level: 9 }));
  await assert.rejects(readMaybeGzip(file, 2 ** 20), /bomb\.gz: decompresses to more than 1048576 bytes/);
  assert.equal((await readMaybeGzip(file)).length, 16 * 2 ** 20);
});

// Property tests: whatever bytes a data file holds, parsing returns a consistent set or throws a DynnError.
const parsesOrRefuses = (fn: () => unknown, check: (r: any) => void = () => {}) => {
  let result: unknown;
  try {
    result = fn();
  } catch (err) {
    if (err instanceof DynnError) return;
    throw err;
  }
  check(result);
};

test('IDX parsers: arbitrary bytes give a consistent result or a DynnError', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 80 }), fc.integer({ min: 1, max: 255 }), (bytes, classes) => {
      parsesOrRefuses(() => parseIdxImages(bytes, 'f'), (r) => assert.equal(r.images.length, r.count * r.height * r.width));
      parsesOrRefuses(() => parseIdxLabels(bytes, 'f', classes), (r) => assert.ok(r.every((l: number) => l < classes)));
    }),
    { numRuns: 500 },
  );
});

test('IDX parsers: valid headers with any dims, mutated or cut, give a consistent result or a DynnError', () => {
  const dim = fc.oneof(fc.integer({ min: 0, max: 6 }), fc.constantFrom(2 ** 31, 2 ** 32 - 1));
  fc.assert(
    fc.property(
      fc.tuple(dim, dim, dim),
      fc.integer({ min: 0, max: 300 }),
      fc.option(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }))),
      (dims, extra, flip) => {
        const payload = Math.min(dims[0] * dims[1] * dims[2], 300);
        const bytes = idx(0x803, dims, new Uint8Array(Math.max(0, payload + extra - 150)));
        if (flip) bytes[flip[0] % bytes.length] = flip[1];
        parsesOrRefuses(() => parseIdxImages(bytes, 'f'), (r) => {
          assert.equal(r.images.length, r.count * r.height * r.width);
          assert.ok(r.count > 0 && r.height > 0 && r.width > 0);
        });
      },
    ),
    { numRuns: 500 },
  );
});

test('gzipped data files: corrupt or cut gzip streams give a DynnError', async () => {
  const dir = tempDir();
  const good = zlib.gzipSync(images(2, 4, 4));
  await fc.assert(
    fc.asyncProperty(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean(), async (at, value, cut) => {
      const bytes = Buffer.from(good);
      const i = 2 + (at % (bytes.length - 2));
      const mutated = cut ? bytes.subarray(0, i) : (bytes[i] = value, bytes);
      const file = path.join(dir, 'images.gz');
      fs.writeFileSync(file, mutated);
      try {
        parseIdxImages(await readMaybeGzip(file), file);
      } catch (err) {
        assert.ok(err instanceof DynnError, String(err));
      }
    }),
    { numRuns: 200 },
  );
});
