/**
 * Where a training step's time goes: times every wasm kernel (top-level calls only) over gradient steps of
 * vgg-w at a few u, one thread. Not a test. Usage: [SHAPES=1] [TOP=14] [ORT_MIN_FLOPS=N] [MODEL=name]
 * [DYNAMIC=mechanism: its gates decide in soft mode, once per u] [GATE_SHIFT=d] node dist/bench/profile-step.js [batch=64] [steps=6]
 */
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../src/engine/backend.js';
import { createModel } from '../src/models/zoo.js';
import { allLayers } from '../src/models/network.js';
import { makeSynthetic } from '../src/data/synthetic.js';
import { flatLayout, gradientStep } from '../src/train/step.js';
import { toFloat } from '../src/data/imageset.js';
import { setOrtMinFlops } from '../src/engine/ort-kernels.js';
import { LogitGate } from '../src/route/gates.js';

const batch = Number(process.argv[2] ?? 64);
const steps = Number(process.argv[3] ?? 6);
await initEngine('wasm');
// ORT_MIN_FLOPS=N sends calls of N FLOPs and more to ONNX Runtime, filter gradients from a quarter of N (0: all of them, whatever their channels).
if (process.env.ORT_MIN_FLOPS) setOrtMinFlops(Number(process.env.ORT_MIN_FLOPS));
const times = new Map<string, number>();
const calls = new Map<string, number>();
let depth = 0;
for (const k of tf.getKernelsForBackend('wasm')) {
  const inner = k.kernelFunc;
  tf.unregisterKernel(k.kernelName, 'wasm');
  tf.registerKernel({
    ...k,
    kernelFunc: (a) => {
      if (depth > 0) return inner(a);
      depth++;
      const t0 = performance.now();
      try {
        return inner(a);
      } finally {
        depth--;
        const key = process.env.SHAPES ? `${k.kernelName} ${JSON.stringify(Object.values(a.inputs).filter((t) => t != null).map((t) => (t as { shape: number[] }).shape))}` : k.kernelName;
        times.set(key, (times.get(key) ?? 0) + performance.now() - t0);
        calls.set(key, (calls.get(key) ?? 0) + 1);
      }
    },
  });
}
const dynamic = process.env.DYNAMIC;
const model = createModel(process.env.MODEL ?? 'vgg-w', dynamic ? { dynamic } : {});
// GATE_SHIFT=d adds d to every logit of the gates that give logits (LogitGate; they are built open):
// decisions that skip, as a trained model's.
if (process.env.GATE_SHIFT) {
  for (const l of allLayers(model.layers)) if (l instanceof LogitGate) l.shiftLogits(Number(process.env.GATE_SHIFT));
}
const data = makeSynthetic({ count: batch, seed: 0 });
const layout = flatLayout(model);
const images = toFloat(data, 0, batch);
const grads = new Float32Array(layout.total);
for (const u of (process.env.US ?? "1,0.5,0.25").split(",").map(Number)) {
  const plan = dynamic ? { plans: [model.plan(1)], routing: { mode: 'soft' as const, seed: 0, efficiency: { target: u, weight: 4 } } } : model.plan(u);
  for (let i = 0; i < 2; i++) gradientStep(model, layout, images, data.labels, plan, grads);
  times.clear();
  calls.clear();
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) gradientStep(model, layout, images, data.labels, plan, grads);
  const total = (performance.now() - t0) / steps;
  const kern = [...times.values()].reduce((a, b) => a + b, 0) / steps;
  console.log(`u=${u}: ${total.toFixed(1)} ms/step, kernels ${kern.toFixed(1)} ms`);
  const rows = [...times].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.TOP ?? 14));
  for (const [k, t] of rows) console.log(`  ${k.padEnd(24)} ${(t / steps).toFixed(1).padStart(7)} ms  ${(calls.get(k)! / steps).toFixed(0)} calls`);
}
