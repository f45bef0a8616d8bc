import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import fc from 'fast-check';
import { initEngine } from '../engine/backend.js';
import { datasets } from '../data/datasets.js';
import { makeSynthetic } from '../data/synthetic.js';
import { DynnError } from '../util/errors.js';
import { train, type TrainOptions } from './trainer.js';
import { checkModelArgs, loadRun } from './run.js';
import { readCheckpointInfo } from '../checkpoint/checkpoint.js';

before(async () => {
  await initEngine('wasm');
});

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-run-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;
const fresh = () => path.join(root, `r${counter++}`);
/** A tiny run: a one-layer mlp-w on 128 synthetic samples, one epoch, with options that differ from the defaults. */
const tiny: TrainOptions = {
  model: 'mlp-w',
  modelArgs: { hidden: [8] },
  dataset: 'synthetic',
  trainLimit: 128,
  testLimit: 32,
  batchSize: 32,
  lr: 3e-3,
  lrSchedule: 'constant',
  seed: 7,
  workers: 0,
  epochs: 1,
  evalUs: [1],
};

async function trainTo(out: string, extra: TrainOptions = {}) {
  const r = await train({ ...tiny, out, ...extra });
  r.model.dispose();
  return r;
}

/** Every file under `dir` with a hash of its bytes: equal snapshots mean nothing on disk changed. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const file = path.join(dir, name);
    if (fs.statSync(file).isFile()) out[name] = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  }
  return out;
}

async function refuses(dir: string, options: TrainOptions, pattern: RegExp): Promise<void> {
  const before = snapshot(dir);
  let steps = 0;
  await assert.rejects(train({ ...tiny, out: dir, ...options, onStep: () => steps++ }), (err: unknown) => {
    assert.ok(err instanceof DynnError, `a DynnError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
  assert.equal(steps, 0, 'refused before any training step');
  assert.deepEqual(snapshot(dir), before, 'nothing on disk changed');
}

test('--resume without checkpoint.json refuses and leaves the weights and optimizer files alone', async () => {
  const dir = fresh();
  await trainTo(dir);
  fs.rmSync(path.join(dir, 'checkpoint.json'));
  await refuses(dir, { resume: true }, /cannot resume .*: it has no checkpoint\.json \(it holds optimizer-[0-9a-f]{16}\.bin, weights-[0-9a-f]{16}\.bin/);
  await assert.rejects(train({ ...tiny, out: fresh(), resume: true }), /cannot resume .*: it does not exist/);
});

test('an existing run is neither overwritten nor resumed unless asked; --force replaces it', async () => {
  const dir = fresh();
  await trainTo(dir);
  await refuses(dir, {}, /already holds a training run \(mlp-w on synthetic, 1 epoch\); use --resume to continue it or --force to replace it/);
  await refuses(dir, { resume: true, force: true }, /pass one of them/);
  const oldWeights = fs.readdirSync(dir).filter((f) => f.startsWith('weights-'));
  // Files made from the old weights, and one of the user's own.
  const derived = ['eval-oracle.json', 'model.onnx', 'sweep.json'];
  for (const f of [...derived, 'notes.txt']) fs.writeFileSync(path.join(dir, f), '{}');
  await assert.rejects(train({ ...tiny, out: dir, force: true, dataset: 'no-such-data' }), /unknown dataset/);
  for (const f of derived) assert.ok(fs.existsSync(path.join(dir, f)), `a replacement that failed before its first checkpoint keeps ${f}`);
  const replaced = await trainTo(dir, { force: true, seed: 8 });
  assert.deepEqual(replaced.removedStale, derived);
  for (const f of derived) assert.ok(!fs.existsSync(path.join(dir, f)), `${f} of the replaced run is removed`);
  assert.ok(fs.existsSync(path.join(dir, 'notes.txt')), 'a file no command made stays');
  assert.equal(replaced.meta.seed, 8);
  const loaded = await loadRun(dir);
  assert.equal(loaded.meta.seed, 8);
  loaded.model.dispose();
  assert.ok(!fs.existsSync(path.join(dir, oldWeights[0]!)), 'the replaced run’s weights are gone after the new commit');
});

test('a non-empty directory that is not a run needs --force; empty, missing or an interrupted start are fine', async () => {
  const dir = fresh();
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  await refuses(dir, {}, /is not empty and holds no training run \(notes\.txt\); use --force to train into it anyway/);
  await trainTo(dir, { force: true });
  assert.equal(fs.readFileSync(path.join(dir, 'notes.txt'), 'utf8'), 'mine');
  const empty = fresh();
  fs.mkdirSync(empty);
  await trainTo(empty);
  const interrupted = fresh();
  fs.mkdirSync(interrupted);
  fs.writeFileSync(path.join(interrupted, 'progress.json'), '{}');
  await trainTo(interrupted);
  await trainTo(path.join(fresh(), 'a', 'b'));
});

test('--out that is a file, or under a file, is refused before training', async () => {
  const file = path.join(root, 'a-file');
  fs.writeFileSync(file, 'x');
  await refuses(root, { out: file }, /--out .*a-file is a file, not a run directory/);
  await refuses(root, { out: path.join(file, 'run') }, /cannot create the run directory .*: .*a-file is a file, not a directory/);
});

test('--resume restores the recorded options and trains on to a new --epochs', async () => {
  const dir = fresh();
  const first = await trainTo(dir, { schedule: 'vanilla', validationSamples: 16 });
  const r = await train({ out: dir, resume: true, epochs: 2, workers: 0 });
  r.model.dispose();
  assert.equal(r.epochsTrained, 1);
  assert.equal(r.meta.history.length, 2);
  assert.equal(r.meta.dataset, 'synthetic');
  for (const key of ['model', 'dataset', 'trainLimit', 'testLimit', 'batchSize', 'lr', 'lrSchedule', 'schedule', 'seed', 'evalUs', 'validationSamples']) {
    assert.deepEqual(r.meta.options[key], first.meta.options[key], key);
  }
  const loaded = await loadRun(dir);
  assert.deepEqual(loaded.model.config.args.hidden, [8]);
  loaded.model.dispose();
});

test('--resume refuses options that contradict the run, naming each', async () => {
  const dir = fresh();
  await trainTo(dir);
  await refuses(dir, { resume: true, dataset: 'mnist' }, /--dataset mnist contradicts the run \(trained on synthetic\)/);
  await refuses(
    dir,
    { resume: true, lrSchedule: 'cosine', modelArgs: { groups: 4 }, trainLimit: 64 },
    /--train-limit 64 contradicts the run \(trained with 128\); --lr-schedule cosine contradicts the run \(trained with constant\); --groups 4 contradicts the run \(trained with 8\)/,
  );
  await refuses(dir, { resume: true, validationSamples: 8 }, /--val-samples 8 contradicts/);
  // Operational options may differ, and options equal to the record are no contradiction.
  const r = await train({ ...tiny, out: dir, resume: true, epochs: 2, workers: 0, engine: 'wasm' });
  r.model.dispose();
  assert.equal(r.meta.history.length, 2);
});

test('resuming a complete run trains nothing and changes nothing; fewer epochs are refused', async () => {
  const dir = fresh();
  await trainTo(dir);
  const before = snapshot(dir);
  const r = await train({ out: dir, resume: true, workers: 0 });
  assert.equal(r.epochsTrained, 0);
  assert.equal(r.meta.epoch, 1);
  r.model.dispose();
  assert.deepEqual(snapshot(dir), before);
  await trainTo(dir, { resume: true, epochs: 2 });
  await refuses(dir, { resume: true, epochs: 1 }, /--epochs 1 is fewer than the 2 epochs it has already trained/);
});

test('a test split whose image size or classes differ from the training split is refused before training', async () => {
  const synth = (h: number, labels?: number) => {
    const set = makeSynthetic({ count: 32, seed: 1 });
    if (h !== set.height) Object.assign(set, { height: h, width: h, images: set.images.subarray(0, 32 * h * h) });
    if (labels !== undefined) set.labels[0] = labels;
    return set;
  };
  datasets.register('test-split-shape', async () => ({ name: 'test-split-shape', numClasses: 10, classNames: [], train: synth(28), test: synth(14) }));
  datasets.register('test-split-classes', async () => ({ name: 'test-split-classes', numClasses: 10, classNames: [], train: synth(28), test: synth(28, 12) }));
  const dir = fresh();
  fs.mkdirSync(dir);
  await refuses(dir, { dataset: 'test-split-shape', trainLimit: undefined, testLimit: undefined }, /test-split-shape: the test set has 14x14x1 images but the training set has 28x28x1/);
  await refuses(dir, { dataset: 'test-split-classes', trainLimit: undefined, testLimit: undefined }, /the test set has labels up to 12 \(13 classes\) but the data set has 10 classes/);
});

test('hand-edited metadata and model args fail with the field path, and free what they built', async () => {
  const dir = fresh();
  await trainTo(dir);
  const file = path.join(dir, 'checkpoint.json');
  const text = fs.readFileSync(file, 'utf8');
  const cases: [(m: any) => void, RegExp][] = [
    [(m) => (m.meta.history[0].loss = '__INF__'), /meta\.history\[0\]\.loss: /],
    [(m) => delete m.meta.history[0].testAccuracy, /meta\.history\[0\]\.testAccuracy: /],
    [(m) => (m.meta.options.lrSchedule = 'step'), /meta\.options\.lrSchedule: /],
    [(m) => (m.meta.epoch = -1), /meta\.epoch: /],
    [(m) => (m.config.args.hidden = 'abc'), /config\.args\.hidden: /],
    [(m) => (m.config.args.hidden = [8, 'a']), /config\.args\.hidden\[1\]: /],
    [(m) => (m.config.args.hidden = [2 ** 31]), /config\.args\.hidden\[0\]: 2147483648 is larger than any weight dimension/],
    [(m) => (m.config.args.inputShape = [4096, 4096, 3]), /config\.args\.inputShape: 4096x4096x3 inputs have more values than/],
    [(m) => (m.config.args.hidden = [16]), /weights do not match the model/],
    [(m) => (m.config.args.groups = 3), /cannot rebuild its network: fc1: 8 units do not split into 3 groups/],
  ];
  const tensors = tf.memory().numTensors;
  for (const [edit, pattern] of cases) {
    const m = JSON.parse(text);
    edit(m);
    fs.writeFileSync(file, JSON.stringify(m).replace('"__INF__"', '1e999'));
    await assert.rejects(loadRun(dir), (err: unknown) => err instanceof DynnError && pattern.test(err.message), String(pattern));
    assert.equal(tf.memory().numTensors, tensors, String(pattern));
  }
  fs.writeFileSync(file, text);
});

/** Values a hand edit might leave: other types, out-of-range numbers, Infinity (written as 1e999), huge sizes. */
const editedValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }).filter((v) => typeof v !== 'number' || Math.abs(v) > 1e5 || Math.abs(v) < 64),
  fc.constantFrom('__INF__', -1, 0, 0.5, 2 ** 31, 1e300, null, [], {}, [8, 8], 'mlp-w'),
);

/** Every path in a JSON value, the root excluded. */
function pathsOf(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  if (value === null || typeof value !== 'object') return [];
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v] as const) : Object.entries(value);
  return entries.flatMap(([k, v]) => [[...prefix, k], ...pathsOf(v, [...prefix, k])]);
}

function edit(target: any, at: (string | number)[], value: unknown): void {
  let node = target;
  for (const key of at.slice(0, -1)) {
    if (node === null || typeof node !== 'object') return;
    node = node[key];
  }
  if (node === null || typeof node !== 'object') return;
  const key = at[at.length - 1]!;
  // An earlier edit may have put an array where an object was; its `length` is not a field a file can hold.
  if (Array.isArray(node) && key === 'length') return;
  if (value === undefined) {
    if (Array.isArray(node)) node.splice(Number(key), 1);
    else delete node[key];
  } else node[key] = structuredClone(value);
}

test('property: any edit of checkpoint.json or corruption of the weights loads a run or fails with a DynnError', async () => {
  const dir = fresh();
  await trainTo(dir);
  const file = path.join(dir, 'checkpoint.json');
  const text = fs.readFileSync(file, 'utf8');
  const paths = pathsOf(JSON.parse(text));
  const weights = path.join(dir, fs.readdirSync(dir).find((f) => f.startsWith('weights-'))!);
  const bytes = fs.readFileSync(weights);
  const tensors = tf.memory().numTensors;
  const outcomes = { loaded: 0, refused: 0 };
  const loads = async () => {
    try {
      (await loadRun(dir)).model.dispose();
      outcomes.loaded++;
    } catch (err) {
      assert.ok(err instanceof DynnError, `expected a DynnError, got ${err instanceof Error ? err.stack : String(err)}`);
      outcomes.refused++;
    }
    assert.equal(tf.memory().numTensors, tensors, 'no tensors leak');
  };
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.nat(), fc.option(editedValue, { nil: undefined })), { minLength: 1, maxLength: 3 }), async (edits) => {
      const m = JSON.parse(text);
      for (const [i, value] of edits) edit(m, paths[i % paths.length]!, value);
      fs.writeFileSync(file, JSON.stringify(m).replaceAll('"__INF__"', '1e999'));
      await loads();
    }),
    { numRuns: 150, timeout: 5000 },
  );
  await fc.assert(
    fc.asyncProperty(fc.oneof(fc.jsonValue(), fc.string()), async (value) => {
      fs.writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value));
      await loads();
    }),
    { numRuns: 50, timeout: 5000 },
  );
  assert.ok(outcomes.loaded > 0 && outcomes.refused > 0, `both outcomes occur: ${JSON.stringify(outcomes)}`);
  fs.writeFileSync(file, text);
  await fc.assert(
    fc.asyncProperty(fc.uniqueArray(fc.tuple(fc.nat(bytes.length - 1), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4, selector: ([at]) => at }), fc.integer({ min: -8, max: 8 }), async (flips, resize) => {
      const bad = Buffer.from(bytes);
      for (const [at, x] of flips) bad[at]! ^= x;
      fs.writeFileSync(weights, resize < 0 ? bad.subarray(0, bad.length + resize) : Buffer.concat([bad, Buffer.alloc(resize)]));
      await assert.rejects(loadRun(dir), (err: unknown) => err instanceof DynnError && /corrupt|truncated|wrong size/.test(err.message));
      assert.equal(tf.memory().numTensors, tensors);
    }),
    { numRuns: 40, timeout: 5000 },
  );
  fs.writeFileSync(weights, bytes);
  (await loadRun(dir)).model.dispose();
});

test('a mixture saved before its routing priority was recorded loads in batch order; a new one records score', async () => {
  const dir = fresh();
  const r = await trainTo(dir, { model: 'mlp-moe', modelArgs: { experts: 2, hidden: 8 } });
  assert.equal(r.meta.epoch, 1);
  const loaded = await loadRun(dir);
  assert.equal(loaded.model.config.args.priority, 'score');
  loaded.model.dispose();
  const file = path.join(dir, 'checkpoint.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  delete manifest.config.args.priority;
  fs.writeFileSync(file, JSON.stringify(manifest));
  const old = await loadRun(dir);
  assert.equal(old.model.config.args.priority, 'batch');
  old.model.dispose();
});

test('fractional model arguments the flags take (a capacity factor, a temperature, a gate scale) load back; fractional sizes do not', async () => {
  const dir = fresh();
  await trainTo(dir, { model: 'mlp-moe', modelArgs: { experts: 2, hidden: 8, evalCapacityFactor: 1.25, switchWeight: 0.05 } });
  const loaded = await loadRun(dir);
  assert.equal(loaded.model.config.args.evalCapacityFactor, 1.25);
  loaded.model.dispose();
  const file = path.join(dir, 'checkpoint.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  for (const [key, value] of [['temperature', 2.5], ['gateScale', 1.5], ['annealEpochs', 3]] as const) {
    fs.writeFileSync(file, JSON.stringify({ ...manifest, config: { ...manifest.config, args: { ...manifest.config.args, [key]: value } } }));
    assert.equal(checkModelArgs(await readCheckpointInfo(dir), file)[key], value, key);
  }
  for (const [key, value] of [['experts', 2.5], ['evalCapacityFactor', -1], ['hidden', 8.5]] as const) {
    fs.writeFileSync(file, JSON.stringify({ ...manifest, config: { ...manifest.config, args: { ...manifest.config.args, [key]: value } } }));
    await assert.rejects(loadRun(dir), new RegExp(`config\\.args\\.${key}`), key);
  }
});
