import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { engineName, initEngine } from './backend.js';
import { registerWasmTrainingKernels } from './wasm-kernels.js';
import { MAX_BLOCK_PADDING, MAX_BLOCK_PADDING_OVER_XNNPACK, ORT_MIN_CHANNELS, ORT_INPUT_GRADIENT_SHARE, ORT_MIN_FLOPS, ORT_NARROW_DX_CHANNELS, ortKernelCalls, ortKernelsAvailable, ortNchwcBlock, setOrtMinFlops } from './ort-kernels.js';

const TOL = 1e-4;

function randomArray(seed: number, n: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.next());
}

function randomTensor(seed: number, shape: number[], lo = -1, hi = 1): tf.Tensor {
  return tf.tensor(randomArray(seed, tf.util.sizeFromShape(shape), lo, hi), shape);
}

/** sum(y * r) for a fixed random r, so every element of dy differs. */
function weightedSum(y: tf.Tensor): tf.Scalar {
  return tf.sum(tf.mul(y, randomTensor(99, y.shape)));
}

interface Result {
  shapes: number[][];
  values: Float32Array[];
}

async function runOn(backend: 'cpu' | 'wasm', build: () => tf.Tensor[]): Promise<Result> {
  assert.ok(await tf.setBackend(backend));
  const outs = tf.tidy(build);
  const result = { shapes: outs.map((t) => t.shape), values: outs.map((t) => Float32Array.from(t.dataSync())) };
  tf.dispose(outs);
  return result;
}

/** Runs `build` on cpu and on wasm and requires every output to agree to TOL relative to its largest entry. */
async function assertSameOnBoth(label: string, build: () => tf.Tensor[]): Promise<void> {
  const ref = await runOn('cpu', build);
  const got = await runOn('wasm', build);
  assert.deepEqual(got.shapes, ref.shapes, `${label}: shapes`);
  ref.values.forEach((r, i) => {
    const g = got.values[i];
    let scale = 1e-6;
    let err = 0;
    for (let k = 0; k < r.length; k++) {
      scale = Math.max(scale, Math.abs(r[k]));
      err = Math.max(err, Math.abs(r[k] - g[k]));
    }
    assert.ok(err <= TOL * scale, `${label}: output ${i} differs by ${err} (scale ${scale})`);
  });
}

function wasmBackend(): BackendWasm {
  // tf.backend() is typed as the abstract KernelBackend; under 'wasm' it is a BackendWasm.
  return tf.backend() as BackendWasm;
}

describe('wasm training kernels against cpu', () => {
  before(async () => {
    delete process.env.DYNN_BACKEND;
    assert.equal(await initEngine('wasm'), 'wasm');
  });
  after(async () => {
    await tf.setBackend('wasm');
  });

  test('registration is idempotent', () => {
    const before = tf.getKernel(tf.BatchMatMul, 'wasm');
    registerWasmTrainingKernels();
    registerWasmTrainingKernels();
    assert.equal(tf.getKernel(tf.BatchMatMul, 'wasm'), before);
    for (const name of [tf.Conv2DBackpropFilter, tf.UnsortedSegmentSum, tf.DepthwiseConv2dNativeBackpropFilter]) {
      assert.ok(tf.getKernel(name, 'wasm') != null, name);
    }
  });

  const convCases: { x: number[]; k: number; co: number; s: 1 | 2; pad: 'same' | 'valid' | number | tf.backend_util.ExplicitPadding }[] = [];
  for (const k of [1, 3]) {
    for (const s of [1, 2] as const) {
      for (const pad of ['same', 'valid', 1] as const) convCases.push({ x: [2, 9, 8, 3], k, co: 4, s, pad });
    }
  }
  convCases.push({ x: [3, 10, 10, 5], k: 3, co: 6, s: 2, pad: 'valid' });
  convCases.push({ x: [2, 7, 9, 4], k: 3, co: 5, s: 2, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] });
  convCases.push({ x: [1, 6, 6, 8], k: 1, co: 3, s: 1, pad: 0 });

  test('conv2d forward, dx and dw', async () => {
    for (const c of convCases) {
      await assertSameOnBoth(`conv k${c.k} s${c.s} pad ${JSON.stringify(c.pad)} x ${c.x}`, () => {
        const x = randomTensor(1, c.x) as tf.Tensor4D;
        const w = randomTensor(2, [c.k, c.k, c.x[3], c.co]) as tf.Tensor4D;
        const conv = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.conv2d(a, b, c.s, c.pad);
        const grads = tf.grads((a: tf.Tensor, b: tf.Tensor) => weightedSum(conv(a as tf.Tensor4D, b as tf.Tensor4D)));
        return [conv(x, w), ...grads([x, w])];
      });
    }
  });

  test('conv2d forward, dx and dw through ONNX Runtime: every geometry, and a training-size layer', async (t) => {
    if (!ortKernelsAvailable()) return t.skip('onnxruntime-node binding not loadable');
    const before = ortKernelCalls();
    // Besides convCases: fewer outputs than inputs at stride 1 (the filter gradient shifts dy), any padding;
    // and outputs at least KH*KW times the inputs, at strides 1 and 2 (the windows of x side by side).
    const narrowing: typeof convCases = [
      { x: [2, 12, 12, 4], k: 5, co: 3, s: 1, pad: 'same' },
      { x: [2, 9, 8, 6], k: 3, co: 2, s: 1, pad: 'valid' },
      { x: [2, 7, 9, 5], k: 3, co: 2, s: 1, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
      { x: [2, 6, 7, 5], k: 3, co: 4, s: 1, pad: 2 },
      { x: [2, 10, 10, 1], k: 3, co: 9, s: 1, pad: 'same' },
      { x: [2, 8, 8, 2], k: 3, co: 20, s: 1, pad: 'same' },
      { x: [2, 9, 7, 2], k: 3, co: 18, s: 2, pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
      { x: [2, 8, 8, 3], k: 1, co: 4, s: 2, pad: 'valid' },
    ];
    const previous = setOrtMinFlops(0);
    try {
      for (const c of [...convCases, ...narrowing]) {
        await assertSameOnBoth(`ort conv k${c.k} s${c.s} pad ${JSON.stringify(c.pad)} x ${c.x}`, () => {
          const x = randomTensor(1, c.x) as tf.Tensor4D;
          const w = randomTensor(2, [c.k, c.k, c.x[3], c.co]) as tf.Tensor4D;
          const conv = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.conv2d(a, b, c.s, c.pad);
          const grads = tf.grads((a: tf.Tensor, b: tf.Tensor) => weightedSum(conv(a as tf.Tensor4D, b as tf.Tensor4D)));
          return [conv(x, w), ...grads([x, w])];
        });
      }
    } finally {
      setOrtMinFlops(previous);
    }
    // At the default threshold a 32-channel layer goes to ONNX Runtime.
    await assertSameOnBoth('ort conv, 6x14x14x32 -> 32', () => {
      const x = randomTensor(6, [6, 14, 14, 32]) as tf.Tensor4D;
      const w = randomTensor(7, [3, 3, 32, 32]) as tf.Tensor4D;
      const conv = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.conv2d(a, b, 1, 'same');
      return [conv(x, w), ...tf.grads((a: tf.Tensor, b: tf.Tensor) => weightedSum(conv(a as tf.Tensor4D, b as tf.Tensor4D)))([x, w])];
    });
    assert.ok(2 * 6 * 14 * 14 * 9 * 32 * 32 >= ORT_MIN_FLOPS);
    const after = ortKernelCalls();
    // Every geometry but the dilated ones ran each kernel there (the composite conv inside a fallback counts too).
    const geometries = convCases.length + narrowing.length + 1;
    assert.ok(after.conv - before.conv >= geometries, `forward calls ${after.conv - before.conv}`);
    assert.ok(after.dx - before.dx >= geometries, `input-gradient calls ${after.dx - before.dx}`);
    assert.ok(after.dw - before.dw >= geometries, `filter-gradient calls ${after.dw - before.dw}`);
  });

  test('input gradients go to ONNX Runtime from a 16th of the threshold, but a narrow 1x1 one stays on wasm', async (t) => {
    if (!ortKernelsAvailable()) return t.skip('onnxruntime-node binding not loadable');
    const dxCalls = async (x: number[], k: number, s: number, co: number, aboveShare = true) => {
      const before = ortKernelCalls().dx;
      const flops = 2 * x[0] * (x[1] / s) * (x[2] / s) * k * k * x[3] * co;
      assert.ok(flops < ORT_MIN_FLOPS && flops >= ORT_MIN_FLOPS * ORT_INPUT_GRADIENT_SHARE === aboveShare, `${flops} FLOPs`);
      await assertSameOnBoth(`${k}x${k} stride ${s} dx, x ${x} -> ${co}`, () => {
        const w = randomTensor(8, [k, k, x[3], co]) as tf.Tensor4D;
        return [tf.grad((a: tf.Tensor) => weightedSum(tf.conv2d(a as tf.Tensor4D, w, s, 'same')))(randomTensor(9, x))];
      });
      return ortKernelCalls().dx - before;
    };
    assert.equal(await dxCalls([8, 28, 28, 16], 1, 2, 32), 1, 'strided 1x1');
    assert.equal(await dxCalls([8, 14, 14, 8], 3, 1, 8), 1, '3x3');
    assert.equal(await dxCalls([8, 14, 14, 16], 1, 1, 32), 1, '1x1 into 32 channels');
    assert.ok(ORT_NARROW_DX_CHANNELS > 8);
    assert.equal(await dxCalls([8, 28, 28, 32], 1, 1, 8), 0, '1x1 into 8 channels');
    assert.equal(await dxCalls([2, 7, 7, 8], 3, 1, 8, false), 0, 'below the share');
  });

  test('convolutions in the blocked layout (NCHWc): whole and padded blocks, strides, 1x1, dilation; the plain form where padding costs too much', async (t) => {
    const block = ortNchwcBlock();
    // On x64 ONNX Runtime has the blocked kernels: a probe that stops finding them must fail, not skip.
    if (ortKernelsAvailable() && process.arch === 'x64') assert.ok(block === 8 || block === 16, `NCHWc block ${block}`);
    if (block === 0) return t.skip('no ONNX Runtime NCHWc kernels here');
    const up = (c: number) => Math.ceil(c / block) * block;
    // Fewer input channels than a block go in unblocked (only the outputs are padded); more need groups of 4.
    const blocked = (ci: number, co: number, max = MAX_BLOCK_PADDING) => ci % 4 === 0 && (ci < block ? up(co) / co : (up(ci) * up(co)) / (ci * co)) <= max;
    const cases: { x: [number, number, number, number]; k: number; co: number; s: number; pad: 'same' | 'valid'; dilation?: number }[] = [
      // One whole block in and out: no reorder on either side (the same memory as NHWC).
      { x: [2, 6, 6, block], k: 3, co: block, s: 1, pad: 'same' },
      { x: [2, 7, 7, 12], k: 3, co: 24, s: 2, pad: 'same' },
      { x: [2, 8, 8, 8], k: 1, co: 16, s: 1, pad: 'valid' },
      { x: [2, 9, 9, 16], k: 3, co: 16, s: 1, pad: 'valid', dilation: 2 },
      { x: [2, 6, 6, 20], k: 3, co: 20, s: 1, pad: 'same' },
      // Input and output blocks padded, forward and input gradient.
      { x: [2, 6, 6, 20], k: 3, co: 32, s: 1, pad: 'same' },
      { x: [2, 6, 6, 32], k: 3, co: 20, s: 1, pad: 'same' },
      { x: [2, 6, 6, 4], k: 3, co: 4, s: 1, pad: 'same' },
      { x: [2, 6, 6, 18], k: 3, co: 16, s: 1, pad: 'same' },
      // Narrow inputs: the forward pass, its input gradient, both, strided; 1 to 3 channels stay plain.
      { x: [2, 6, 6, 4], k: 3, co: block * 2, s: 1, pad: 'same' },
      { x: [2, 6, 6, block * 2], k: 3, co: 4, s: 1, pad: 'same' },
      { x: [2, 7, 7, block - 4], k: 3, co: block - 4, s: 1, pad: 'same' },
      { x: [2, 9, 9, 4], k: 3, co: block, s: 2, pad: 'valid' },
      { x: [2, 6, 6, 3], k: 3, co: block, s: 1, pad: 'same' },
    ];
    let ran = 0;
    const previous = setOrtMinFlops(0);
    try {
      for (const c of cases) {
        const ci = c.x[3];
        const dilated = (c.dilation ?? 1) > 1;
        // The forward pass (run again inside tf.grads); the input gradient is the stride-1 convolution from co to
        // ci (strided ones are transposed convolutions; gradients take no dilation).
        const expected = (dilated ? 1 : 2) * Number(blocked(ci, c.co)) + Number(!dilated && c.s === 1 && blocked(c.co, ci));
        const before = ortKernelCalls().nchwc;
        await assertSameOnBoth(`blocked conv k${c.k} s${c.s} d${c.dilation ?? 1} ${c.pad} x ${c.x} -> ${c.co}`, () => {
          const x = randomTensor(1, c.x) as tf.Tensor4D;
          const w = randomTensor(2, [c.k, c.k, ci, c.co]) as tf.Tensor4D;
          const conv = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.conv2d(a, b, c.s, c.pad, 'NHWC', c.dilation ?? 1);
          if (dilated) return [conv(x, w)];
          return [conv(x, w), ...tf.grads((a: tf.Tensor, b: tf.Tensor) => weightedSum(conv(a as tf.Tensor4D, b as tf.Tensor4D)))([x, w])];
        });
        assert.equal(ortKernelCalls().nchwc - before, expected, `blocked calls for x ${c.x} -> ${c.co}`);
        ran += expected;
      }
    } finally {
      setOrtMinFlops(previous);
    }
    assert.ok(ran >= 8, `the cases exercise the blocked form (${ran} calls)`);
    // At the default threshold a forward pass with fewer than ORT_MIN_CHANNELS channels runs blocked (with more
    // padding allowed where blocks are 16) or on XNNPACK, never the plain Conv. Batches that clear ORT_MIN_FLOPS.
    const overXnnpack = (co: number) => blocked(32, co, block === 16 ? MAX_BLOCK_PADDING_OVER_XNNPACK : MAX_BLOCK_PADDING);
    for (const [co, batch] of [[12, 16], [4, 16], [2, 32], [1, 64]] as const) {
      assert.ok(co < ORT_MIN_CHANNELS && 2 * batch * 28 * 28 * 9 * 32 * co >= ORT_MIN_FLOPS);
      const before = ortKernelCalls();
      await assertSameOnBoth(`blocked conv at the default threshold, 32 -> ${co} channels`, () =>
        [tf.conv2d(randomTensor(8, [batch, 28, 28, 32]) as tf.Tensor4D, randomTensor(9, [3, 3, 32, co]) as tf.Tensor4D, 1, 'same')]);
      const after = ortKernelCalls();
      assert.equal(after.nchwc - before.nchwc, Number(overXnnpack(co)), `32 -> ${co}: blocked`);
      assert.equal(after.conv - before.conv, after.nchwc - before.nchwc, `32 -> ${co}: no plain Conv`);
    }
    // The cases cover both sides of the allowance: one output count blocked that 2x padding would not allow
    // (where blocks are 16), one that stays on XNNPACK.
    if (block === 16) assert.ok([4, 2, 1].some((co) => overXnnpack(co) && !blocked(32, co)));
    assert.ok([2, 1].some((co) => !overXnnpack(co)));
  });

  test('fused conv2d with bias and relu: forward and gradients', async () => {
    for (const s of [1, 2] as const) {
      await assertSameOnBoth(`fused conv s${s}`, () => {
        const x = randomTensor(3, [2, 8, 8, 3]) as tf.Tensor4D;
        const w = randomTensor(4, [3, 3, 3, 4]) as tf.Tensor4D;
        const bias = randomTensor(5, [4]) as tf.Tensor1D;
        const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, strides: s, pad: 'same', bias: c, activation: 'relu' });
        return [f(x, w, bias), ...tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => weightedSum(f(a, b, c)))([x, w, bias])];
      });
    }
  });

  test('depthwise conv2d dx and dw', async () => {
    for (const m of [1, 2]) {
      for (const s of [1, 2] as const) {
        for (const pad of ['same', 'valid'] as const) {
          await assertSameOnBoth(`depthwise m${m} s${s} ${pad}`, () => {
            const x = randomTensor(6, [2, 9, 8, 3]) as tf.Tensor4D;
            const w = randomTensor(7, [3, 3, 3, m]) as tf.Tensor4D;
            const f = (a: tf.Tensor, b: tf.Tensor) => tf.depthwiseConv2d(a as tf.Tensor4D, b as tf.Tensor4D, s, pad);
            return [f(x, w), ...tf.grads((a: tf.Tensor, b: tf.Tensor) => weightedSum(f(a, b)))([x, w])];
          });
        }
      }
    }
  });

  test('matMul with every transpose combination, batched and 2D, and its gradients', async () => {
    for (const [batch, m, k, n] of [[3, 4, 5, 6], [0, 7, 5, 6]]) {
      for (const ta of [false, true]) {
        for (const tb of [false, true]) {
          await assertSameOnBoth(`matMul batch ${batch} ta ${ta} tb ${tb}`, () => {
            const pre = batch > 0 ? [batch] : [];
            const a = randomTensor(8, [...pre, ...(ta ? [k, m] : [m, k])]);
            const b = randomTensor(9, [...pre, ...(tb ? [n, k] : [k, n])]);
            const f = (p: tf.Tensor, q: tf.Tensor) => tf.matMul(p, q, ta, tb);
            return [f(a, b), ...tf.grads((p: tf.Tensor, q: tf.Tensor) => weightedSum(f(p, q)))([a, b])];
          });
        }
      }
    }
  });

  test('matMul and its gradients through ONNX Runtime: every transpose combination', async (t) => {
    if (!ortKernelsAvailable()) return t.skip('onnxruntime-node binding not loadable');
    const before = ortKernelCalls().matmul;
    const previous = setOrtMinFlops(0);
    try {
      for (const ta of [false, true]) {
        for (const tb of [false, true]) {
          await assertSameOnBoth(`ort matMul ${ta} ${tb}`, () => {
            const a = randomTensor(30, ta ? [7, 5] : [5, 7]) as tf.Tensor2D;
            const b = randomTensor(31, tb ? [3, 7] : [7, 3]) as tf.Tensor2D;
            const f = (x: tf.Tensor, y: tf.Tensor) => tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D, ta, tb);
            return [f(a, b), ...tf.grads((x: tf.Tensor, y: tf.Tensor) => weightedSum(f(x, y)))([a, b])];
          });
        }
      }
      // Each combination: the product and both gradients, at least.
      assert.ok(ortKernelCalls().matmul - before >= 12, `${ortKernelCalls().matmul - before} calls`);
      // Batched matrices with equal batch dims go there too (per-sample kernels), each transpose combination.
      const unbatched = ortKernelCalls().matmul;
      for (const ta of [false, true]) {
        for (const tb of [false, true]) {
          await assertSameOnBoth(`ort batched matMul ${ta} ${tb}`, () => [tf.matMul(randomTensor(32, ta ? [2, 3, 4] : [2, 4, 3]), randomTensor(33, tb ? [2, 5, 3] : [2, 3, 5]), ta, tb)]);
        }
      }
      assert.equal(ortKernelCalls().matmul, unbatched + 4);
      // Broadcast batch dims stay on wasm.
      await assertSameOnBoth('broadcast matMul', () => [tf.matMul(randomTensor(32, [2, 4, 3]), randomTensor(33, [1, 3, 5]))]);
      assert.equal(ortKernelCalls().matmul, unbatched + 4);
    } finally {
      setOrtMinFlops(previous);
    }
  });

  test('fused matMul: bias, activations, transposes, batch', async () => {
    const activations = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'] as const;
    for (const [batch, m, k, n] of [[3, 4, 5, 6], [0, 7, 5, 6]]) {
      for (const ta of [false, true]) {
        for (const tb of [false, true]) {
          await assertSameOnBoth(`fused matMul batch ${batch} ta ${ta} tb ${tb}`, () => {
            const pre = batch > 0 ? [batch] : [];
            const a = randomTensor(10, [...pre, ...(ta ? [k, m] : [m, k])]);
            const b = randomTensor(11, [...pre, ...(tb ? [n, k] : [k, n])]);
            const bias = randomTensor(12, [n]);
            const alpha = randomTensor(13, [n], 0, 0.5);
            const outs = activations.map((activation) =>
              tf.fused.matMul({
                a, b, bias, activation, transposeA: ta, transposeB: tb,
                preluActivationWeights: activation === 'prelu' ? alpha : undefined,
                leakyreluAlpha: 0.1,
              }));
            const grads = tf.grads((p: tf.Tensor, q: tf.Tensor, c: tf.Tensor) =>
              weightedSum(tf.fused.matMul({ a: p, b: q, bias: c, activation: 'relu', transposeA: ta, transposeB: tb })));
            return [...outs, tf.fused.matMul({ a, b, transposeA: ta, transposeB: tb }), ...grads([a, b, bias])];
          });
        }
      }
    }
  });

  test('maxPool gradient: all-negative inputs, ties, overlapping and padded windows', async () => {
    const inputs: [string, () => tf.Tensor4D][] = [
      ['negative', () => randomTensor(14, [2, 6, 7, 3], -2, -1) as tf.Tensor4D],
      // Values in {-1, -0.5, 0}: most windows hold several equal maxima, many of them <= 0.
      ['ties', () => tf.sub(tf.div(tf.round(tf.mul(randomTensor(15, [2, 6, 7, 3], 0, 1), 2)), 2), 1) as tf.Tensor4D],
      ['constant', () => tf.fill([1, 5, 5, 2], -3) as tf.Tensor4D],
      // Even sizes: 2x2/2 'valid' tiles the input exactly and takes the non-overlapping fast path.
      ['ties, even sizes', () => tf.sub(tf.div(tf.round(tf.mul(randomTensor(16, [2, 6, 8, 3], 0, 1), 2)), 2), 1) as tf.Tensor4D],
      ['negative, even sizes', () => randomTensor(17, [1, 4, 4, 5], -2, -1) as tf.Tensor4D],
    ];
    const pools: [number, number, 'same' | 'valid'][] = [[2, 2, 'valid'], [3, 2, 'same'], [3, 1, 'same'], [2, 1, 'valid']];
    for (const [label, make] of inputs) {
      for (const [size, stride, pad] of pools) {
        await assertSameOnBoth(`maxPool ${label} ${size}/${stride} ${pad}`, () => {
          const x = make();
          const f = (a: tf.Tensor) => tf.maxPool(a as tf.Tensor4D, size, stride, pad);
          return [f(x), tf.grad((a: tf.Tensor) => weightedSum(f(a)))(x)];
        });
      }
    }
  });

  // Speed is measured in kernel-bench.ts, not here: a timed test fails on a busy machine.
  test('maxPool gradient on a full-size batch routes one unit per window', async () => {
    await tf.setBackend('wasm');
    const x = randomTensor(16, [128, 28, 28, 32]) as tf.Tensor4D;
    const y = tf.maxPool(x, 2, 2, 'valid');
    const dy = tf.onesLike(y);
    const g = tf.engine().runKernel(tf.MaxPoolGrad, { dy, input: x, output: y }, { filterSize: 2, strides: 2, pad: 'valid' }) as tf.Tensor;
    const total = tf.sum(g);
    const nonzero = tf.sum(tf.cast(tf.notEqual(g, 0), 'float32'));
    assert.equal(total.dataSync()[0], y.size);
    assert.equal(nonzero.dataSync()[0], y.size);
    tf.dispose([x, y, dy, g, total, nonzero]);
  });

  test('gather gradient with duplicate indices (unsortedSegmentSum)', async () => {
    await assertSameOnBoth('gather axis 0', () => {
      const x = randomTensor(17, [6, 4]);
      const idx = tf.tensor1d([1, 3, 1, 1, 5, 0], 'int32');
      return [tf.grad((a: tf.Tensor) => weightedSum(tf.gather(a, idx, 0)))(x)];
    });
    await assertSameOnBoth('gather axis 1', () => {
      const x = randomTensor(18, [3, 5, 2]);
      const idx = tf.tensor1d([4, 4, 0, 2, 4], 'int32');
      return [tf.grad((a: tf.Tensor) => weightedSum(tf.gather(a, idx, 1)))(x)];
    });
    await assertSameOnBoth('unsortedSegmentSum', () => {
      const x = randomTensor(19, [7, 3]);
      return [tf.unsortedSegmentSum(x, tf.tensor1d([2, 0, 2, 2, 4, 0, 1], 'int32'), 5)];
    });
  });

  test('unsortedSegmentSum without repeated ids (the scatter path): runs, gaps, ids out of range, untouched segments zero', async () => {
    await assertSameOnBoth('unique ids', () => {
      const x = randomTensor(23, [9, 2, 3]);
      // Runs 3-4-5 and 0-1, a lone 8, a dropped -1 and 12; segments 2, 6, 7 and 9 get no row.
      const ids = tf.tensor1d([3, 4, 5, -1, 0, 1, 8, 12, 10], 'int32');
      // And a run that crosses the last segment: 8, 9 kept, 10 and 11 dropped.
      return [
        tf.unsortedSegmentSum(x, ids, 11),
        tf.unsortedSegmentSum(x, tf.tensor1d([8, 7, 6, 5, 4, 3, 2, 1, 0], 'int32'), 9),
        tf.unsortedSegmentSum(tf.slice(x, [0, 0, 0], [4, 2, 3]), tf.tensor1d([8, 9, 10, 11], 'int32'), 10),
      ];
    });
    await assertSameOnBoth('gather gradient of a partition of a batch', () => {
      const x = randomTensor(24, [10, 3, 3, 4]);
      const parts = [tf.tensor1d([0, 2, 3, 4, 9], 'int32'), tf.tensor1d([1, 5, 6, 7, 8], 'int32')];
      return [tf.grad((a: tf.Tensor) => tf.addN(parts.map((p) => weightedSum(tf.gather(a, p, 0)))))(x)];
    });
    // The same call on wasm twice (a scatter leaves nothing behind in the heap for the next output).
    await tf.setBackend('wasm');
    const x = randomTensor(25, [4, 8]);
    const first = tf.unsortedSegmentSum(x, tf.tensor1d([5, 6, 7, 1], 'int32'), 8);
    const again = tf.unsortedSegmentSum(x, tf.tensor1d([0, 2, 3, 4], 'int32'), 8);
    assert.deepEqual(Array.from(again.dataSync().slice(8, 16)), new Array(8).fill(0), 'segment 1 is zero');
    assert.deepEqual(Array.from(again.dataSync().slice(0, 8)), Array.from(x.dataSync().slice(0, 8)));
    tf.dispose([x, first, again]);
  });

  test('transpose: no copy by the identity permutation, a real one otherwise (size-1 axes moved too)', async () => {
    await assertSameOnBoth('transposes', () => {
      const x = randomTensor(26, [3, 1, 4, 2]);
      return [tf.transpose(x, [0, 1, 2, 3]), tf.transpose(x, [1, 0, 2, 3]), tf.transpose(x, [0, 2, 1, 3]), tf.transpose(x, [3, 2, 1, 0]), tf.transpose(x, [2, 0, 1, 3])];
    });
    await tf.setBackend('wasm');
    const x = randomTensor(27, [3, 1, 4, 2]);
    const backend = wasmBackend();
    const same = tf.transpose(x, [0, 1, 2, 3]);
    const moved = tf.transpose(x, [1, 0, 2, 3]);
    assert.equal(backend.typedArrayFromHeap(same).byteOffset, backend.typedArrayFromHeap(x).byteOffset, 'shares the data');
    assert.notEqual(backend.typedArrayFromHeap(moved).byteOffset, backend.typedArrayFromHeap(x).byteOffset, 'a copy');
    x.dispose();
    assert.equal(same.dataSync()[5], randomArray(27, 24)[5], 'survives its input');
    tf.dispose([same, moved]);
  });

  test('cast: no copy to the same dtype, a conversion otherwise', async () => {
    await assertSameOnBoth('casts', () => {
      const x = randomTensor(28, [2, 3, 4], -3, 3);
      return [tf.cast(x, 'float32'), tf.cast(tf.cast(x, 'int32'), 'float32'), tf.cast(tf.cast(tf.greater(x, 0), 'float32'), 'float32')];
    });
    await tf.setBackend('wasm');
    const x = randomTensor(29, [5, 4]);
    const backend = wasmBackend();
    const same = tf.cast(x, 'float32');
    const other = tf.cast(x, 'int32');
    assert.equal(backend.typedArrayFromHeap(same).byteOffset, backend.typedArrayFromHeap(x).byteOffset, 'shares the data');
    assert.equal(other.dtype, 'int32');
    x.dispose();
    assert.equal(same.dataSync()[3], randomArray(29, 20)[3], 'survives its input');
    tf.dispose([same, other]);
  });

  test('gather of whole blocks (the fast path): any axis, duplicates, int32 data, empty and 2-D indices', async () => {
    await assertSameOnBoth('samples of a batch', () => {
      const x = randomTensor(21, [9, 4, 4, 8]);
      return [tf.gather(x, tf.tensor1d([8, 0, 3, 3, 7], 'int32'), 0)];
    });
    await assertSameOnBoth('middle axis, 2-D indices, negative axis', () => {
      const x = randomTensor(22, [3, 6, 80]);
      return [tf.gather(x, tf.tensor2d([[5, 1], [1, 0]], [2, 2], 'int32'), -2), tf.gather(x, tf.tensor1d([], 'int32'), 1)];
    });
    await assertSameOnBoth('int32 rows', () => {
      const x = tf.cast(tf.mul(randomTensor(23, [5, 70]), 100), 'int32');
      return [tf.cast(tf.gather(x, tf.tensor1d([4, 2, 4], 'int32')), 'float32')];
    });
    await tf.setBackend('wasm');
    const x = tf.zeros([4, 100]);
    const before = tf.memory().numTensors;
    assert.throws(() => tf.gather(x, tf.tensor1d([1, 4], 'int32')), /GatherV2: index 4 is not in \[0, 3\]/);
    assert.ok(tf.memory().numTensors <= before + 1, 'a refused gather leaves no output behind');
    tf.dispose(x);
  });

  test('slice inside the heap: every rank, prefixes and inner ranges, whole dims, its gradient, int32 and bool, empty', async () => {
    await assertSameOnBoth('slices of rank 1 to 5', () => [
      tf.slice(randomTensor(40, [50]), [7], [20]),
      tf.slice(randomTensor(41, [3136, 16]), [0, 0], [392, 16]),
      tf.slice(randomTensor(42, [9, 12]), [2, 3], [4, 5]),
      tf.slice(randomTensor(43, [4, 5, 6]), [1, 0, 2], [2, 5, 3]),
      tf.slice(randomTensor(44, [3, 3, 8, 16]), [0, 0, 0, 4], [3, 3, 8, 8]),
      tf.slice(randomTensor(45, [2, 6, 6, 8]), [1, 2, 0, 0], [1, 3, 6, 8]),
      tf.slice(randomTensor(46, [2, 3, 4, 5, 6]), [1, 1, 1, 1, 1], [1, 2, 2, 3, 4]),
      tf.slice(randomTensor(47, [4, 4]), [0, 0], [-1, -1]),
    ]);
    await assertSameOnBoth('the gradient of a slice of a throttled kernel', () => {
      const k = randomTensor(48, [3, 3, 16, 32]);
      return tf.grads((a: tf.Tensor) => weightedSum(tf.slice(a, [0, 0, 0, 0], [3, 3, 8, 12])))([k]);
    });
    // wasm's own kernel reads its input out of the heap (readSync copies all of it); this one must not.
    const backend = wasmBackend();
    const readSync = backend.readSync;
    let reads = 0;
    backend.readSync = (...args: Parameters<typeof readSync>) => (reads++, readSync.apply(backend, args));
    try {
      tf.tidy(() => tf.slice(randomTensor(52, [64, 32]), [8, 0], [16, 32]));
    } finally {
      backend.readSync = readSync;
    }
    assert.equal(reads, 0);
    await assertSameOnBoth('int32, bool and empty slices', () => {
      const ints = tf.cast(tf.mul(randomTensor(49, [5, 7]), 100), 'int32');
      const bools = tf.greater(randomTensor(50, [6, 5]), 0);
      return [
        tf.cast(tf.slice(ints, [1, 2], [3, 4]), 'float32'),
        tf.cast(tf.slice(bools, [2, 0], [3, 5]), 'float32'),
        tf.slice(randomTensor(51, [4, 3]), [1, 0], [0, 3]),
      ];
    });
  });

  test('split into whole blocks (the fast path): the gradient of a batch reassembled by concatenation, any axis, a free size, empty parts, int32', async () => {
    await assertSameOnBoth('concat gradient over the batch', () => {
      const parts = [3, 0, 5, 1].map((n, i) => randomTensor(30 + i, [n, 4, 4, 8]));
      const w = randomTensor(35, [9, 4, 4, 8]);
      return tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(tf.concat(xs, 0), w)))(parts);
    });
    await assertSameOnBoth('middle axis, a free size, equal splits', () => {
      const x = randomTensor(36, [3, 7, 80]);
      return [...tf.split(x, [2, -1, 1], 1), ...tf.split(randomTensor(37, [4, 6, 70]), 3, 1)];
    });
    await assertSameOnBoth('int32 rows', () => {
      const x = tf.cast(tf.mul(randomTensor(38, [5, 70]), 100), 'int32');
      return tf.split(x, [4, 1], 0).map((t) => tf.cast(t, 'float32'));
    });
  });

  test('gathering whole rows stays right when allocating its output grows the wasm memory', async () => {
    await tf.setBackend('wasm');
    const per = 28 * 28 * 64;
    // Larger and larger outputs: at least one of them grows the heap (the kernel once read its indices from
    // a view that growth had detached, and left the output as the heap held it).
    for (const n of [64, 160, 400]) {
      const x = tf.tidy(() => tf.add(tf.mul(tf.range(0, n, 1, 'float32').reshape([n, 1, 1, 1]), 1000), tf.zeros([n, 28, 28, 64])));
      const rows = Int32Array.from({ length: n }, (_, i) => n - 1 - i);
      const y = tf.gather(x, rows);
      const v = y.dataSync();
      for (let j = 0; j < n; j++) assert.equal(v[j * per + (j % per)], 1000 * rows[j], `row ${j} of ${n}`);
      tf.dispose([x, y]);
    }
  });

  test('identity shares data: a clone outlives its source, and nothing leaks', async () => {
    await tf.setBackend('wasm');
    const data = wasmBackend().numDataIds();
    const x = tf.tensor1d([1, -2, 3]);
    const y = tf.clone(x);
    assert.equal(wasmBackend().numDataIds(), data + 1, 'no second buffer');
    x.dispose();
    assert.deepEqual(Array.from(y.dataSync()), [1, -2, 3]);
    const v = tf.variable(y);
    const zeros = tf.tensor1d([0, 0, 0]);
    v.assign(zeros);
    assert.deepEqual(Array.from(y.dataSync()), [1, -2, 3], 'assigning a variable made from it leaves it alone');
    tf.dispose([y, v, zeros]);
    assert.equal(wasmBackend().numDataIds(), data);
  });

  test('repeated gradient calls leak no tensors and no wasm data', async () => {
    await tf.setBackend('wasm');
    const x = randomTensor(20, [4, 12, 12, 3]) as tf.Tensor4D;
    const w1 = randomTensor(21, [3, 3, 3, 8]) as tf.Tensor4D;
    const w2 = randomTensor(22, [3, 3, 8, 8]) as tf.Tensor4D;
    const wd = randomTensor(23, [3, 3, 8, 2]) as tf.Tensor4D;
    const dense = randomTensor(24, [3 * 3 * 16, 5]);
    const bias = randomTensor(25, [5]);
    const emb = randomTensor(26, [10, 4]);
    const idx = tf.tensor1d([3, 3, 7, 0], 'int32');
    const loss = (...v: tf.Tensor[]) => {
      const [a, b, c, d, e, f, g] = v as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D, tf.Tensor4D, tf.Tensor2D, tf.Tensor1D, tf.Tensor2D];
      let h = tf.relu(tf.conv2d(a, b, 1, 'same'));
      h = tf.relu(tf.conv2d(h, c, 2, 'valid'));
      h = tf.depthwiseConv2d(h, d, 1, 'same');
      h = tf.maxPool(h, 2, 2, 'same');
      const logits = tf.fused.matMul({ a: tf.reshape(h, [4, -1]), b: e, bias: f, activation: 'relu' });
      return tf.add(weightedSum(logits), weightedSum(tf.gather(g, idx)));
    };
    const step = () => tf.tidy(() => tf.grads(loss)([x, w1, w2, wd, dense, bias, emb]));
    tf.dispose(step());
    const tensors = tf.memory().numTensors;
    const data = wasmBackend().numDataIds();
    for (let i = 0; i < 3; i++) tf.dispose(step());
    assert.equal(tf.memory().numTensors, tensors);
    assert.equal(wasmBackend().numDataIds(), data);
    tf.dispose([x, w1, w2, wd, dense, bias, emb, idx]);
  });
});

describe('initEngine', () => {
  test('keeps the running engine and reports it', async () => {
    assert.equal(await initEngine('wasm'), 'wasm');
    assert.equal(await initEngine(), 'wasm');
    assert.equal(engineName(), 'wasm');
  });

  test('rejects an unknown backend name with a DynnError', async () => {
    await assert.rejects(initEngine('gpu' as 'cpu'), (err: unknown) => {
      assert.ok(err instanceof DynnError);
      assert.equal(err.message, 'unknown backend "gpu"; expected one of auto, tensorflow, wasm, cpu');
      return true;
    });
  });

  test('starts wasm with the training kernels inside a worker thread', async () => {
    const backendUrl = new URL('./backend.js', import.meta.url).href;
    const tfUrl = import.meta.resolve('@tensorflow/tfjs-core');
    const code = `
      const { parentPort } = require('node:worker_threads');
      (async () => {
        const { initEngine } = await import(${JSON.stringify(backendUrl)});
        const tf = await import(${JSON.stringify(tfUrl)});
        const name = await initEngine();
        const x = tf.ones([1, 6, 6, 2]);
        const w = tf.ones([3, 3, 2, 4]);
        const dw = tf.grad((f) => tf.sum(tf.conv2d(x, f, 2, 'same')))(w);
        const ort = await import(${JSON.stringify(new URL('./ort-kernels.js', import.meta.url).href)});
        const big = tf.ones([8, 28, 28, 16]);
        const dwBig = tf.grad((f) => tf.sum(tf.conv2d(big, f, 1, 'same')))(tf.ones([3, 3, 16, 16]));
        parentPort.postMessage({ name, sum: tf.sum(dw).dataSync()[0], ort: ort.ortKernelCalls(), big: dwBig.dataSync()[(1 * 3 + 1) * 16 * 16] });
      })().catch((e) => parentPort.postMessage({ error: String(e) }));`;
    const worker = new Worker(code, { eval: true, env: { ...process.env, DYNN_BACKEND: '' } });
    const reply = await new Promise<{ name?: string; sum?: number; error?: string; ort?: { dw: number }; big?: number }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    assert.equal(reply.error, undefined);
    assert.ok(reply.name === 'wasm' || reply.name === 'tensorflow', String(reply.name));
    // Stride-2 'same' over 6 rows pads one at the bottom: the taps see 3, 3 and 2 rows, so 8*8 per (ci, co).
    assert.equal(reply.sum, 8 * 8 * 2 * 4);
    // The centre tap of a 'same' 3x3 filter sees every one of the 8*28*28 positions.
    assert.equal(reply.big, 8 * 28 * 28);
    if (reply.name === 'wasm' && ortKernelsAvailable()) assert.equal(reply.ort?.dw, 1, 'the filter gradient ran in ONNX Runtime in the worker');
  });
});
