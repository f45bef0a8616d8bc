import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { loadCheckpoint } from '../checkpoint/checkpoint.js';
import { saveRun, type TrainMeta } from '../train/run.js';
import { Optimizer } from '../train/optimizer.js';
import { calibrateRun } from './calibrate.js';

before(async () => {
  await initEngine('wasm');
});

const meta: TrainMeta = {
  dynnVersion: 'test',
  dataset: 'synthetic',
  trainSamples: 256,
  validationSamples: 64,
  testSamples: 64,
  options: { trainLimit: 320 },
  seed: 3,
  epoch: 1,
  history: [],
};

test('calibrate rewrites the BatchNorm statistics of exactly the requested widths in the checkpoint', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynn-calibrate-'));
  const m = createModel('vgg-w', { seed: 1 });
  const opt = new Optimizer('adam', 1e-3);
  await saveRun(dir, m, meta, opt);
  const before = await loadCheckpoint(dir);
  const r = await calibrateRun(dir, { us: [0.3, 0.6], samples: 128 });
  assert.deepEqual(r.levels, [m.levelOf(0.3), m.levelOf(0.6)]);
  assert.deepEqual(r.levels, [2, 5]);
  const after = await loadCheckpoint(dir);
  const byName = new Map(after.weights.map((w) => [w.name, w]));
  let changedRows = 0;
  for (const w of before.weights) {
    const a = byName.get(w.name)!;
    if (!/\.running_(mean|var)$/.test(w.name)) {
      assert.deepEqual(a.data, w.data, `${w.name} untouched`);
      continue;
    }
    const [levels, c] = w.shape;
    for (let level = 0; level < levels; level++) {
      const row = (d: Float32Array) => Array.from(d.subarray(level * c, (level + 1) * c));
      if (r.levels.includes(level)) {
        // The channels active at that width changed; the inactive ones kept their values.
        const active = w.name.startsWith('stem') ? c : (level * c) / 8;
        assert.notDeepEqual(row(a.data).slice(0, active), row(w.data).slice(0, active), `${w.name} level ${level} recalibrated`);
        assert.deepEqual(row(a.data).slice(active), row(w.data).slice(active), `${w.name} level ${level}: inactive channels kept`);
        changedRows++;
      } else {
        assert.deepEqual(row(a.data), row(w.data), `${w.name} level ${level} untouched`);
      }
    }
  }
  assert.equal(changedRows, 2 * 2 * 4, 'mean and variance of 4 BatchNorms at 2 levels');
  assert.equal(r.rows, 2 * 4);
  assert.deepEqual(after.optimizer?.arrays.length, before.optimizer?.arrays.length, 'optimizer state kept');
  assert.deepEqual((after.meta.calibrations as unknown[]).length, 1);
  assert.equal(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')).length, 0);

  await assert.rejects(calibrateRun(dir, { us: [1.5] }), /utilization u must be a number in \(0, 1\], got 1.5/);
  await assert.rejects(calibrateRun(dir, { us: [0.5], dataset: 'cifar10', dataDir: dir }), /cifar|CIFAR/);
  const unchanged = await loadCheckpoint(dir);
  assert.deepEqual(unchanged.weights.map((w) => w.data), after.weights.map((w) => w.data), 'a failed calibration changes nothing');
  opt.dispose();
  m.dispose();
  fs.rmSync(dir, { recursive: true });
});
