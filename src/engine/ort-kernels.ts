/**
 * Convolutions, their gradients and matrix products for the wasm training backend, run by ONNX Runtime's CPU
 * kernels (MLAS).
 *
 * TF.js's wasm backend convolves with 128-bit SIMD XNNPACK at about 20 GFLOP/s per core here, and its
 * gradients are compositions that run slower still; ONNX Runtime's MLAS, already a dependency for deployment,
 * uses the machine's full vector width (measured 2x on forward and input-gradient convolutions, 2-5x on filter
 * gradients, 2-3x on a dense layer's products). TF.js stays the engine: these are kernels registered for its wasm backend, reading and writing
 * the backend's tensors in place in the wasm heap.
 *
 * TF.js kernels are synchronous and onnxruntime-node's public `run()` returns a promise (it runs the native,
 * synchronous call on the next tick), so the kernels call the native session directly. That binding is internal
 * to onnxruntime-node: if it is missing or behaves differently, `ortKernelsAvailable()` is false and the wasm
 * kernels run as before. `DYNN_ORT_KERNELS=0` turns them off.
 *
 * One session per operation and attribute set, with symbolic shapes (every slicing of a throttled layer
 * reuses it), except the blocked-layout convolutions, which bake in their channel counts (one per width);
 * one intra-op thread, since data-parallel training already runs one worker per core.
 */
import { createRequire } from 'node:module';
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { GraphBuilder, NameScope, attr, floatValueInfo, type Attr } from '../export/graph.js';
import { DataType, IR_VERSION, OPSET_VERSION, encodeModel } from '../export/onnx-proto.js';

/**
 * Below this many FLOPs a call stays on wasm (XNNPACK for the forward pass): a session run and the layout
 * transposes cost tens of microseconds, which a batch of one does not win back (inference of vgg-w at batch 1
 * stays on XNNPACK). Filter gradients go from a share of it (ORT_FILTER_GRADIENT_SHARE).
 */
export const ORT_MIN_FLOPS = 16e6;

/**
 * Filter gradients go to ONNX Runtime from this share of the threshold: they run in training only, in
 * batches, and wasm's form of them (a convolution over the batch axis, between transposes) costs far more
 * than a session run: resnet-d's stem (1 to 16 channels at 28x28, batch 64, 14.5 MFLOP) took 7.0 ms there
 * against 1.1 ms here.
 */
export const ORT_FILTER_GRADIENT_SHARE = 1 / 4;

/**
 * Input gradients go to ONNX Runtime from this share of the threshold: they run in training only, where a
 * gated block splits its batch into parts of a few samples each. At batch 64 and 3.6-4.7 MFLOP (a gate's
 * layers of 4 to 16 channels) ONNX Runtime took 0.35-0.9x wasm's time for 3x3 filters, and for strided ones
 * wasm's form (dy with zeros inserted, 4x the pixels at stride 2) ran 2-14x slower: a 1x1 stride-2 projection
 * from 16 to 32 channels at 28x28 took 12.9 against 0.9 ms. A gated resnet38 training at 0.59 of its FLOPs
 * spent 107 against 176 ms per step in them. See ORT_NARROW_DX_CHANNELS for the exception.
 */
export const ORT_INPUT_GRADIENT_SHARE = 1 / 16;

/**
 * The input gradient of a 1x1 stride-1 filter from fewer output channels than this (a narrow matrix product)
 * stays on wasm, whatever its size: XNNPACK ran 16 to 4 channels at 28x28, batch 64 in 0.41 ms, ONNX
 * Runtime's blocked form in 5.0 (32 to 8 at 14x14: 0.26 against 0.84).
 */
export const ORT_NARROW_DX_CHANNELS = 16;

/** Forward convolutions with fewer input or output channels than this stay on XNNPACK, unless they run blocked (see MAX_BLOCK_PADDING_OVER_XNNPACK). */
export const ORT_MIN_CHANNELS = 16;

let minFlops = ORT_MIN_FLOPS;
/** Calls served per kernel; `nchwc` counts the convolutions (forward or dx) that ran in the blocked layout. */
const calls = { conv: 0, dx: 0, dw: 0, matmul: 0, nchwc: 0 };

/**
 * Sets the FLOPs from which calls go to ONNX Runtime (filter gradients: ORT_FILTER_GRADIENT_SHARE of it; tests
 * use 0 to send every call there, whatever its channel count); returns the previous value.
 */
export function setOrtMinFlops(flops: number): number {
  const previous = minFlops;
  minFlops = flops;
  return previous;
}

/** How many calls each ONNX Runtime kernel has served in this thread (convolution, its gradients, matmul). */
export function ortKernelCalls(): Readonly<typeof calls> {
  return { ...calls };
}

interface NativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: object): void;
  run(feeds: Record<string, unknown>, fetches: Record<string, unknown>, options: object): Record<string, unknown>;
  /** Optional: the self-check must not depend on it. */
  dispose?(): void;
}

interface OrtModule {
  Tensor: new (type: string, data: Float32Array | BigInt64Array, dims: readonly number[]) => unknown;
  session(bytes: Uint8Array, options: { arena: boolean }): NativeSession;
}

let nativeOrt: OrtModule | null | undefined;

/** onnxruntime-node's native binding, or null when it is absent or not what this module expects. */
function loadBinding(): OrtModule | null {
  if (nativeOrt !== undefined) return nativeOrt;
  nativeOrt = null;
  try {
    const require = createRequire(import.meta.url);
    const ort = require('onnxruntime-node') as { Tensor: OrtModule['Tensor'] };
    const { binding, initOrt } = require('onnxruntime-node/dist/binding.js') as {
      binding: { InferenceSession: new () => NativeSession };
      initOrt: () => void;
    };
    if (typeof initOrt !== 'function' || typeof binding?.InferenceSession !== 'function') return null;
    initOrt();
    const candidate: OrtModule = {
      Tensor: ort.Tensor,
      session(bytes, { arena }) {
        const s = new binding.InferenceSession();
        s.loadModel(bytes.buffer, bytes.byteOffset, bytes.byteLength, {
          intraOpNumThreads: 1,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
          enableCpuMemArena: arena,
        });
        return s;
      },
    };
    if (selfCheck(candidate)) nativeOrt = candidate;
  } catch {
    nativeOrt = null;
  }
  return nativeOrt;
}

let ortModule: OrtModule | null | undefined;

/** The binding for the kernels, or null when it is missing or `DYNN_ORT_KERNELS=0` turns them off. */
function loadOrt(): OrtModule | null {
  if (ortModule !== undefined) return ortModule;
  ortModule = process.env.DYNN_ORT_KERNELS === '0' ? null : loadBinding();
  if (ortModule != null) raiseMallocThresholds();
  return ortModule;
}

/** Whether the ONNX Runtime kernels can run in this thread. */
export function ortKernelsAvailable(): boolean {
  return loadOrt() != null;
}

type GraphBody = (g: GraphBuilder) => void;

/** ONNX Runtime's operator set of MLAS's blocked-layout (NCHWc) kernels, in its CPU provider. */
const NCHWC = 'com.microsoft.nchwc';

/**
 * A session of one kernel graph. A plain graph keeps an arena: it holds the intermediates between calls, and
 * without it fresh pages cost 2-3x. A blocked one (`nchwc`: it imports the NCHWc operators) bakes in its
 * channel counts, so a throttled layer has one per width; each with an arena of its own, vgg-w's levels took
 * 530 MB more per worker and its two-worker training step 1.18-1.36x longer than without (four alternations:
 * 162-218 ms against 136-178), its buffers spread over memory where the allocator reuses warm ones.
 */
function buildSession(ort: OrtModule, body: GraphBody, { nchwc = false, arena = !nchwc }: { nchwc?: boolean; arena?: boolean } = {}): NativeSession {
  const g = new GraphBuilder('dynn_kernel', new NameScope());
  body(g);
  const bytes = encodeModel({
    ir_version: IR_VERSION,
    opset_import: [{ domain: '', version: OPSET_VERSION }, ...(nchwc ? [{ domain: NCHWC, version: 1 }] : [])],
    producer_name: 'dynn',
    producer_version: '',
    metadata_props: [],
    graph: g.build(),
  });
  return ort.session(bytes, { arena });
}

/** Builds a one-off graph (a probe, not a kernel), runs it once on `feeds` into `fetches`, and releases it. */
function runOnce(ort: OrtModule, body: GraphBody, feeds: Record<string, unknown>, fetches: Record<string, unknown>, options: { nchwc?: boolean; arena?: boolean } = {}): void {
  const s = buildSession(ort, body, options);
  try {
    s.run(feeds, fetches, {});
  } finally {
    s.dispose?.();
  }
}

function int64Input(g: GraphBuilder, name: string, length: number): void {
  g.input({ name, type: { tensor_type: { elem_type: DataType.INT64, shape: { dim: [{ dim_value: length }] } } } });
}

const sessions = new Map<string, NativeSession>();

function cached(ort: OrtModule, key: string, body: GraphBody, options: { nchwc?: boolean } = {}): NativeSession {
  let s = sessions.get(key);
  if (!s) {
    s = buildSession(ort, body, options);
    sessions.set(key, s);
  }
  return s;
}

/** Spatial geometry of one 2-D convolution, as TF.js computes it (NHWC). */
export interface ConvGeometry {
  batch: number;
  inH: number;
  inW: number;
  inC: number;
  outH: number;
  outW: number;
  outC: number;
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  dilationH: number;
  dilationW: number;
  /** Padding before and after, rows then columns (TF.js's padInfo). */
  top: number;
  bottom: number;
  left: number;
  right: number;
}

function flops(g: ConvGeometry): number {
  return 2 * g.batch * g.outH * g.outW * g.kh * g.kw * g.inC * g.outC;
}

const NHWC_TO_NCHW = [0, 3, 1, 2];
const NCHW_TO_NHWC = [0, 2, 3, 1];
const HWIO_TO_OIHW = [3, 2, 0, 1];

/**
 * Runs a session on float tensors in the wasm heap and returns its one output `y`, written in place into a new
 * wasm tensor of `shape` (ONNX Runtime sees it as `ortDims`, same memory layout), freed again on error.
 * `dims` gives inputs ONNX Runtime sees under another shape; `ints` are int64 inputs.
 */
function runToOutput(
  ort: OrtModule,
  backend: BackendWasm,
  session: NativeSession,
  kind: keyof typeof calls,
  inputs: Record<string, TensorInfo>,
  shape: number[],
  { ints = {}, ortDims = shape, dims = {}, blocked = false }: { ints?: Record<string, number[]>; ortDims?: number[]; dims?: Record<string, number[]>; blocked?: boolean } = {},
): TensorInfo {
  const out = backend.makeOutput(shape, 'float32');
  try {
    // Views are taken after every allocation: a growing wasm memory detaches older ones.
    const feeds: Record<string, unknown> = {};
    for (const [name, t] of Object.entries(inputs)) {
      feeds[name] = new ort.Tensor('float32', backend.typedArrayFromHeap(t) as Float32Array, dims[name] ?? t.shape);
    }
    for (const [name, v] of Object.entries(ints)) feeds[name] = new ort.Tensor('int64', BigInt64Array.from(v.map(BigInt)), [v.length]);
    session.run(feeds, { y: new ort.Tensor('float32', backend.typedArrayFromHeap(out) as Float32Array, ortDims) }, {});
  } catch (e) {
    backend.disposeData(out.dataId);
    throw e;
  }
  calls[kind]++;
  if (blocked) calls.nchwc++;
  return out;
}

let nchwcBlock: number | undefined;

/**
 * MLAS's NCHWc block (channels per block: 16 with AVX-512, 8 with AVX2), read once per thread from the shape
 * ReorderInput gives one pixel of 4 channels; 0 where this build has no blocked kernels.
 */
function blockSize(ort: OrtModule): number {
  if (nchwcBlock !== undefined) return nchwcBlock;
  nchwcBlock = 0;
  try {
    const dims = new BigInt64Array(4);
    runOnce(ort, (b) => {
      b.input(floatValueInfo('x', [1, 1, 1, 4]));
      b.nodeTo('Shape', [b.node('ReorderInput', ['x'], 'xb', { channels_last: attr.int(1) }, NCHWC)], 'y');
      b.output({ name: 'y', type: { tensor_type: { elem_type: DataType.INT64, shape: { dim: [{ dim_value: 4 }] } } } });
    }, { x: new ort.Tensor('float32', new Float32Array(4), [1, 1, 1, 4]) }, { y: new ort.Tensor('int64', dims, [4]) }, { nchwc: true });
    const block = Number(dims[1]);
    if (block >= 4 && block <= 64 && (block & (block - 1)) === 0) nchwcBlock = block;
  } catch {
    // No NCHWc operators in this build: plain Conv serves every call.
  }
  return nchwcBlock;
}

/** MLAS's NCHWc block in this thread (0: none, or no ONNX Runtime kernels), for tests and benchmarks. */
export function ortNchwcBlock(): number {
  const ort = loadOrt();
  return ort == null ? 0 : blockSize(ort);
}

/** `c` channels rounded up to whole blocks. */
function wholeBlocks(c: number, block: number): number {
  return Math.ceil(c / block) * block;
}

/** The most the blocked form may add by padding channels to whole blocks (padded over real FLOPs). */
export const MAX_BLOCK_PADDING = 2;

/**
 * The same for a forward pass with fewer than ORT_MIN_CHANNELS channels, whose alternative is XNNPACK (slower:
 * 32 to 4 channels padded to 16, 4x the FLOPs, took 0.63-0.78x its time). Measured with blocks of 16 only;
 * with blocks of 8 (AVX2, half the vector width) MAX_BLOCK_PADDING holds.
 */
export const MAX_BLOCK_PADDING_OVER_XNNPACK = 4;

/**
 * The block size when a convolution from `ci` to `co` channels should run blocked, else 0 (the plain Conv, or
 * XNNPACK for a forward pass with few channels: `overXnnpack`, which allows MAX_BLOCK_PADDING_OVER_XNNPACK).
 * Padding to whole blocks must not cost more than the layout saves (one thread, batch 64, block 16, each
 * call interleaved with the plain Conv: 0.61-0.73x its time for 32 and 64 channels; padded within the 2x
 * bound, 24 to 24 and 40 to 40 0.76-0.89x; outside it, 20 to 20 padded to 32 (2.6x) 1.08x). Fewer input
 * channels than a block are read unblocked (MLAS's NCHW-input form: only the outputs are padded). Channels
 * come in fours (ReorderInput needs it; for 1 to 3 input channels MLAS was 7-11x slower than XNNPACK).
 */
function blockFor(ort: OrtModule, ci: number, co: number, overXnnpack = false): number {
  const block = blockSize(ort);
  if (block === 0 || ci % 4 !== 0) return 0;
  const up = (c: number) => wholeBlocks(c, block);
  const padded = ci < block ? up(co) / co : (up(ci) * up(co)) / (ci * co);
  return padded <= (overXnnpack && block === 16 ? MAX_BLOCK_PADDING_OVER_XNNPACK : MAX_BLOCK_PADDING) ? block : 0;
}

/**
 * y = conv(x, w) in MLAS's blocked layout (NCHWc: channels in blocks, innermost), reading and writing NHWC:
 * ReorderInput and ReorderOutput take channels-last tensors directly, so neither the two layout transposes
 * around a plain Conv (about a third of its time) nor its im2col (its filter is not a constant, so ONNX
 * Runtime's own NCHWc rewrite does not apply) are paid. An input of fewer channels than a block goes in as
 * NCHW (a small transpose) with the filter blocked by outputs only (OIHWBo). `w` is [KH, KW, Ci, Co]
 * (`hwio`) or [KH, KW, Co, Ci] (`hwoi`, a filter read as the transpose of another); it is zero-padded to
 * whole blocks and reordered in the graph, which is small beside the convolution. Writes graph output `y`.
 */
function blockedConv(
  b: GraphBuilder,
  x: string,
  w: string,
  { kh, kw, ci, co, block, order }: { kh: number; kw: number; ci: number; co: number; block: number; order: 'hwio' | 'hwoi' },
  attrs: Record<string, Attr>,
): void {
  const direct = (c: number) => c === block;
  const up = (c: number) => wholeBlocks(c, block);
  const narrow = ci < block;
  // The filter's dims 2 and 3 as given, each with whether it is split into blocks (the outputs always are).
  const [d2, d3] = order === 'hwio' ? [{ c: ci, blocked: !narrow }, { c: co, blocked: true }] : [{ c: co, blocked: true }, { c: ci, blocked: !narrow }];
  const pad = ({ c, blocked }: { c: number; blocked: boolean }) => (blocked ? up(c) - c : 0);
  const padded = b.node('Pad', [w, b.int64Const('filter_pads', [0, 0, 0, 0, 0, 0, pad(d2), pad(d3)])], 'w_padded');
  const dims = ({ c, blocked }: { c: number; blocked: boolean }) => (blocked ? [up(c) / block, block] : [c]);
  const split = b.node('Reshape', [padded, b.int64Const('blocks', [kh, kw, ...dims(d2), ...dims(d3)])], 'w_blocks');
  // To [Co/B, Ci/B, KH, KW, Bi, Bo] (OIHWBiBo), or [Co/B, Ci, KH, KW, Bo] (OIHWBo) for a narrow input.
  const perm = narrow ? (order === 'hwio' ? [3, 2, 0, 1, 4] : [2, 4, 0, 1, 3]) : order === 'hwio' ? [4, 2, 0, 1, 3, 5] : [2, 4, 0, 1, 5, 3];
  const reordered = b.node('Transpose', [split], 'w_reordered', { perm: attr.ints(perm) });
  const wb = b.node('Reshape', [reordered, b.int64Const('oihw', [up(co), narrow ? ci : up(ci), kh, kw])], 'w_nchwc');
  const xb = narrow
    ? b.node('Transpose', [x], 'x_nchw', { perm: attr.ints(NHWC_TO_NCHW) })
    : direct(ci)
      ? x
      : b.node('ReorderInput', [x], 'x_nchwc', { channels_last: attr.int(1) }, NCHWC);
  if (direct(co)) {
    b.nodeTo('Conv', [xb, wb], 'y', attrs, NCHWC);
    return;
  }
  const yb = b.node('Conv', [xb, wb], 'conv_nchwc', attrs, NCHWC);
  b.nodeTo('ReorderOutput', [yb], 'y', { channels: attr.int(co), channels_last: attr.int(1) }, NCHWC);
}

/**
 * Exactly one block of channels is the same memory in NHWC and in the blocked layout ([N, C/B, H, W, B] with
 * C = B): such an input goes into the blocked Conv as it is, seen as [N, C, H, W], and such an output comes
 * out without a reorder (each reorder of a 64x28x28x16 tensor is a pass over 3.2 MB). The graph input's
 * declared shape (`blockedInput`) and the dims both sides are run under (`blockedDims`) follow the same rule.
 */
function blockedInput(c: number, block: number): (string | number)[] {
  return c === block ? ['n', c, 'h', 'w'] : ['n', 'h', 'w', c];
}

function blockedDims(shape: number[], block: number): number[] {
  const [n, h, w, c] = shape;
  return c === block ? [n, c, h, w] : shape;
}

/** y = conv(x, filter), NHWC and HWIO as TF.js has them; null when the call should stay on XNNPACK. */
export function ortConv2D(backend: BackendWasm, x: TensorInfo, filter: TensorInfo, g: ConvGeometry): TensorInfo | null {
  const ort = loadOrt();
  if (ort == null || flops(g) < minFlops) return null;
  // With few channels XNNPACK's NHWC convolution is as fast as the plain Conv, which needs layout transposes;
  // the blocked form needs none and beats it (32 to 12 channels at 28x28, batch 64: 0.34x XNNPACK's time).
  const fewChannels = minFlops > 0 && Math.min(g.inC, g.outC) < ORT_MIN_CHANNELS;
  const block = blockFor(ort, g.inC, g.outC, fewChannels);
  const pads = [g.top, g.left, g.bottom, g.right];
  // Built only with a session (the bodies below run once per key), not on every call.
  const convAttrs = () => ({
    pads: attr.ints(pads),
    strides: attr.ints([g.strideH, g.strideW]),
    dilations: attr.ints([g.dilationH, g.dilationW]),
  });
  const geometryKey = `${g.kh}x${g.kw}:${g.strideH},${g.strideW}:${g.dilationH},${g.dilationW}:${pads}`;
  if (block > 0) {
    const session = cached(ort, `conv-nchwc${block}:${geometryKey}:${g.inC}>${g.outC}`, (b) => {
      b.input(floatValueInfo('x', blockedInput(g.inC, block)));
      b.input(floatValueInfo('f', [g.kh, g.kw, g.inC, g.outC]));
      blockedConv(b, 'x', 'f', { kh: g.kh, kw: g.kw, ci: g.inC, co: g.outC, block, order: 'hwio' }, convAttrs());
      b.output(floatValueInfo('y', null));
    }, { nchwc: true });
    const shape = [g.batch, g.outH, g.outW, g.outC];
    return runToOutput(ort, backend, session, 'conv', { x, f: filter }, shape, { blocked: true, dims: { x: blockedDims(x.shape, block) }, ortDims: blockedDims(shape, block) });
  }
  if (fewChannels) return null;
  const key = `conv:${geometryKey}`;
  const session = cached(ort, key, (b) => {
    b.input(floatValueInfo('x', ['n', 'h', 'w', 'ci']));
    b.input(floatValueInfo('f', [g.kh, g.kw, 'ci', 'co']));
    const xt = b.node('Transpose', ['x'], 'x_nchw', { perm: attr.ints(NHWC_TO_NCHW) });
    const ft = b.node('Transpose', ['f'], 'f_oihw', { perm: attr.ints(HWIO_TO_OIHW) });
    const c = b.node('Conv', [xt, ft], 'conv', convAttrs());
    b.nodeTo('Transpose', [c], 'y', { perm: attr.ints(NCHW_TO_NHWC) });
    b.output(floatValueInfo('y', null));
  });
  return runToOutput(ort, backend, session, 'conv', { x, f: filter }, [g.batch, g.outH, g.outW, g.outC]);
}

/** The filter `f` [KH, KW, ...] with its taps reversed in both spatial dims (a Slice with steps -1). */
function flipTaps(b: GraphBuilder, f: string): string {
  return b.node('Slice', [f, b.int64Const('starts', [-1, -1]), b.int64Const('ends', [-(2 ** 62), -(2 ** 62)]),
    b.int64Const('axes', [0, 1]), b.int64Const('steps', [-1, -1])], 'f_flipped');
}

/**
 * dx of a convolution from dy [B,OH,OW,Co] and the filter; dilation 1. Stride 1 is a convolution of dy with
 * the filter reversed in space (faster than ConvTranspose, whose col2im dominates for few channels); larger
 * strides use ConvTranspose. Null: stay on wasm.
 */
export function ortConv2DBackpropInput(backend: BackendWasm, dy: TensorInfo, filter: TensorInfo, g: ConvGeometry): TensorInfo | null {
  const ort = loadOrt();
  if (ort == null || flops(g) < minFlops * ORT_INPUT_GRADIENT_SHARE || g.dilationH !== 1 || g.dilationW !== 1) return null;
  const matrixProduct = g.kh === 1 && g.kw === 1 && g.strideH === 1 && g.strideW === 1;
  if (minFlops > 0 && matrixProduct && g.outC < ORT_NARROW_DX_CHANNELS) return null;
  // ConvTranspose's output size leaves out rows a strided forward pass never read: output_padding adds them.
  const extraH = g.inH - (g.strideH * (g.outH - 1) + g.kh - g.top - g.bottom);
  const extraW = g.inW - (g.strideW * (g.outW - 1) + g.kw - g.left - g.right);
  if (extraH < 0 || extraW < 0 || extraH >= g.strideH || extraW >= g.strideW) return null;
  const flippedPads = [g.kh - 1 - g.top, g.kw - 1 - g.left, g.kh - 1 - g.bottom, g.kw - 1 - g.right];
  // Padding wider than the filter (a 1x1 filter with padding 1) leaves border outputs that read no input.
  const unitStride = g.strideH === 1 && g.strideW === 1 && flippedPads.every((p) => p >= 0);
  const pads = unitStride ? flippedPads : [g.top, g.left, g.bottom, g.right];
  // The stride-1 form is a forward convolution from Co to Ci channels: blocked where that pays.
  const block = unitStride ? blockFor(ort, g.outC, g.inC) : 0;
  if (block > 0) {
    const session = cached(ort, `dx-nchwc${block}:${g.kh}x${g.kw}:${pads}:${g.outC}>${g.inC}`, (b) => {
      b.input(floatValueInfo('dy', blockedInput(g.outC, block)));
      b.input(floatValueInfo('f', [g.kh, g.kw, g.inC, g.outC]));
      const flipped = flipTaps(b, 'f');
      // The flipped [KH, KW, Ci, Co] read as [KH, KW, O, I] of the dx convolution.
      blockedConv(b, 'dy', flipped, { kh: g.kh, kw: g.kw, ci: g.outC, co: g.inC, block, order: 'hwoi' }, { pads: attr.ints(pads) });
      b.output(floatValueInfo('y', null));
    }, { nchwc: true });
    const shape = [g.batch, g.inH, g.inW, g.inC];
    return runToOutput(ort, backend, session, 'dx', { dy, f: filter }, shape, { blocked: true, dims: { dy: blockedDims(dy.shape, block) }, ortDims: blockedDims(shape, block) });
  }
  const key = `dx:${g.kh}x${g.kw}:${g.strideH},${g.strideW}:${pads}:${extraH},${extraW}`;
  const session = cached(ort, key, (b) => {
    b.input(floatValueInfo('dy', ['n', 'oh', 'ow', 'co']));
    b.input(floatValueInfo('f', [g.kh, g.kw, 'ci', 'co']));
    const dt = b.node('Transpose', ['dy'], 'dy_nchw', { perm: attr.ints(NHWC_TO_NCHW) });
    let c: string;
    if (unitStride) {
      const flipped = flipTaps(b, 'f');
      // As a forward filter from Co to Ci channels: [Ci, Co, KH, KW].
      const ft = b.node('Transpose', [flipped], 'f_flipped_oihw', { perm: attr.ints([2, 3, 0, 1]) });
      c = b.node('Conv', [dt, ft], 'conv', { pads: attr.ints(pads) });
    } else {
      // ConvTranspose wants [C_in of dy, C_out of dx, KH, KW] = [Co, Ci, KH, KW].
      const ft = b.node('Transpose', ['f'], 'f_iohw', { perm: attr.ints(HWIO_TO_OIHW) });
      c = b.node('ConvTranspose', [dt, ft], 'deconv', {
        pads: attr.ints(pads),
        strides: attr.ints([g.strideH, g.strideW]),
        output_padding: attr.ints([extraH, extraW]),
      });
    }
    b.nodeTo('Transpose', [c], 'y', { perm: attr.ints(NCHW_TO_NHWC) });
    b.output(floatValueInfo('y', null));
  });
  return runToOutput(ort, backend, session, 'dx', { dy, f: filter }, [g.batch, g.inH, g.inW, g.inC]);
}

/**
 * dW [KH,KW,Ci,Co] from x and dy, as GEMMs between the windows of padded x that each filter tap saw
 * ([B*OH*OW, Ci] matrices) and dy ([B*OH*OW, Co]), in one of three forms. Dilation 1 only.
 * - One GEMM per tap: the default. Nine small GEMMs beat one im2col GEMM (its 9x copy costs more than it
 *   saves) and the transposed-convolution form 2-5x.
 * - The windows of x side by side ([B*OH*OW, KH*KW*Ci], no wider than dy; its product with dy is dW's own
 *   layout), one GEMM: a stem of 1 channel ran its nine 1-row GEMMs at about 6 GFLOP/s.
 * - Stride 1 and fewer output than input channels (a throttled layer fed by a wider one): the shifted,
 *   zero-padded dy windows side by side ([B*H*W, KH*KW*Co]), one GEMM with x as [B*H*W, Ci]; where dy's
 *   padding would be negative, the call stays on wasm.
 */
export function ortConv2DBackpropFilter(backend: BackendWasm, x: TensorInfo, dy: TensorInfo, g: ConvGeometry): TensorInfo | null {
  const ort = loadOrt();
  if (ort == null || flops(g) < minFlops * ORT_FILTER_GRADIENT_SHARE || g.dilationH !== 1 || g.dilationW !== 1) return null;
  const taps = g.kh * g.kw;
  const shiftDy = g.strideH === 1 && g.strideW === 1 && g.outC < g.inC;
  const concatX = !shiftDy && taps * g.inC <= g.outC;
  // dy's padding for the shifted taps (below); a window can overhang dy by at most the filter's reach.
  const dyPads = [0, g.kh - 1 - g.top, g.kw - 1 - g.left, 0, 0, g.inH - g.outH + g.top, g.inW - g.outW + g.left, 0];
  if (shiftDy && dyPads.some((p) => p < 0)) return null;
  const key = `dw:${g.kh}x${g.kw}:${g.strideH},${g.strideW}:${shiftDy ? 'dy' : concatX ? 'x-cols' : 'x'}`;
  const session = cached(ort, key, (b) => {
    b.input(floatValueInfo('x', ['n', 'h', 'w', 'ci']));
    b.input(floatValueInfo('dy', ['n', 'oh', 'ow', 'co']));
    int64Input(b, 'pads', 8);
    for (let t = 0; t < taps; t++) {
      int64Input(b, `start${t}`, 2);
      int64Input(b, `end${t}`, 2);
    }
    const axes = b.int64Const('axes', [1, 2]);
    const steps = b.int64Const('steps', [g.strideH, g.strideW]);
    // The shifted tensor is sliced once per tap; the other is one matrix for all taps.
    const padded = b.node('Pad', [shiftDy ? 'dy' : 'x', 'pads'], 'padded');
    const whole = b.node('Flatten', [shiftDy ? 'x' : 'dy'], 'whole_mat', { axis: attr.int(3) });
    const wins = Array.from({ length: taps }, (_, t) => b.node('Slice', [padded, `start${t}`, `end${t}`, axes, steps], `tap${t}`));
    if (shiftDy || concatX) {
      // The narrower side's windows side by side, then one GEMM with the other.
      const cols = b.node('Flatten', [b.node('Concat', wins, 'taps', { axis: attr.int(3) })], 'taps_mat', { axis: attr.int(3) });
      if (concatX) {
        b.nodeTo('Gemm', [cols, whole], 'y', { transA: attr.int(1) });
      } else {
        // x^T times the dy windows is [Ci, KH*KW*Co]: taps to the front.
        const prod = b.node('Gemm', [whole, cols], 'dw_ci_tap_co', { transA: attr.int(1) });
        const split = b.node('Reshape', [prod, b.int64Const('ci_tap_co', [0, taps, -1])], 'dw_split');
        b.nodeTo('Transpose', [split], 'y', { perm: attr.ints([1, 0, 2]) });
      }
    } else {
      const parts = wins.map((win, t) =>
        b.node('Gemm', [b.node('Flatten', [win], `tap${t}_mat`, { axis: attr.int(3) }), whole], `dw${t}`, { transA: attr.int(1) }));
      b.nodeTo('Concat', parts, 'y', { axis: attr.int(0) });
    }
    // Every form gives [KH*KW*Ci, Co] or [KH*KW, Ci, Co]: the memory layout of [KH, KW, Ci, Co].
    b.output(floatValueInfo('y', null));
  });
  const ints: Record<string, number[]> = {};
  if (shiftDy) {
    // dy padded so that rows [KH-1-i, KH-1-i+H) hold dy[h - i + top] for x row h (zero where that is outside dy).
    ints.pads = dyPads;
    for (let i = 0, t = 0; i < g.kh; i++) {
      for (let j = 0; j < g.kw; j++, t++) {
        ints[`start${t}`] = [g.kh - 1 - i, g.kw - 1 - j];
        ints[`end${t}`] = [g.kh - 1 - i + g.inH, g.kw - 1 - j + g.inW];
      }
    }
  } else {
    ints.pads = [0, g.top, g.left, 0, 0, g.bottom, g.right, 0];
    for (let i = 0, t = 0; i < g.kh; i++) {
      for (let j = 0; j < g.kw; j++, t++) {
        ints[`start${t}`] = [i, j];
        ints[`end${t}`] = [i + g.strideH * (g.outH - 1) + 1, j + g.strideW * (g.outW - 1) + 1];
      }
    }
  }
  return runToOutput(ort, backend, session, 'dw', { x, dy }, [g.kh, g.kw, g.inC, g.outC], {
    ints,
    ortDims: shiftDy ? [taps, g.inC, g.outC] : [taps * g.inC, g.outC],
  });
}

/**
 * a (or a^T) times b (or b^T) for TF.js's BatchMatMul with one matrix per side (a dense layer and its
 * gradients); null when the call should stay on wasm (batched matrices, or too small).
 */
export function ortMatMul(backend: BackendWasm, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo | null {
  const ort = loadOrt();
  const single = (t: TensorInfo) => t.shape.length >= 2 && t.shape.slice(0, -2).every((d) => d === 1);
  if (ort == null) return null;
  if (!single(a) || !single(b)) return ortBatchMatMul(ort, backend, a, b, transposeA, transposeB);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = transposeA ? [ac, ar] : [ar, ac];
  const n = transposeB ? br : bc;
  if (2 * m * n * k < minFlops) return null;
  const key = `gemm:${transposeA}:${transposeB}`;
  const session = cached(ort, key, (g) => {
    g.input(floatValueInfo('a', ['ar', 'ac']));
    g.input(floatValueInfo('b', ['br', 'bc']));
    g.nodeTo('Gemm', ['a', 'b'], 'y', { transA: attr.int(transposeA ? 1 : 0), transB: attr.int(transposeB ? 1 : 0) });
    g.output(floatValueInfo('y', null));
  });
  // The product has the larger rank of the two (its leading dims all 1), as wasm's own kernel gives.
  const lead = new Array<number>(Math.max(a.shape.length, b.shape.length) - 2).fill(1);
  return runToOutput(ort, backend, session, 'matmul', { a, b }, [...lead, m, n], { ortDims: [m, n], dims: { a: [ar, ac], b: [br, bc] } });
}

/**
 * A batch of products with one matrix pair per batch entry (per-sample kernels: CondConv's im2col times each
 * sample's mixed kernel): wasm's own batched kernel runs at about 2 GFLOP/s, ONNX Runtime's MatMul at GEMM speed.
 * Null when the batch dims differ (broadcasting stays on wasm) or the call is small.
 */
function ortBatchMatMul(ort: OrtModule, backend: BackendWasm, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo | null {
  if (a.shape.length < 3 || a.shape.length !== b.shape.length || a.shape.slice(0, -2).some((d, i) => d !== b.shape[i])) return null;
  const lead = a.shape.slice(0, -2);
  const batch = lead.reduce((x, y) => x * y, 1);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = transposeA ? [ac, ar] : [ar, ac];
  const n = transposeB ? br : bc;
  // wasm's batched kernel is 10-40x slower than a session run from far smaller products (stacked experts: 10
  // products of 10x784x64 took 8 ms on wasm, 0.3 ms here), so batched calls go here from 1/64 of the threshold.
  if (2 * batch * m * n * k < minFlops / 64) return null;
  const session = cached(ort, `bmm:${transposeA}:${transposeB}`, (g) => {
    g.input(floatValueInfo('a', ['b', 'ar', 'ac']));
    g.input(floatValueInfo('b', ['b', 'br', 'bc']));
    const at = transposeA ? g.node('Transpose', ['a'], 'at', { perm: attr.ints([0, 2, 1]) }) : 'a';
    const bt = transposeB ? g.node('Transpose', ['b'], 'bt', { perm: attr.ints([0, 2, 1]) }) : 'b';
    g.nodeTo('MatMul', [at, bt], 'y');
    g.output(floatValueInfo('y', null));
  });
  return runToOutput(ort, backend, session, 'matmul', { a, b }, [...lead, m, n], { ortDims: [batch, m, n], dims: { a: [batch, ar, ac], b: [batch, br, bc] } });
}

/** Just under glibc's 32 MiB ceiling for the dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit). */
const MALLOC_RAISE_BYTES = 30 * 2 ** 20;

let mallocRaised = false;

/**
 * Frees one 30 MiB block from the mmap region so that glibc raises its malloc thresholds just under their
 * 32 MiB ceiling (mallopt(3): freeing an mmapped block lifts the mmap threshold to its size and the trim
 * threshold to twice that), which Node cannot set itself. By default they start at 128 KiB and follow the
 * largest mapped block freed so far, so the kernels' scratch and onnxruntime-node's copy of every output (a
 * fresh ArrayBuffer per run, freed by the garbage collector) kept landing on fresh pages or on heap free()
 * had just handed back: a training step of vgg-w took 1,500-6,000 page faults, about 12 us each on this
 * virtual machine (a blocked 32-to-8 convolution ran in 31 ms with them, 4 without). The price: freed blocks
 * under 30 MiB stay in malloc's arenas (up to 60 MiB free at each arena's top), so resident memory stays
 * near its peak. Process-wide and permanent, so it runs once per process where it can (a worker started
 * before it ran does it again: about 0.1 s, and the block stays in that thread's arena for reuse). Skipped
 * off Linux, under DYNN_ORT_KERNELS=0 (no internal binding), and where MALLOC_* or GLIBC_TUNABLES settings
 * turned glibc's dynamic thresholds off; without effect where glibc is not the allocator.
 */
export function raiseMallocThresholds(): void {
  if (mallocRaised) return;
  mallocRaised = true;
  const env = process.env;
  // Worker threads start with a copy of the environment: a pid mark set before they start spares them the run.
  if (process.platform !== 'linux' || env.DYNN_ORT_KERNELS === '0' || env.DYNN_MALLOC_RAISED === String(process.pid)) return;
  if (env.GLIBC_TUNABLES !== undefined || Object.keys(env).some((k) => k.startsWith('MALLOC_') && k.endsWith('_'))) return;
  const ort = loadBinding();
  if (ort == null) return;
  try {
    runOnce(ort, (b) => {
      b.input(floatValueInfo('a', [1]));
      const block = b.node('Expand', ['a', b.int64Const('floats', [MALLOC_RAISE_BYTES / 4])], 'block');
      b.nodeTo('ReduceMax', [block], 'y', { keepdims: attr.int(0) });
      b.output(floatValueInfo('y', []));
    }, { a: new ort.Tensor('float32', Float32Array.of(1), [1]) }, { y: new ort.Tensor('float32', new Float32Array(1), []) }, { arena: false });
    env.DYNN_MALLOC_RAISED = String(process.pid);
  } catch {
    // Only a speed-up: without it everything runs as before.
  }
}

/**
 * Checks, once per thread, that the native session takes preallocated outputs and writes them in place:
 * the kernels rely on it, and it is the internal part of onnxruntime-node most likely to change.
 */
function selfCheck(ort: OrtModule): boolean {
  const y = new Float32Array(2);
  runOnce(ort, (b) => {
    b.input(floatValueInfo('a', [2]));
    b.nodeTo('Neg', ['a'], 'y');
    b.output(floatValueInfo('y', [2]));
  }, { a: new ort.Tensor('float32', Float32Array.from([1, -2]), [2]) }, { y: new ort.Tensor('float32', y, [2]) });
  return y[0] === -1 && y[1] === 2;
}
