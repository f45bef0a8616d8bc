// Layouts of a gated block's body in a segments export, timed in onnxruntime-node on resnet38's s2.b1
// (64 channels, 8 groups; 32x32 inputs, so 8x8 maps) at batch 64, one thread:
//   chain:   one graph, inputs x and k, an If chain over k whose branches slice the weights with constant
//            bounds (what dynn writes; ONNX Runtime folds the slices at load);
//   per-k:   one graph per k, constant slices, no If;
//   dynamic: one graph whose Slice ends and BatchNorm row come from k at run time (the weights are sliced
//            on every run and cannot be pre-packed); an If only for k = 0 (the shortcut alone).
// Run: npx tsc -p tsconfig.json && node dist/bench/segments.js
import ort from 'onnxruntime-node';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { fullSel } from '../src/layers/select.js';
import { GatedResidualBlock } from '../src/route/residual.js';
import { bodyGraph, SegmentGraph } from '../src/export/segments.js';
import { attr, floatValueInfo, GraphBuilder } from '../src/export/graph.js';
import { SEGMENT_IO } from '../src/export/manifest.js';

await initEngine('wasm');
const model = createModel('resnet38', { inputShape: [32, 32, 3], numClasses: 10, dynamic: 'acs-gn' });
const block = model.layers.find((l) => l.name === 's2.b1') as GatedResidualBlock;
const full = model.plan(1);
const [h, w, c] = block.inShape;
const G = block.args.groups;
const width = block.args.filters / G;
const weights = model.getWeights();
const sel = fullSel(c);

/** The dynamic layout (stride 1, identity shortcut: what s2.b1 is). */
function dynamicBody(): Uint8Array {
  const n = block.name;
  const sg = new SegmentGraph(`${n}_dynamic`, weights, block.children().filter((l) => l.name !== `${n}.gate`));
  const g = sg.g;
  g.input(floatValueInfo(SEGMENT_IO.x, ['batch', c, h, w]));
  g.input(floatValueInfo(SEGMENT_IO.k, []));
  const out = (name: string) => floatValueInfo(name, ['batch', c, h, w]);
  const kInt = g.node('Cast', [SEGMENT_IO.k], 'k_int', { to: attr.int(7) });
  const ends = g.node('Reshape', [g.node('Mul', [kInt, g.int64Const('width', [width])], 'kc'), g.int64Const('one', [1])], 'ends');
  const zero = g.int64Const('zero', [0]);
  const cut = (gr: GraphBuilder, x: string, axis: number) => gr.node('Slice', [x, zero, ends, gr.int64Const(`axis_${axis}`, [axis])], `${x}/cut`);
  const row = (gr: GraphBuilder, stat: string) => gr.node('Gather', [stat, kInt], `${stat}/row`, { axis: attr.int(0) });
  const conv = (gr: GraphBuilder, x: string, kernel: string) => gr.node('Conv', [x, kernel], `${kernel}/conv`, { kernel_shape: attr.ints([3, 3]), pads: attr.ints([1, 1, 1, 1]) });
  const bn = (gr: GraphBuilder, x: string, name: string, sliced: boolean) => {
    const p = (s: string) => (sliced ? cut(gr, s, 0) : s);
    const stat = (s: string) => (sliced ? cut(gr, row(gr, s), 0) : row(gr, s));
    return gr.node('BatchNormalization', [x, p(`${name}.gamma`), p(`${name}.beta`), stat(`${name}.running_mean`), stat(`${name}.running_var`)], `${name}/y`, { epsilon: attr.float(1e-5) });
  };
  const on = new GraphBuilder('groups_on', sg.names);
  const h1 = on.node('Relu', [bn(on, conv(on, SEGMENT_IO.x, cut(on, `${n}.conv1.kernel`, 0)), `${n}.bn1`, true)], 'h1');
  const main = bn(on, conv(on, h1, cut(on, `${n}.conv2.kernel`, 1)), `${n}.bn2`, false);
  on.output(out(on.node('Relu', [on.node('Add', [main, SEGMENT_IO.x], 'sum')], 'y_on')));
  const off = new GraphBuilder('groups_off', sg.names);
  off.output(out(off.node('Relu', [SEGMENT_IO.x], 'y_off')));
  const any = g.node('GreaterOrEqual', [SEGMENT_IO.k, g.floatConst('half', [], [0.5])], 'any');
  g.nodeOutputsTo('If', [any], [SEGMENT_IO.y], { then_branch: attr.graph(on.build()), else_branch: attr.graph(off.build()) });
  g.output(out(SEGMENT_IO.y));
  return sg.finish('').bytes;
}

const batch = 64;
const x = new ort.Tensor('float32', Float32Array.from({ length: batch * c * h * w }, (_, i) => Math.sin(i)), [batch, c, h, w]);
const kT = (k: number) => new ort.Tensor('float32', Float32Array.of(k), []);
const opts: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: 1, logSeverityLevel: 3 };
const chain = await ort.InferenceSession.create(bodyGraph(weights, block, sel, full).finish('').bytes, opts);
const dynamic = await ort.InferenceSession.create(dynamicBody(), opts);
const perK = await Promise.all(Array.from({ length: G + 1 }, (_, k) => ort.InferenceSession.create(bodyGraph(weights, block, sel, full, k).finish('').bytes, opts)));

// The three agree.
for (const k of [0, 3, G]) {
  const a = (await chain.run({ x, k: kT(k) })).y.data as Float32Array;
  const b = (await dynamic.run({ x, k: kT(k) })).y.data as Float32Array;
  const d = (await perK[k].run({ x })).y.data as Float32Array;
  let err = 0;
  a.forEach((v, i) => (err = Math.max(err, Math.abs(v - b[i]), Math.abs(v - d[i]))));
  if (err > 1e-4) throw new Error(`layouts differ at k = ${k}: ${err}`);
}

const median = (a: number[]) => a.sort((p, q) => p - q)[Math.floor(a.length / 2)];
const reps = 40;
console.log(`block ${block.name}: [${c}, ${h}, ${w}], ${G} groups, batch ${batch}, 1 thread; median ms of ${reps} runs, the layouts taking turns`);
console.log('k  chain  per-k  dynamic  chain/per-k  dynamic/per-k');
for (let k = 0; k <= G; k++) {
  const runs = [() => chain.run({ x, k: kT(k) }), () => perK[k].run({ x }), () => dynamic.run({ x, k: kT(k) })];
  for (const r of runs) for (let i = 0; i < 3; i++) await r();
  const t: number[][] = runs.map(() => []);
  for (let i = 0; i < reps; i++) {
    for (let j = 0; j < runs.length; j++) {
      const s = performance.now();
      await runs[j]();
      t[j].push(performance.now() - s);
    }
  }
  const [a, b, d] = t.map(median);
  console.log(`${k}  ${a.toFixed(3)}  ${b.toFixed(3)}  ${d.toFixed(3)}  ${(a / b).toFixed(2)}  ${(d / b).toFixed(2)}`);
}
