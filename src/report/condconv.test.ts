import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { initEngine } from '../engine/backend.js';
import { train } from '../train/trainer.js';
import { writeReport } from './index.js';
import { tempDir } from './fixtures.js';

test('the report draws a CondConv run\'s routing: the entropy per layer and the class-by-kernel tables', async () => {
  await initEngine('wasm');
  const root = tempDir();
  const run = path.join(root, 'cc');
  const r = await train({ model: 'vgg-condconv', modelArgs: { widths: [4, 4, 8, 8], hidden: 8, experts: 3 }, dataset: 'synthetic', trainLimit: 64, testLimit: 40, epochs: 1, batchSize: 32, workers: 0, evalUs: [1], out: run });
  r.model.dispose();
  const out = path.join(root, 'report.html');
  const report = await writeReport([run], out, { testLimit: 40, latency: false });
  const html = readFileSync(out, 'utf8');
  assert.ok(report.sections.find((s) => s.name === 'condconv-routing')?.available);
  const body = /<section id="sec-[^"]+" data-section="condconv-routing" data-available="true">([\s\S]*?)<\/section>/.exec(html)?.[1] ?? '';
  assert.match(body, /x \* \(W \(x\) a\)/);
  assert.equal((body.match(/<figure class="chart"/g) ?? []).length, 1);
  for (const layer of ['c2.conv', 'c3.conv', 'c4.conv']) assert.match(body, new RegExp(`cc · ${layer.replace('.', '\\.')}: mean mixing weight per class and kernel`));
  assert.match(body, /kernel 2/);
});
