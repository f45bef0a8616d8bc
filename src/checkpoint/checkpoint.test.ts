import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { DynnError } from '../util/errors.js';
import {
  commitManifest,
  isCheckpointDir,
  loadCheckpoint,
  pruneCheckpointDir,
  readCheckpointInfo,
  saveCheckpoint,
  writeDataFiles,
  type CheckpointContent,
  type NamedArray,
} from './checkpoint.js';

const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'dynn-checkpoint-test-'));
after(() => fsp.rm(root, { recursive: true, force: true }));

let counter = 0;
function tempDir(): string {
  return path.join(root, `ckpt-${counter++}`);
}

function arr(name: string, shape: number[], fill: (i: number) => number): NamedArray {
  const size = shape.reduce((a, b) => a * b, 1);
  return { name, shape, data: Float32Array.from({ length: size }, (_, i) => fill(i)) };
}

function sample(seed = 1, withOptimizer = true): CheckpointContent {
  const content: CheckpointContent = {
    config: { model: 'mlp', args: { hidden: [8, 4], levels: 3 } },
    weights: [
      arr('block1.dense.kernel', [3, 2], (i) => seed * 0.1 + i),
      arr('block1.dense.bias', [2], (i) => -seed - i),
      arr('block1.bn.level0.movingMean', [2], (i) => seed / 3 + i),
      arr('scale', [], () => seed),
    ],
    meta: { epoch: seed, seed: 42, history: [{ loss: 0.5, accuracy: 0.9, samplesPerSecond: 1234.5 }], dynnVersion: '0.1.0' },
  };
  if (withOptimizer) {
    content.optimizer = {
      kind: 'adam',
      state: { step: 10 * seed, beta1: 0.9 },
      arrays: [arr('block1.dense.kernel.m', [3, 2], (i) => i * seed), arr('block1.dense.kernel.v', [3, 2], (i) => i / seed)],
    };
  }
  return content;
}

/** Exact bit patterns, so NaN payloads and -0 are compared too. */
function bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

function assertArraysEqual(actual: NamedArray[], expected: NamedArray[]): void {
  assert.deepEqual(actual.map((a) => [a.name, a.shape]), expected.map((a) => [a.name, a.shape]));
  actual.forEach((a, i) => assert.deepEqual(bits(a.data), bits(expected[i]!.data), a.name));
}

async function dataFiles(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir)).filter((f) => f.endsWith('.bin')).sort();
}

async function editManifest(dir: string, edit: (m: any) => void): Promise<void> {
  const file = path.join(dir, 'checkpoint.json');
  const manifest = JSON.parse(await fsp.readFile(file, 'utf8'));
  edit(manifest);
  await fsp.writeFile(file, JSON.stringify(manifest));
}

async function rejectsWith(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof DynnError, `expected a DynnError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

async function saved(content = sample()): Promise<string> {
  const dir = tempDir();
  await saveCheckpoint(dir, content);
  return dir;
}

describe('checkpoint round trip', () => {
  test('names, shapes, values bit-exact, config, meta and optimizer survive', async () => {
    const content = sample();
    const special = new Float32Array(6);
    new Uint32Array(special.buffer).set([0x7fc01234, 0x80000000, 0x7f800000, 0xff800000, 0x00000001, 0x3eaaaaab]);
    content.weights.push({ name: 'special', shape: [2, 3], data: special }, arr('empty', [0, 5], () => 0));
    const dir = await saved(content);

    const loaded = await loadCheckpoint(dir);
    assert.deepEqual(loaded.config, content.config);
    assert.deepEqual(loaded.meta, content.meta);
    assertArraysEqual(loaded.weights, content.weights);
    assert.equal(loaded.optimizer?.kind, 'adam');
    assert.deepEqual(loaded.optimizer?.state, content.optimizer!.state);
    assertArraysEqual(loaded.optimizer!.arrays, content.optimizer!.arrays);

    const files = await fsp.readdir(dir);
    assert.equal(files.length, 3);
    assert.ok(files.includes('checkpoint.json'));
    assert.ok(files.some((f) => /^weights-[0-9a-f]{16}\.bin$/.test(f)));
    assert.ok(files.some((f) => /^optimizer-[0-9a-f]{16}\.bin$/.test(f)));
  });

  test('without optimizer; expect with matching model and weights passes', async () => {
    const content = sample(2, false);
    const dir = await saved(content);
    const loaded = await loadCheckpoint(dir, { model: 'mlp', weights: content.weights.map(({ name, shape }) => ({ name, shape })) });
    assert.equal(loaded.optimizer, undefined);
    assertArraysEqual(loaded.weights, content.weights);
    assert.equal((await dataFiles(dir)).length, 1);
  });

  test('weights file is little-endian float32, concatenated in order', async () => {
    const dir = await saved({ config: { model: 'm', args: {} }, weights: [arr('a', [2], (i) => i + 1), arr('b', [1], () => -2)], meta: {} });
    const [file] = await dataFiles(dir);
    const bytes = await fsp.readFile(path.join(dir, file!));
    assert.deepEqual([0, 4, 8].map((o) => bytes.readFloatLE(o)), [1, 2, -2]);
  });

  test('readCheckpointInfo reads checkpoint.json only', async () => {
    const dir = await saved();
    for (const file of await dataFiles(dir)) await fsp.writeFile(path.join(dir, file), 'garbage');
    const info = await readCheckpointInfo(dir);
    assert.equal(info.config.model, 'mlp');
    assert.equal(info.meta.epoch, 1);
    assert.equal(info.hasOptimizer, true);
    assert.deepEqual(info.weights[0], { name: 'block1.dense.kernel', shape: [3, 2] });
    for (const file of await dataFiles(dir)) await fsp.rm(path.join(dir, file));
    assert.equal((await readCheckpointInfo(dir)).weights.length, 4);
  });

  test('isCheckpointDir', async () => {
    const dir = await saved();
    assert.equal(isCheckpointDir(dir), true);
    assert.equal(isCheckpointDir(tempDir()), false);
    assert.equal(isCheckpointDir(path.join(dir, 'checkpoint.json')), false);
  });

  test('saving inconsistent content is refused', async () => {
    const dir = tempDir();
    await assert.rejects(saveCheckpoint(dir, { ...sample(), weights: [{ name: 'a', shape: [2, 3], data: new Float32Array(5) }] }), /shape \[2,3\]/);
    await assert.rejects(saveCheckpoint(dir, { ...sample(), weights: [arr('a', [1], () => 0), arr('a', [1], () => 0)] }), /duplicate/);
    assert.equal(isCheckpointDir(dir), false);
  });
});

describe('checkpoint overwrite and crash safety', () => {
  test('overwriting leaves exactly one weights file and drops an unused optimizer file', async () => {
    const dir = await saved(sample(1));
    await saveCheckpoint(dir, sample(2));
    let files = await dataFiles(dir);
    assert.equal(files.filter((f) => f.startsWith('weights-')).length, 1);
    assert.equal(files.filter((f) => f.startsWith('optimizer-')).length, 1);
    assertArraysEqual((await loadCheckpoint(dir)).weights, sample(2).weights);

    await saveCheckpoint(dir, sample(3, false));
    files = await dataFiles(dir);
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^weights-/);
    assert.equal((await loadCheckpoint(dir)).optimizer, undefined);

    await saveCheckpoint(dir, sample(3, false));
    assert.deepEqual(await dataFiles(dir), files);
  });

  test('crash before commit leaves the old checkpoint; crash after commit loads the new one', async () => {
    const dir = await saved(sample(1));
    const manifest = await writeDataFiles(dir, sample(2));
    await fsp.writeFile(path.join(dir, 'checkpoint.json.999.deadbeef.tmp'), '{"torn": ');
    await fsp.writeFile(path.join(dir, `${manifest.weights.file}.999.cafebabe.tmp`), 'partial');
    assert.equal((await dataFiles(dir)).filter((f) => f.startsWith('weights-')).length, 2);

    const old = await loadCheckpoint(dir);
    assertArraysEqual(old.weights, sample(1).weights);
    assert.equal(old.meta.epoch, 1);

    await commitManifest(dir, manifest);
    const committed = await loadCheckpoint(dir);
    assertArraysEqual(committed.weights, sample(2).weights);
    assert.equal(committed.optimizer?.state.step, 20);

    await pruneCheckpointDir(dir, manifest);
    assert.deepEqual((await fsp.readdir(dir)).sort(), ['checkpoint.json', manifest.optimizer!.file, manifest.weights.file].sort());
  });

  test('the next save cleans up what a crashed save left behind', async () => {
    const dir = await saved(sample(1));
    await writeDataFiles(dir, sample(2));
    await fsp.writeFile(path.join(dir, 'checkpoint.json.1.00000000.tmp'), '');
    await fsp.writeFile(path.join(dir, 'notes.txt'), 'user file');
    await saveCheckpoint(dir, sample(3));
    assert.equal((await fsp.readdir(dir)).filter((f) => f.endsWith('.tmp')).length, 0);
    assert.equal((await dataFiles(dir)).length, 2);
    assert.ok((await fsp.readdir(dir)).includes('notes.txt'));
    assertArraysEqual((await loadCheckpoint(dir)).weights, sample(3).weights);
  });
});

describe('checkpoint load errors', () => {
  test('missing directory / not a checkpoint', async () => {
    await rejectsWith(loadCheckpoint(tempDir()), /no checkpoint\.json in .*ckpt-\d+ \(the directory does not exist\)/);
    const empty = tempDir();
    await fsp.mkdir(empty);
    await rejectsWith(loadCheckpoint(empty), /no checkpoint\.json in /);
    await rejectsWith(readCheckpointInfo(empty), /no checkpoint\.json in /);
  });

  test('checkpoint.json not valid JSON', async () => {
    const dir = await saved();
    await fsp.writeFile(path.join(dir, 'checkpoint.json'), '{"format": "dynn-checkpoint", ');
    await rejectsWith(loadCheckpoint(dir), /checkpoint\.json is corrupt: not valid JSON/);
  });

  test('wrong format tag or version', async () => {
    const dir = await saved();
    await editManifest(dir, (m) => (m.format = 'something-else'));
    await rejectsWith(loadCheckpoint(dir), /not a dynn checkpoint: format tag is "something-else"/);
    await editManifest(dir, (m) => ((m.format = 'dynn-checkpoint'), (m.formatVersion = 2)));
    await rejectsWith(loadCheckpoint(dir), /format version 2; this dynn reads version 1/);
    await fsp.writeFile(path.join(dir, 'checkpoint.json'), '[1, 2]');
    await rejectsWith(loadCheckpoint(dir), /not a dynn checkpoint/);
  });

  test('manifest schema errors name the path', async () => {
    const dir = await saved();
    await editManifest(dir, (m) => (m.weights.arrays[1].shape = ['two']));
    await rejectsWith(readCheckpointInfo(dir), /is invalid: weights\.arrays\[1\]\.shape\[0\]: /);
    await editManifest(dir, (m) => ((m.weights.arrays[1].shape = [2]), (m.weights.file = '../../etc/passwd'), delete m.config.model));
    await rejectsWith(loadCheckpoint(dir), /config\.model: .*; weights\.file: expected a file name like weights-<16 hex>\.bin/);
  });

  test('weights file missing, truncated, or corrupt', async () => {
    const dir = await saved();
    const file = (await dataFiles(dir)).find((f) => f.startsWith('weights-'))!;
    const full = path.join(dir, file);
    const bytes = await fsp.readFile(full);

    await fsp.writeFile(full, bytes.subarray(0, bytes.length - 4));
    await rejectsWith(loadCheckpoint(dir), new RegExp(`${file} is truncated: expected ${bytes.length} bytes, found ${bytes.length - 4}`));

    const flipped = Buffer.from(bytes);
    flipped[5]! ^= 1;
    await fsp.writeFile(full, flipped);
    await rejectsWith(loadCheckpoint(dir), new RegExp(`${file} is corrupt: checksum mismatch`));

    await fsp.rm(full);
    await rejectsWith(loadCheckpoint(dir), new RegExp(`${file} is missing`));
  });

  test('optimizer file problems are reported too', async () => {
    const dir = await saved();
    const file = (await dataFiles(dir)).find((f) => f.startsWith('optimizer-'))!;
    await fsp.rm(path.join(dir, file));
    await rejectsWith(loadCheckpoint(dir), new RegExp(`${file} is missing`));
  });

  test('array table: overlap, out of bounds, shape/length mismatch, duplicate names', async () => {
    const dir = await saved();
    const original = await fsp.readFile(path.join(dir, 'checkpoint.json'), 'utf8');
    const cases: [(m: any) => void, RegExp][] = [
      [(m) => (m.weights.arrays[1].offset = 5), /arrays "block1\.dense\.kernel" and "block1\.dense\.bias" overlap/],
      [(m) => (m.weights.arrays[3].offset = 11), /array "scale" \(offset 11, length 1\) is out of bounds/],
      [(m) => (m.weights.arrays[0].shape = [2, 2]), /array "block1\.dense\.kernel" has shape \[2,2\] with 4 values but length 6/],
      [(m) => (m.weights.arrays[1].name = 'block1.dense.kernel'), /duplicate array name "block1\.dense\.kernel"/],
      [(m) => (m.optimizer.arrays[1].offset = 7), /optimizer: array "block1\.dense\.kernel\.v" \(offset 7, length 6\) is out of bounds/],
      [(m) => (m.weights.byteLength = 42), /byteLength 42 is not a multiple of 4/],
    ];
    for (const [edit, pattern] of cases) {
      await fsp.writeFile(path.join(dir, 'checkpoint.json'), original);
      await editManifest(dir, edit);
      await rejectsWith(loadCheckpoint(dir), pattern);
      await rejectsWith(readCheckpointInfo(dir), pattern);
    }
  });

  test('expect: another model', async () => {
    const dir = await saved();
    await rejectsWith(loadCheckpoint(dir, { model: 'cnn' }), /checkpoint is for model "mlp", not "cnn"/);
  });

  test('expect: missing, unexpected and mis-shaped weights are listed', async () => {
    const dir = await saved();
    const expected = [
      { name: 'block1.dense.kernel', shape: [3, 4] },
      { name: 'block1.dense.bias', shape: [2] },
      { name: 'block1.bn.level0.movingMean', shape: [2] },
      ...Array.from({ length: 7 }, (_, i) => ({ name: `block2.w${i}`, shape: [i + 1] })),
    ];
    await rejectsWith(
      loadCheckpoint(dir, { model: 'mlp', weights: expected }),
      /do not match the model: missing 7: block2\.w0 \[1\], .*block2\.w4 \[5\] \(and 2 more\); unexpected 1: scale \[\]; mis-shaped 1: block1\.dense\.kernel \(checkpoint \[3,2\], model \[3,4\]\)/,
    );
  });
});

describe('checkpoint load: property tests', () => {
  /** Every path in a JSON value, the root excluded. */
  const pathsOf = (value: unknown, prefix: (string | number)[] = []): (string | number)[][] =>
    value === null || typeof value !== 'object'
      ? []
      : Object.entries(value).flatMap(([k, v]) => [[...prefix, Array.isArray(value) ? Number(k) : k], ...pathsOf(v, [...prefix, Array.isArray(value) ? Number(k) : k])]);

  async function loadsOrRefuses(dir: string): Promise<void> {
    for (const load of [loadCheckpoint, readCheckpointInfo]) {
      try {
        await load(dir);
      } catch (err) {
        assert.ok(err instanceof DynnError, `expected a DynnError, got ${err instanceof Error ? err.stack : String(err)}`);
      }
    }
  }

  test('arbitrary JSON, or any value at any path of a valid manifest: content or a DynnError', async () => {
    const dir = await saved();
    const file = path.join(dir, 'checkpoint.json');
    const text = await fsp.readFile(file, 'utf8');
    const paths = pathsOf(JSON.parse(text));
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.jsonValue(), fc.string()), async (value) => {
        await fsp.writeFile(file, typeof value === 'string' ? value : JSON.stringify(value));
        await loadsOrRefuses(dir);
      }),
      { numRuns: 100, timeout: 5000 },
    );
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.option(fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constant('__INF__')), { nil: undefined }), async (i, value) => {
        const m = JSON.parse(text);
        const at = paths[i % paths.length]!;
        const parent = at.slice(0, -1).reduce((node, key) => node[key], m);
        if (value === undefined) delete parent[at[at.length - 1]!];
        else parent[at[at.length - 1]!] = value;
        // JSON has no Infinity, but JSON.parse reads 1e999 as one.
        await fsp.writeFile(file, JSON.stringify(m).replace('"__INF__"', '1e999'));
        await loadsOrRefuses(dir);
      }),
      { numRuns: 300, timeout: 5000 },
    );
  });

  test('any byte corruption or resize of a data file is refused with a DynnError', async () => {
    const dir = await saved();
    for (const file of await dataFiles(dir)) {
      const full = path.join(dir, file);
      const bytes = await fsp.readFile(full);
      await fc.assert(
        fc.asyncProperty(
          fc.uniqueArray(fc.tuple(fc.nat(bytes.length - 1), fc.integer({ min: 1, max: 255 })), { minLength: 0, maxLength: 4, selector: ([at]) => at }),
          fc.integer({ min: -bytes.length, max: 8 }),
          async (flips, resize) => {
            fc.pre(flips.length > 0 || resize !== 0);
            const bad = Buffer.from(bytes);
            for (const [at, x] of flips) bad[at]! ^= x;
            await fsp.writeFile(full, resize < 0 ? bad.subarray(0, bad.length + resize) : Buffer.concat([bad, Buffer.alloc(resize)]));
            await rejectsWith(loadCheckpoint(dir), new RegExp(`${file} is (corrupt|truncated|wrong size)`));
          },
        ),
        { numRuns: 100, timeout: 5000 },
      );
      await fsp.writeFile(full, bytes);
    }
  });
});
