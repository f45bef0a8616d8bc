import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DynnError } from '../util/errors.js';
import { head, loadDataset, makeStream, makeSynthetic, STREAM_RANGES, tail } from './index.js';

const base = makeSynthetic({ count: 200, height: 12, width: 12, numClasses: 10, seed: 3 });

test('a stream repeats under its seed, and fewer frames are the first frames of more', () => {
  const a = makeStream(base, { frames: 300, length: 50, seed: 7 });
  const b = makeStream(base, { frames: 300, length: 50, seed: 7 });
  const c = makeStream(base, { frames: 300, length: 50, seed: 8 });
  const short = makeStream(base, { frames: 120, length: 50, seed: 7 });
  assert.deepEqual(a.images, b.images);
  assert.deepEqual(a.labels, b.labels);
  assert.notDeepEqual(a.images, c.images);
  assert.deepEqual(short.images, a.images.subarray(0, 120 * 144));
  assert.deepEqual(short.sequence, a.sequence.subarray(0, 120));
});

test('items stay for a while and change; sequences are in order; difficulty drifts smoothly', () => {
  const s = makeStream(base, { frames: 4000, length: 100, hold: 20, drift: 0.04, seed: 1 });
  assert.equal(s.count, 4000);
  assert.deepEqual([...new Set(s.sequence)], Array.from({ length: 40 }, (_, i) => i));
  let changes = 0;
  let within = 0;
  let stepWithin = 0;
  let stepAcross = 0;
  let across = 0;
  for (let f = 1; f < s.count; f++) {
    const same = s.sequence[f] === s.sequence[f - 1];
    const step = Math.abs(s.difficulty[f] - s.difficulty[f - 1]);
    if (same) {
      within++;
      stepWithin += step;
      // A frame differs from the one before it only in its item or its walks: a changed label means a changed item.
      if (s.labels[f] !== s.labels[f - 1]) changes++;
    } else {
      across++;
      stepAcross += step;
    }
  }
  // Items change with probability 1/20 per frame; 9 in 10 changes land on another class.
  const rate = changes / within;
  assert.ok(rate > 0.025 && rate < 0.07, `label changes per frame ${rate}`);
  // Within a sequence difficulty moves by small steps; a new sequence starts anywhere.
  assert.ok(stepWithin / within < 0.03, `mean step within ${stepWithin / within}`);
  assert.ok(stepAcross / across > 3 * (stepWithin / within), `mean step across ${stepAcross / across}`);
  for (const d of s.difficulty) assert.ok(d >= 0 && d <= 1);
  // The walks reach the hard end and the easy end of the range.
  assert.ok(Math.min(...s.difficulty) < 0.25 && Math.max(...s.difficulty) > 0.6);
});

test('harder frames are further from their clean source image', () => {
  // One item per sequence (hold longer than the stream) so every frame of sequence k shows the same image.
  const s = makeStream(base, { frames: 2000, length: 200, hold: 1e9, seed: 2 });
  const per = 144;
  const pairs: [number, number][] = [];
  for (let q = 0; q < 10; q++) {
    const f0 = q * 200;
    const ref = s.images.subarray(f0 * per, (f0 + 1) * per);
    for (let f = f0; f < f0 + 200; f++) {
      let d = 0;
      for (let p = 0; p < per; p++) d += Math.abs(s.images[f * per + p] - ref[p]);
      pairs.push([s.difficulty[f] - s.difficulty[f0], d]);
    }
  }
  // Distance to the sequence's first frame grows with the change in difficulty (rank correlation > 0).
  const harder = pairs.filter(([dd]) => dd > 0.15).map(([, d]) => d);
  const same = pairs.filter(([dd]) => Math.abs(dd) < 0.02).map(([, d]) => d);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  assert.ok(harder.length > 20 && same.length > 20);
  assert.ok(mean(harder) > mean(same), `harder ${mean(harder)} vs same ${mean(same)}`);
});

test('head and tail keep the frames their sequence and difficulty', () => {
  const s = makeStream(base, { frames: 250, length: 100, seed: 4 });
  const h = head(s, 120);
  const t = tail(s, 50);
  assert.equal(h.sequence!.length, 120);
  assert.equal(t.sequence!.length, 50);
  assert.deepEqual(t.sequence, s.sequence.subarray(200));
  assert.deepEqual(t.difficulty, s.difficulty.subarray(200));
});

test('bad stream options are clear errors', () => {
  assert.throws(() => makeStream(base, { frames: 0 }), (e: Error) => e instanceof DynnError && /positive integer number of frames/.test(e.message));
  assert.throws(() => makeStream(base, { frames: 10, length: 2.5 }), /sequence length must be a positive integer/);
  assert.throws(() => makeStream(base, { frames: 10, hold: 0.5 }), /hold must be at least 1/);
  assert.throws(() => makeStream(base, { frames: 10, drift: 2 }), /drift must be in \[0, 1\]/);
  assert.throws(() => makeStream({ ...base, count: 0 }, { frames: 10 }), /at least one source image/);
});

test('fashion-mnist-stream: registered, fixed whatever the run seed, labels from Fashion-MNIST', async () => {
  const a = await loadDataset('fashion-mnist-stream', { trainLimit: 300, testLimit: 200, seed: 1 });
  const b = await loadDataset('fashion-mnist-stream', { trainLimit: 300, testLimit: 200, seed: 99 });
  assert.equal(a.name, 'fashion-mnist-stream');
  assert.equal(a.numClasses, 10);
  assert.deepEqual([a.train.count, a.test.count, a.train.height, a.train.width], [300, 200, 28, 28]);
  assert.deepEqual(a.train.images, b.train.images);
  assert.notDeepEqual(a.train.images.subarray(0, 784 * 100), a.test.images.subarray(0, 784 * 100));
  assert.equal(a.test.sequence![199], 1);
  for (const l of a.test.labels) assert.ok(l < 10);
  assert.ok(STREAM_RANGES.noise[1] <= 0.5);
});

test('fashion-mnist-distorted: the stream’s distortions on independent frames, no sequences', async () => {
  const d = await loadDataset('fashion-mnist-distorted', { trainLimit: 2000, testLimit: 100 });
  assert.equal(d.train.sequence, undefined);
  assert.equal(d.train.count, 2000);
  // Every frame a new draw: labels change from one frame to the next about 9 times in 10, not 1 in 20.
  let changes = 0;
  for (let i = 1; i < d.train.count; i++) if (d.train.labels[i] !== d.train.labels[i - 1]) changes++;
  assert.ok(changes / (d.train.count - 1) > 0.8, `label changes ${changes}`);
  const diff = d.train.difficulty!;
  assert.ok(Math.abs(diff[1] - diff[0]) + Math.abs(diff[2] - diff[1]) > 0.01);
});
