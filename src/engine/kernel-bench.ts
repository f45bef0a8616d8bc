/**
 * Times one training step (forward + tf.variableGrads) of conv32-conv32-pool-conv64-conv64-pool-dense256-dense10
 * on 28x28x1 inputs on the wasm backend: with all of dynn's kernels (the ONNX Runtime ones included unless
 * DYNN_ORT_KERNELS=0), with wasm's stock kernels wherever wasm has one, and with each replaced kernel put back
 * on its own. Conv2DBackpropFilter has no stock kernel: it is dynn's in every row. Not a test.
 *
 * Usage: node dist/src/engine/kernel-bench.js [batch=64] [steps=10]
 */
import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from './backend.js';
import { registerWasmTrainingKernels, unregisterWasmTrainingKernels } from './wasm-kernels.js';

/** The kernels wasm has but dynn replaces; Conv2DBackpropFilter is missing in wasm, so it always stays. */
const REPLACED = [tf.Conv2D, tf.Conv2DBackpropInput, tf.BatchMatMul, tf._FusedMatMul, tf.MaxPoolGrad, tf.Identity];

const batch = Number(process.argv[2] ?? 64);
const steps = Number(process.argv[3] ?? 10);

await initEngine('wasm');

let seed = 1;
function weight(shape: number[], fanIn: number): tf.Variable {
  return tf.variable(tf.randomNormal(shape, 0, Math.sqrt(2 / fanIn), 'float32', seed++));
}
const zeros = (n: number) => tf.variable(tf.zeros([n]));

const p = {
  c1: weight([3, 3, 1, 32], 9), b1: zeros(32),
  c2: weight([3, 3, 32, 32], 288), b2: zeros(32),
  c3: weight([3, 3, 32, 64], 288), b3: zeros(64),
  c4: weight([3, 3, 64, 64], 576), b4: zeros(64),
  d1: weight([7 * 7 * 64, 256], 3136), e1: zeros(256),
  d2: weight([256, 10], 256), e2: zeros(10),
};
const x = tf.randomNormal([batch, 28, 28, 1], 0, 1, 'float32', 100) as tf.Tensor4D;
const labels = tf.oneHot(tf.randomUniform([batch], 0, 10, 'int32', 101) as tf.Tensor1D, 10);

function loss(): tf.Scalar {
  const conv = (h: tf.Tensor4D, w: tf.Variable, b: tf.Variable) => tf.relu(tf.add(tf.conv2d(h, w as tf.Tensor4D, 1, 'same'), b)) as tf.Tensor4D;
  let h = conv(conv(x, p.c1, p.b1), p.c2, p.b2);
  h = tf.maxPool(h, 2, 2, 'valid');
  h = conv(conv(h, p.c3, p.b3), p.c4, p.b4);
  h = tf.maxPool(h, 2, 2, 'valid');
  const f = tf.relu(tf.add(tf.matMul(tf.reshape(h, [batch, -1]), p.d1), p.e1));
  const logits = tf.add(tf.matMul(f, p.d2), p.e2);
  return tf.losses.softmaxCrossEntropy(labels, logits) as tf.Scalar;
}

function step(): void {
  const { value, grads } = tf.variableGrads(loss);
  value.dataSync();
  tf.dispose([value, ...Object.values(grads)]);
}

interface Setup {
  label: string;
  /** Kernels put back to wasm's own for this setup. */
  stock: string[];
  ms: number[];
}

const setups: Setup[] = [
  { label: 'dynn kernels', stock: [], ms: [] },
  { label: 'stock wasm wherever wasm has a kernel', stock: REPLACED, ms: [] },
  // This network has no fused matmul, so _FusedMatMul gets no row of its own.
  ...[tf.Conv2D, tf.Conv2DBackpropInput, tf.BatchMatMul, tf.MaxPoolGrad, tf.Identity].map((name) => ({
    label: `dynn kernels but stock ${name}`,
    stock: [name],
    ms: [],
  })),
];

function use(setup: Setup): void {
  registerWasmTrainingKernels();
  unregisterWasmTrainingKernels(setup.stock);
}

// Setups take turns step by step, so load from other processes spreads evenly over them.
for (const setup of setups) {
  use(setup);
  step();
  step();
}
const tensorsBefore = tf.memory().numTensors;
for (let i = 0; i < steps; i++) {
  for (const setup of setups) {
    use(setup);
    const t0 = performance.now();
    step();
    setup.ms.push(performance.now() - t0);
  }
}
registerWasmTrainingKernels();

console.log(`wasm, batch ${batch}, ${steps} steps per setup (forward + tf.variableGrads): median and min ms/step`);
for (const { label, ms } of setups) {
  ms.sort((a, b) => a - b);
  const median = ms[Math.floor(ms.length / 2)];
  console.log(`${label.padEnd(44)} ${median.toFixed(0).padStart(6)} ${ms[0].toFixed(0).padStart(6)}`);
}
const leaked = tf.memory().numTensors - tensorsBefore;
if (leaked !== 0) console.log(`${leaked} tensors leaked`);
