import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import type {
  BatchMatMulAttrs,
  BatchMatMulInputs,
  CastAttrs,
  CastInputs,
  Conv2DAttrs,
  Conv2DInputs,
  Conv2DBackpropFilterAttrs,
  Conv2DBackpropFilterInputs,
  Conv2DBackpropInputAttrs,
  Conv2DBackpropInputInputs,
  DepthwiseConv2dNativeBackpropFilterAttrs,
  DepthwiseConv2dNativeBackpropFilterInputs,
  DepthwiseConv2dNativeBackpropInputAttrs,
  DepthwiseConv2dNativeBackpropInputInputs,
  GatherV2Attrs,
  GatherV2Inputs,
  KernelConfig,
  KernelFunc,
  MaxPoolGradAttrs,
  MaxPoolGradInputs,
  NamedAttrMap,
  NamedTensorInfoMap,
  SliceAttrs,
  SliceInputs,
  SplitVAttrs,
  SplitVInputs,
  TensorInfo,
  TransposeAttrs,
  TransposeInputs,
  UnsortedSegmentSumAttrs,
  UnsortedSegmentSumInputs,
  _FusedMatMulAttrs,
  _FusedMatMulInputs,
} from '@tensorflow/tfjs-core';
import { ortConv2D, ortConv2DBackpropFilter, ortConv2DBackpropInput, ortMatMul, type ConvGeometry } from './ort-kernels.js';

const BACKEND = 'wasm';

type Shape4 = [number, number, number, number];
type Pads = [[number, number], [number, number], [number, number], [number, number]];

/** Intermediate tensors of one kernel call, freed together when the call ends. */
class Scope {
  private readonly temps: TensorInfo[] = [];

  constructor(readonly backend: BackendWasm) {}

  /** Runs a registered wasm kernel and keeps its output for disposal. */
  run(name: string, inputs: NamedTensorInfoMap, attrs: NamedAttrMap = {}): TensorInfo {
    const kernel = tf.getKernel(name, BACKEND);
    if (kernel == null) throw new Error(`dynn: the wasm backend has no ${name} kernel`);
    const out = kernel.kernelFunc({ inputs, backend: this.backend, attrs }) as TensorInfo;
    this.temps.push(out);
    return out;
  }

  /** Runs a captured original kernel function and keeps its output for disposal. */
  runFunc(func: KernelFunc, inputs: NamedTensorInfoMap, attrs: NamedAttrMap): TensorInfo {
    const out = func({ inputs, backend: this.backend, attrs }) as TensorInfo;
    this.temps.push(out);
    return out;
  }

  /** Takes a tensor out of the scope, so it survives as the kernel's result. */
  keep(t: TensorInfo): TensorInfo {
    const i = this.temps.indexOf(t);
    if (i >= 0) this.temps.splice(i, 1);
    return t;
  }

  dispose(): void {
    for (const t of this.temps) this.backend.disposeData(t.dataId);
    this.temps.length = 0;
  }
}

/** Runs `body` with a fresh scope and frees every intermediate it did not keep, also on error. */
function scoped(backend: BackendWasm, body: (s: Scope) => TensorInfo): TensorInfo {
  const s = new Scope(backend);
  try {
    return body(s);
  } finally {
    s.dispose();
  }
}

/** The same data under another shape; the caller still owns (and frees) the original. */
function view(t: TensorInfo, shape: number[]): TensorInfo {
  return { dataId: t.dataId, shape, dtype: t.dtype };
}

function swapLastTwo(rank: number): number[] {
  const perm = Array.from({ length: rank }, (_, i) => i);
  perm[rank - 2] = rank - 1;
  perm[rank - 1] = rank - 2;
  return perm;
}

function assertNHWC(dataFormat: string | undefined, kernel: string): void {
  if (dataFormat != null && dataFormat !== 'NHWC') {
    throw new Error(`dynn: wasm ${kernel} supports NHWC only, got ${dataFormat}`);
  }
}

function geometry(info: ReturnType<typeof tf.backend_util.computeConv2DInfo>): ConvGeometry {
  const { top, bottom, left, right } = info.padInfo;
  return {
    batch: info.batchSize,
    inH: info.inHeight,
    inW: info.inWidth,
    inC: info.inChannels,
    outH: info.outHeight,
    outW: info.outWidth,
    outC: info.outChannels,
    kh: info.filterHeight,
    kw: info.filterWidth,
    strideH: info.strideHeight,
    strideW: info.strideWidth,
    dilationH: info.dilationHeight,
    dilationW: info.dilationWidth,
    top,
    bottom,
    left,
    right,
  };
}

/**
 * Makes spatial dims 1 and 2 of `t` exactly match wanted pad amounts, some of which may be negative.
 * Negative amounts are cropped with Slice here; the non-negative rest is returned as explicit conv padding.
 */
function padOrCrop(s: Scope, t: TensorInfo, top: number, bottom: number, left: number, right: number): [TensorInfo, Pads] {
  let out = t;
  if (top < 0 || bottom < 0 || left < 0 || right < 0) {
    const [n, h, w, c] = t.shape;
    const ct = Math.max(-top, 0);
    const cl = Math.max(-left, 0);
    const size = [n, h - ct - Math.max(-bottom, 0), w - cl - Math.max(-right, 0), c];
    out = s.run(tf.Slice, { x: t }, { begin: [0, ct, cl, 0], size });
  }
  const pads: Pads = [
    [0, 0],
    [Math.max(top, 0), Math.max(bottom, 0)],
    [Math.max(left, 0), Math.max(right, 0)],
    [0, 0],
  ];
  return [out, pads];
}

/**
 * Inserts sh-1 zero rows after every row of an NHWC tensor (and sw-1 zero columns after every column).
 * The result has OH*sh rows: the last sh-1 of them are zeros too, which callers account for.
 */
function zeroInsert(s: Scope, dy: TensorInfo, sh: number, sw: number): TensorInfo {
  if (sh === 1 && sw === 1) return dy;
  const [n, oh, ow, c] = dy.shape;
  const spread = s.run(
    tf.PadV2,
    { x: view(dy, [n, oh, 1, ow, 1, c]) },
    { paddings: [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]], constantValue: 0 },
  );
  return view(spread, [n, oh * sh, ow * sw, c]);
}

function conv2DBackpropFilter(args: {
  inputs: Conv2DBackpropFilterInputs;
  backend: BackendWasm;
  attrs: Conv2DBackpropFilterAttrs;
}): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const dy = inputs.dy!;
  assertNHWC(attrs.dataFormat, 'Conv2DBackpropFilter');
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as Shape4, attrs.filterShape, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode, false, 'channelsLast');
  const [kh, kw, ci, co] = attrs.filterShape;
  const [b, h, w] = x.shape;
  const { strideHeight: sh, strideWidth: sw, outHeight: oh, outWidth: ow } = info;
  const { top: pt, left: pl } = info.padInfo;
  const viaOrt = ortConv2DBackpropFilter(backend, x, dy, geometry(info));
  if (viaOrt) return viaOrt;
  return scoped(backend, (s) => {
    if (kh === 1 && kw === 1 && sh === 1 && sw === 1 && pt === 0 && pl === 0 && oh === h && ow === w) {
      // A 1x1 stride-1 filter gradient is x^T dy; transposing explicitly keeps BatchMatMul on its fast path.
      const n = b * h * w;
      const xt = s.run(tf.Transpose, { x: view(x, [n, ci]) }, { perm: [1, 0] });
      const out = s.run(tf.BatchMatMul, { a: view(xt, [1, ci, n]), b: view(dy, [1, n, co]) }, {
        transposeA: false,
        transposeB: false,
      });
      return view(s.keep(out), [1, 1, ci, co]);
    }
    // As a conv: batch = Ci, channels = B, filter = dy laid out [OH,OW,B,Co], dilated by the forward stride.
    const xt = s.run(tf.Transpose, { x }, { perm: [3, 1, 2, 0] });
    const dyt = s.run(tf.Transpose, { x: dy }, { perm: [1, 2, 0, 3] });
    const [xin, pads] = padOrCrop(s, xt, pt, kh + (oh - 1) * sh - pt - h, pl, kw + (ow - 1) * sw - pl - w);
    const conv = s.run(tf.Conv2D, { x: xin, filter: dyt }, {
      strides: [1, 1],
      pad: pads,
      dataFormat: 'NHWC',
      dilations: [sh, sw],
    });
    return s.keep(s.run(tf.Transpose, { x: conv }, { perm: [1, 2, 0, 3] }));
  });
}

function conv2DBackpropInput(args: {
  inputs: Conv2DBackpropInputInputs;
  backend: BackendWasm;
  attrs: Conv2DBackpropInputAttrs;
}): TensorInfo {
  const { inputs, backend, attrs } = args;
  const dy = inputs.dy!;
  const filter = inputs.filter!;
  assertNHWC(attrs.dataFormat, 'Conv2DBackpropInput');
  const info = tf.backend_util.computeConv2DInfo(
    attrs.inputShape, filter.shape as Shape4, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode, false, 'channelsLast');
  const [, h, w] = attrs.inputShape;
  const [kh, kw] = filter.shape;
  const { strideHeight: sh, strideWidth: sw } = info;
  const { top: pt, left: pl } = info.padInfo;
  const viaOrt = ortConv2DBackpropInput(backend, dy, filter, geometry(info));
  if (viaOrt) return viaOrt;
  return scoped(backend, (s) => {
    const dyz = zeroInsert(s, dy, sh, sw);
    const [, lh, lw] = dyz.shape;
    const top = kh - 1 - pt;
    const left = kw - 1 - pl;
    const [din, pads] = padOrCrop(s, dyz, top, h + kh - 1 - top - lh, left, w + kw - 1 - left - lw);
    const reversed = s.run(tf.Reverse, { x: filter }, { dims: [0, 1] });
    const flipped = s.run(tf.Transpose, { x: reversed }, { perm: [0, 1, 3, 2] });
    return s.keep(s.run(tf.Conv2D, { x: din, filter: flipped }, {
      strides: [1, 1],
      pad: pads,
      dataFormat: 'NHWC',
      dilations: [1, 1],
    }));
  });
}

function depthwiseBackpropFilter(args: {
  inputs: DepthwiseConv2dNativeBackpropFilterInputs;
  backend: BackendWasm;
  attrs: DepthwiseConv2dNativeBackpropFilterAttrs;
}): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const dy = inputs.dy!;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as Shape4, attrs.filterShape, attrs.strides, attrs.dilations ?? 1, attrs.pad, attrs.dimRoundingMode, true);
  const [kh, kw, c, m] = attrs.filterShape;
  const [b, h, w] = x.shape;
  const { strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw, outHeight: oh, outWidth: ow } = info;
  const { top: pt, left: pl } = info.padInfo;
  return scoped(backend, (s) => {
    const spanH = (kh - 1) * dh + (oh - 1) * sh + 1;
    const spanW = (kw - 1) * dw + (ow - 1) * sw + 1;
    const xp = s.run(tf.PadV2, { x }, {
      paddings: [[0, 0], [pt, Math.max(spanH - pt - h, 0)], [pl, Math.max(spanW - pl - w, 0)], [0, 0]],
      constantValue: 0,
    });
    const dy5 = view(dy, [b, oh, ow, c, m]);
    const taps: TensorInfo[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const xs = s.run(tf.StridedSlice, { x: xp }, {
          begin: [0, i * dh, j * dw, 0],
          end: [b, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c],
          strides: [1, sh, sw, 1],
          beginMask: 0,
          endMask: 0,
          ellipsisMask: 0,
          newAxisMask: 0,
          shrinkAxisMask: 0,
        });
        const prod = s.run(tf.Multiply, { a: view(xs, [b, oh, ow, c, 1]), b: dy5 });
        taps.push(s.run(tf.Sum, { x: prod }, { axis: [0, 1, 2], keepDims: false }));
      }
    }
    const out = backend.makeOutput([kh, kw, c, m], 'float32');
    const ov = backend.typedArrayFromHeap(out);
    taps.forEach((t, i) => ov.set(backend.typedArrayFromHeap(t), i * c * m));
    return out;
  });
}

function depthwiseBackpropInput(args: {
  inputs: DepthwiseConv2dNativeBackpropInputInputs;
  backend: BackendWasm;
  attrs: DepthwiseConv2dNativeBackpropInputAttrs;
}): TensorInfo {
  const { inputs, backend, attrs } = args;
  const dy = inputs.dy!;
  const filter = inputs.filter!;
  const info = tf.backend_util.computeConv2DInfo(
    attrs.inputShape, filter.shape as Shape4, attrs.strides, attrs.dilations ?? 1, attrs.pad, attrs.dimRoundingMode, true);
  const [b, h, w, c] = attrs.inputShape;
  const [kh, kw, , m] = filter.shape;
  const { strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
  const { top: pt, left: pl } = info.padInfo;
  return scoped(backend, (s) => {
    const dyz = zeroInsert(s, dy, sh, sw);
    const [, lh, lw] = dyz.shape;
    const top = (kh - 1) * dh - pt;
    const left = (kw - 1) * dw - pl;
    const [din, pads] = padOrCrop(s, dyz, top, h + (kh - 1) * dh - top - lh, left, w + (kw - 1) * dw - left - lw);
    // Each of the C*M dy channels convolves with its own reversed tap: a depthwise conv with multiplier 1.
    const reversed = s.run(tf.Reverse, { x: filter }, { dims: [0, 1] });
    const out = s.run(tf.DepthwiseConv2dNative, { x: din, filter: view(reversed, [kh, kw, c * m, 1]) }, {
      strides: [1, 1],
      pad: pads,
      dilations: [dh, dw],
    });
    if (m === 1) return s.keep(out);
    return s.keep(s.run(tf.Sum, { x: view(out, [b, h, w, c, m]) }, { axis: [4], keepDims: false }));
  });
}

function makeBatchMatMul(original: KernelFunc) {
  return (args: { inputs: BatchMatMulInputs; backend: BackendWasm; attrs: BatchMatMulAttrs }): TensorInfo => {
    const { inputs, backend, attrs } = args;
    const a = inputs.a!;
    const b = inputs.b!;
    const viaOrt = ortMatMul(backend, a, b, attrs.transposeA, attrs.transposeB);
    if (viaOrt) return viaOrt;
    if (!attrs.transposeA && !attrs.transposeB) {
      return original({ inputs: { a, b }, backend, attrs: { transposeA: false, transposeB: false } }) as TensorInfo;
    }
    return scoped(backend, (s) => {
      const at = attrs.transposeA ? s.run(tf.Transpose, { x: a }, { perm: swapLastTwo(a.shape.length) }) : a;
      const bt = attrs.transposeB ? s.run(tf.Transpose, { x: b }, { perm: swapLastTwo(b.shape.length) }) : b;
      return s.keep(s.runFunc(original, { a: at, b: bt }, { transposeA: false, transposeB: false }));
    });
  };
}

/** wasm's fused kernel is wrong with a bias and a transpose or a batch, so this always composes plain kernels. */
function fusedMatMul(args: { inputs: _FusedMatMulInputs; backend: BackendWasm; attrs: _FusedMatMulAttrs }): TensorInfo {
  const { inputs, backend, attrs } = args;
  const { a, b, bias, preluActivationWeights } = inputs;
  return scoped(backend, (s) => {
    let y = s.run(tf.BatchMatMul, { a, b }, { transposeA: attrs.transposeA, transposeB: attrs.transposeB });
    if (bias != null) y = s.run(tf.Add, { a: y, b: bias });
    switch (attrs.activation) {
      case 'linear':
        break;
      case 'relu':
        y = s.run(tf.Relu, { x: y });
        break;
      case 'relu6':
        y = s.run(tf.Relu6, { x: y });
        break;
      case 'elu':
        y = s.run(tf.Elu, { x: y });
        break;
      case 'sigmoid':
        y = s.run(tf.Sigmoid, { x: y });
        break;
      case 'leakyrelu':
        y = s.run(tf.LeakyRelu, { x: y }, { alpha: attrs.leakyreluAlpha ?? 0.2 });
        break;
      case 'prelu':
        y = s.run(tf.Prelu, { x: y, alpha: preluActivationWeights! });
        break;
      default:
        throw new Error(`dynn: unsupported fused activation ${String(attrs.activation)}`);
    }
    return s.keep(y);
  });
}

/**
 * The common 2x2 stride-2 pool that tiles its input exactly: windows do not overlap, so every dx element is
 * written once (dy at the window's first maximum, 0 elsewhere) and no zero fill is needed.
 */
function maxPoolGrad2x2(x: Float32Array, dy: Float32Array, dx: Float32Array, n: number, oh: number, ow: number, c: number): void {
  const rowStride = 2 * ow * c;
  let o = 0;
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < oh; i++) {
      let p00 = (b * 2 * oh + 2 * i) * rowStride;
      for (let j = 0; j < ow; j++, p00 += 2 * c) {
        const p01 = p00 + c;
        const p10 = p00 + rowStride;
        const p11 = p10 + c;
        for (let k = 0; k < c; k++, o++) {
          const a = x[p00 + k];
          const bb = x[p01 + k];
          const cc = x[p10 + k];
          const d = x[p11 + k];
          // Row-major order, strict >: the first maximum wins, as in the generic path.
          let at = 0;
          let best = a;
          if (bb > best) { best = bb; at = 1; }
          if (cc > best) { best = cc; at = 2; }
          if (d > best) at = 3;
          const g = dy[o];
          dx[p00 + k] = at === 0 ? g : 0;
          dx[p01 + k] = at === 1 ? g : 0;
          dx[p10 + k] = at === 2 ? g : 0;
          dx[p11 + k] = at === 3 ? g : 0;
        }
      }
    }
  }
}

/** TF semantics: each window's gradient goes to its FIRST maximum (row-major), padding never wins. */
function maxPoolGrad(args: { inputs: MaxPoolGradInputs; backend: BackendWasm; attrs: MaxPoolGradAttrs }): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.input!;
  const dy = inputs.dy!;
  const info = tf.backend_util.computePool2DInfo(
    x.shape as Shape4, attrs.filterSize, attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  const dx = backend.makeOutput(x.shape, 'float32');
  // Heap views are taken after the last allocation: growing wasm memory would detach them.
  const xv = backend.typedArrayFromHeap(x) as Float32Array;
  const dyv = backend.typedArrayFromHeap(dy) as Float32Array;
  const dxv = backend.typedArrayFromHeap(dx) as Float32Array;
  const { batchSize, inHeight, inWidth, inChannels: c, outHeight, outWidth, strideHeight, strideWidth } = info;
  const { filterHeight, filterWidth, dilationHeight, dilationWidth } = info;
  const { top, left } = info.padInfo;
  if (filterHeight === 2 && filterWidth === 2 && strideHeight === 2 && strideWidth === 2 && dilationHeight === 1 &&
    dilationWidth === 1 && top === 0 && left === 0 && inHeight === 2 * outHeight && inWidth === 2 * outWidth) {
    maxPoolGrad2x2(xv, dyv, dxv, batchSize, outHeight, outWidth, c);
    return dx;
  }
  dxv.fill(0);
  const taps = new Int32Array(filterHeight * filterWidth);
  let dyOff = 0;
  for (let n = 0; n < batchSize; n++) {
    for (let oh = 0; oh < outHeight; oh++) {
      const h0 = oh * strideHeight - top;
      for (let ow = 0; ow < outWidth; ow++, dyOff += c) {
        const w0 = ow * strideWidth - left;
        // Row-major tap order makes the strict > below pick the first maximum; taps in the padding are skipped.
        let count = 0;
        for (let i = 0; i < filterHeight; i++) {
          const hh = h0 + i * dilationHeight;
          if (hh < 0 || hh >= inHeight) continue;
          for (let j = 0; j < filterWidth; j++) {
            const ww = w0 + j * dilationWidth;
            if (ww >= 0 && ww < inWidth) taps[count++] = ((n * inHeight + hh) * inWidth + ww) * c;
          }
        }
        for (let k = 0; k < c; k++) {
          let best = -Infinity;
          let at = -1;
          for (let t = 0; t < count; t++) {
            const v = xv[taps[t] + k];
            if (v > best) {
              best = v;
              at = taps[t] + k;
            }
          }
          if (at >= 0) dxv[at] += dyv[dyOff + k];
        }
      }
    }
  }
  return dx;
}

/**
 * Sums rows of x into segments; ids outside [0, numSegments) are dropped, as in TensorFlow. Where no id repeats
 * (a gather's gradient when a dispatch partitions the batch, the common case) the sum is a scatter: runs of
 * consecutive ids are copied in one call and only the segments no row reaches are zeroed, 10x faster than
 * adding element by element.
 */
function unsortedSegmentSum(args: {
  inputs: UnsortedSegmentSumInputs;
  backend: BackendWasm;
  attrs: UnsortedSegmentSumAttrs;
}): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const ids = inputs.segmentIds!;
  const { numSegments } = attrs;
  const rowShape = x.shape.slice(ids.shape.length);
  const row = tf.util.sizeFromShape(rowShape);
  const rows = tf.util.sizeFromShape(ids.shape);
  // A copy: allocating the output may grow the wasm memory and detach a view taken before.
  const idc = Int32Array.from(backend.typedArrayFromHeap(ids));
  const out = backend.makeOutput([numSegments, ...rowShape], x.dtype);
  if (numSegments * row === 0) return out;
  const hit = new Uint8Array(numSegments);
  let unique = true;
  for (let r = 0; r < rows && unique; r++) {
    const seg = idc[r];
    if (!(seg >= 0 && seg < numSegments)) continue;
    if (hit[seg]) unique = false;
    hit[seg] = 1;
  }
  if (unique) {
    const { heap, xb, ob } = sharedHeap(backend, x, out);
    for (let seg = 0; seg < numSegments; seg++) if (!hit[seg]) heap.fill(0, ob + seg * row, ob + (seg + 1) * row);
    for (let r = 0; r < rows; ) {
      const seg = idc[r];
      let end = r + 1;
      if (!(seg >= 0 && seg < numSegments)) {
        r = end;
        continue;
      }
      while (end < rows && idc[end] === seg + (end - r) && idc[end] < numSegments) end++;
      heap.copyWithin(ob + seg * row, xb + r * row, xb + end * row);
      r = end;
    }
    return out;
  }
  const xv = backend.typedArrayFromHeap(x);
  const idv = idc;
  const ov = backend.typedArrayFromHeap(out);
  ov.fill(0);
  for (let r = 0; r < rows; r++) {
    const seg = idv[r];
    if (!(seg >= 0 && seg < numSegments)) continue;
    const src = r * row;
    const dst = seg * row;
    for (let k = 0; k < row; k++) ov[dst + k] += xv[src + k];
  }
  return out;
}

/**
 * The wasm heap as one typed array of `x`'s dtype, with `x`'s and `out`'s offsets in it, for copies between
 * them with `copyWithin`. Call after the last allocation: a heap growth detaches views taken before.
 */
function sharedHeap(backend: BackendWasm, x: TensorInfo, out: TensorInfo): { heap: Float32Array; xb: number; ob: number } {
  const xv = backend.typedArrayFromHeap(x);
  const ov = backend.typedArrayFromHeap(out);
  const heap = new (xv.constructor as Float32ArrayConstructor)(xv.buffer);
  return { heap, xb: xv.byteOffset / xv.BYTES_PER_ELEMENT, ob: ov.byteOffset / ov.BYTES_PER_ELEMENT };
}

/**
 * Gather along any axis with batchDims 0: one copy inside the heap per run of consecutive indices, whole
 * samples of a batch or a spatially sparse convolution's patch rows of 16 channels alike. wasm's own GatherV2
 * moves element by element: about 20x slower on blocks (240 ms to keep 218 of 256 feature maps of
 * 28x28x32), 10x or more on rows (420 ms to gather 225k rows of 16 channels).
 */
function makeGather(original: KernelFunc) {
  return (args: { inputs: GatherV2Inputs; backend: BackendWasm; attrs: GatherV2Attrs }): TensorInfo => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x!;
    const indices = inputs.indices!;
    const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
    const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
    if ((attrs.batchDims ?? 0) !== 0) return original(args as unknown as Parameters<KernelFunc>[0]) as TensorInfo;
    const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
    const n = x.shape[axis];
    // A copy: allocating the output may grow the wasm memory, which detaches every view of the heap taken
    // before (an index view would then read as empty and the output keep whatever the heap held).
    const idx = Int32Array.from(backend.typedArrayFromHeap(indices));
    for (let j = 0; j < idx.length; j++) {
      if (!(idx[j] >= 0 && idx[j] < n)) throw new Error(`GatherV2: index ${idx[j]} is not in [0, ${n - 1}]`);
    }
    const out = backend.makeOutput([...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)], x.dtype);
    // copyWithin moves a run of consecutive indices (a 3x3 patch's row of taps) in one call and allocates
    // nothing, where a subarray per index costs more than its copy.
    const { heap, xb, ob } = sharedHeap(backend, x, out);
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < idx.length; ) {
        let run = 1;
        while (j + run < idx.length && idx[j + run] === idx[j] + run) run++;
        const src = xb + (o * n + idx[j]) * inner;
        heap.copyWithin(ob + (o * idx.length + j) * inner, src, src + run * inner);
        j += run;
      }
    }
    return out;
  };
}

/** Blocks from this many values are split by typed-array copies. */
const GATHER_MIN_BLOCK = 64;

/**
 * SplitV into blocks of at least GATHER_MIN_BLOCK values (e.g. the parts of a batch: the gradient of the
 * concatenation that reassembles a batch split by route): a typed-array copy per block. wasm's own splits
 * through its generic Slice, 50-140 ms for a batch of 128 28x28x16 maps, the largest kernel of a gated
 * training step; other cases keep it.
 */
function makeSplitV(original: KernelFunc) {
  return (args: { inputs: SplitVInputs; backend: BackendWasm; attrs: SplitVAttrs }): TensorInfo[] => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x!;
    const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
    const inner = tf.util.sizeFromShape(x.shape.slice(axis + 1));
    const n = x.shape[axis];
    const sizes = typeof attrs.numOrSizeSplits === 'number' ? new Array<number>(attrs.numOrSizeSplits).fill(n / attrs.numOrSizeSplits) : attrs.numOrSizeSplits.slice();
    const free = sizes.indexOf(-1);
    if (free >= 0) sizes[free] = n - sizes.reduce((a, b) => a + (b === -1 ? 0 : b), 0);
    if (inner < GATHER_MIN_BLOCK || !['float32', 'int32', 'bool'].includes(x.dtype) || !sizes.every((k) => Number.isInteger(k) && k >= 0) || sizes.reduce((a, b) => a + b, 0) !== n) {
      return original(args as unknown as Parameters<KernelFunc>[0]) as unknown as TensorInfo[];
    }
    const outer = tf.util.sizeFromShape(x.shape.slice(0, axis));
    const outs = sizes.map((k) => backend.makeOutput([...x.shape.slice(0, axis), k, ...x.shape.slice(axis + 1)], x.dtype));
    // Views after every allocation: a heap growth detaches the ones taken before.
    const xv = backend.typedArrayFromHeap(x);
    let start = 0;
    sizes.forEach((k, p) => {
      const ov = backend.typedArrayFromHeap(outs[p]);
      const block = k * inner;
      for (let o = 0; o < outer; o++) {
        const src = (o * n + start) * inner;
        ov.set(xv.subarray(src, src + block), o * block);
      }
      start += k;
    });
    return outs;
  };
}

/**
 * Slice by copies inside the wasm heap. wasm's own kernel reads its input through `readSync`, which copies
 * the whole tensor out of the heap first: slicing a throttled dense layer's 3136x256 kernel to its first 392
 * rows took 4-10 ms, most of it that copy. Here each contiguous run (the trailing dims the slice keeps
 * whole, and the part of the dim before them) is one `copyWithin`.
 */
function makeSlice(original: KernelFunc) {
  return (args: { inputs: SliceInputs; backend: BackendWasm; attrs: SliceAttrs }): TensorInfo => {
    const { inputs, backend, attrs } = args;
    const x = inputs.x!;
    if (x.shape.length === 0 || !['float32', 'int32', 'bool'].includes(x.dtype)) return original(args as unknown as Parameters<KernelFunc>[0]) as TensorInfo;
    const [begin, size] = tf.slice_util.parseSliceParams(x as unknown as tf.TensorInfo, attrs.begin, attrs.size);
    const out = backend.makeOutput(size, x.dtype);
    if (size.some((d) => d === 0)) return out;
    // The innermost contiguous run: trailing dims taken whole, times the size along the first one that is not.
    const rank = x.shape.length;
    let d = rank - 1;
    let run = 1;
    while (d > 0 && size[d] === x.shape[d]) run *= x.shape[d--];
    run *= size[d];
    const strides = tf.util.computeStrides(x.shape);
    const { heap, xb, ob } = sharedHeap(backend, x, out);
    const runs = tf.util.sizeFromShape(size.slice(0, d));
    const at = new Array<number>(d).fill(0);
    for (let r = 0; r < runs; r++) {
      let src = xb + begin[d] * (strides[d] ?? 1);
      for (let k = 0; k < d; k++) src += (begin[k] + at[k]) * strides[k];
      heap.copyWithin(ob + r * run, src, src + run);
      for (let k = d - 1; k >= 0 && ++at[k] === size[k]; k--) at[k] = 0;
    }
    return out;
  };
}

/**
 * Conv2D through ONNX Runtime where that is faster, else wasm's own (XNNPACK). Training runs this unfused
 * kernel; inference (FusedConv2D, BatchNorm folded) stays on XNNPACK, whose time follows the FLOPs of a
 * throttled layer more closely (deployment runs the ONNX export in ONNX Runtime anyway).
 */
function makeConv2D(original: KernelFunc) {
  return (args: { inputs: Conv2DInputs; backend: BackendWasm; attrs: Conv2DAttrs }): TensorInfo => {
    const { inputs, backend, attrs } = args;
    if (attrs.dataFormat == null || attrs.dataFormat === 'NHWC') {
      const info = tf.backend_util.computeConv2DInfo(
        inputs.x!.shape as Shape4, inputs.filter!.shape as Shape4, attrs.strides, attrs.dilations, attrs.pad,
        attrs.dimRoundingMode, false, 'channelsLast');
      const viaOrt = ortConv2D(backend, inputs.x!, inputs.filter!, geometry(info));
      if (viaOrt) return viaOrt;
    }
    return original(args as unknown as Parameters<KernelFunc>[0]) as TensorInfo;
  };
}

/**
 * Identity without a copy: the result shares the input's data, as on the cpu backend. TF.js tensors are
 * immutable (a variable's assign swaps data ids), so sharing is safe; wasm's own kernel copies every element,
 * and autodiff calls it on whole activation tensors every step.
 */
function identity(args: { inputs: { x?: TensorInfo }; backend: BackendWasm }): TensorInfo {
  const x = args.inputs.x!;
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/**
 * Transpose by the identity permutation without a copy (the result shares the input's data, as `identity`):
 * a gather's gradient transposes by the identity around every segment sum, and wasm's own kernel copies. Only
 * the exact identity, because data shared under another shape breaks wasm: its matrix-product operators are
 * cached by the weights' data id, not their shape, so a [w, 1] kernel seen as [1, w] under the same id reused
 * the forward operator with the wrong shape (wrong values, then a write out of bounds: wasm's free failed in a
 * gated unit's gradient). A shared data id must keep its shape.
 */
function makeTranspose(original: KernelFunc) {
  return (args: { inputs: TransposeInputs; backend: BackendWasm; attrs: TransposeAttrs }): TensorInfo => {
    if (args.attrs.perm.every((axis, i) => axis === i)) return identity(args);
    return original(args as unknown as Parameters<KernelFunc>[0]) as TensorInfo;
  };
}

/**
 * Cast to the dtype a tensor already has, without a copy (as `identity`): TF.js's ReLU gradient casts its
 * float step function to float on every call, and wasm's own kernel copies the whole activation.
 */
function makeCast(original: KernelFunc) {
  return (args: { inputs: CastInputs; backend: BackendWasm; attrs: CastAttrs }): TensorInfo => {
    if (args.inputs.x!.dtype === args.attrs.dtype) return identity(args);
    return original(args as unknown as Parameters<KernelFunc>[0]) as TensorInfo;
  };
}

/** Builds a kernel function; `original` is the wasm kernel being replaced, if any. */
type Factory = (original: KernelFunc | undefined) => KernelFunc;

interface Entry {
  name: string;
  factory: Factory;
  /** Register only when wasm has no kernel of this name. */
  onlyIfMissing?: boolean;
}

// The registry's KernelFunc is untyped ({} backend, loose maps); ours take the typed inputs, attrs and BackendWasm.
const asKernel = (f: unknown): KernelFunc => f as KernelFunc;

/** An entry that wraps wasm's own kernel of `name` (`make` gets it to fall back on); wasm must have one. */
function wrapping(name: string, make: (original: KernelFunc) => unknown): Entry {
  return {
    name,
    factory: (original) => {
      if (original == null) throw new Error(`dynn: the wasm backend has no ${name} kernel`);
      return asKernel(make(original));
    },
  };
}

const ENTRIES: readonly Entry[] = [
  wrapping(tf.Conv2D, makeConv2D),
  { name: tf.Identity, factory: () => asKernel(identity) },
  { name: tf.Conv2DBackpropFilter, factory: () => asKernel(conv2DBackpropFilter) },
  { name: tf.Conv2DBackpropInput, factory: () => asKernel(conv2DBackpropInput) },
  wrapping(tf.BatchMatMul, makeBatchMatMul),
  { name: tf._FusedMatMul, factory: () => asKernel(fusedMatMul) },
  { name: tf.MaxPoolGrad, factory: () => asKernel(maxPoolGrad) },
  { name: tf.UnsortedSegmentSum, factory: () => asKernel(unsortedSegmentSum) },
  wrapping(tf.Cast, makeCast),
  wrapping(tf.Transpose, makeTranspose),
  wrapping(tf.GatherV2, makeGather),
  wrapping(tf.Slice, makeSlice),
  wrapping(tf.SplitV, makeSplitV),
  { name: tf.DepthwiseConv2dNativeBackpropFilter, factory: () => asKernel(depthwiseBackpropFilter), onlyIfMissing: true },
  { name: tf.DepthwiseConv2dNativeBackpropInput, factory: () => asKernel(depthwiseBackpropInput), onlyIfMissing: true },
];

/** Names of the wasm kernels dynn registers (some only if wasm lacks them). */
export const WASM_TRAINING_KERNELS: readonly string[] = ENTRIES.map((e) => e.name);

/**
 * Marks our configs and remembers what they replaced. A global symbol, so a second copy of this module
 * (or a second call) recognises registrations it did not make itself.
 */
const REPLACED = Symbol.for('dynn.wasmTrainingKernel.replaced');

interface DynnKernelConfig extends KernelConfig {
  [REPLACED]: KernelConfig | null;
}

function isOurs(config: KernelConfig | undefined): config is DynnKernelConfig {
  return config != null && REPLACED in config;
}

/**
 * Registers dynn's training kernels for the `wasm` backend: the missing Conv2DBackpropFilter,
 * UnsortedSegmentSum and depthwise gradients, and fast or correct replacements for Conv2D and
 * Conv2DBackpropInput (both through ONNX Runtime where it is faster), BatchMatMul, _FusedMatMul, MaxPoolGrad,
 * Identity, Cast, Transpose, Slice, and GatherV2 and SplitV of whole blocks. Idempotent; works before or after the wasm backend
 * is initialised.
 */
export function registerWasmTrainingKernels(): void {
  for (const entry of ENTRIES) {
    const current = tf.getKernel(entry.name, BACKEND);
    if (isOurs(current)) continue;
    if (current != null && entry.onlyIfMissing) continue;
    const config: DynnKernelConfig = {
      kernelName: entry.name,
      backendName: BACKEND,
      kernelFunc: entry.factory(current?.kernelFunc),
      // The original's setup binds its wasm function; it must still run if the backend starts later.
      setupFunc: current?.setupFunc,
      disposeFunc: current?.disposeFunc,
      [REPLACED]: current ?? null,
    };
    if (current != null) tf.unregisterKernel(entry.name, BACKEND);
    tf.registerKernel(config);
  }
}

/**
 * Undoes registerWasmTrainingKernels for the given kernels (all by default): puts wasm's own kernel back,
 * or leaves none where wasm had none. For benchmarks and tests that compare against stock wasm.
 */
export function unregisterWasmTrainingKernels(names: readonly string[] = WASM_TRAINING_KERNELS): void {
  for (const name of names) {
    const current = tf.getKernel(name, BACKEND);
    if (!isOurs(current)) continue;
    tf.unregisterKernel(name, BACKEND);
    const original = current[REPLACED];
    if (original != null) tf.registerKernel(original);
  }
}
