// Body layout of a segments export: one graph per gated block with an If chain over k (what dynn writes)
// against one graph per k, in onnxruntime-node, on resnet38's widest gated block at batch 64.
// Run: npx tsc -p tsconfig.json && node dist/bench/segments.js
import ort from 'onnxruntime-node';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { fullSel } from '../src/layers/select.js';
import { GatedResidualBlock } from '../src/route/residual.js';
import { bodyGraph } from '../src/export/segments.js';

await initEngine('wasm');
const model = createModel('resnet38', { inputShape: [32, 32, 3], numClasses: 10, dynamic: 'acs-gn' });
const block = model.layers.find((l) => l.name === 's2.b1') as GatedResidualBlock;
const full = model.plan(1);
const sel = fullSel(block.inShape[2]);
const G = block.args.groups;
const [h, w, c] = block.inShape;
const batch = 64;
const x = new ort.Tensor('float32', Float32Array.from({ length: batch * c * h * w }, (_, i) => Math.sin(i)), [batch, c, h, w]);
const opts: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: 1 };
const chain = await ort.InferenceSession.create(bodyGraph(model, block, sel, full).finish('').bytes, opts);
const perK = await Promise.all(Array.from({ length: G + 1 }, (_, k) => ort.InferenceSession.create(bodyGraph(model, block, sel, full, k).finish('').bytes, opts)));
const median = (a: number[]) => a.sort((p, q) => p - q)[Math.floor(a.length / 2)];
async function time(run: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 3; i++) await run();
  const t: number[] = [];
  for (let i = 0; i < 30; i++) {
    const s = performance.now();
    await run();
    t.push(performance.now() - s);
  }
  return median(t);
}
console.log(`block ${block.name}: [${c}, ${h}, ${w}], ${G} groups, batch ${batch}, 1 thread; ms per run (median of 30)`);
for (let k = 0; k <= G; k++) {
  // In turns, so drift hits both alike.
  const a = await time(() => chain.run({ x, k: new ort.Tensor('float32', Float32Array.of(k), []) }));
  const b = await time(() => perK[k].run({ x }));
  console.log(`k = ${k}: If chain ${a.toFixed(3)} ms, graph of this k ${b.toFixed(3)} ms, ratio ${(a / b).toFixed(2)}`);
}
