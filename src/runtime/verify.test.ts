// Model files are checked at load against their own metadata: the weights digest, and the graph's inputs
// and outputs. Corrupt, modified and foreign files fail with a DynnError before ONNX Runtime runs them.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import ort from 'onnxruntime-node';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { exportOnnx } from '../export/export.js';
import { randomizeStatistics } from '../export/fixtures.js';
import { metadataProps, type OnnxMetadata } from '../export/metadata.js';
import { ModelProto } from '../export/onnx-proto.js';
import { Policy } from '../control/policy.js';
import { DynnError } from '../util/errors.js';
import { ModelSession, type OrtApi } from './core.js';
import { OnnxModel } from './node.js';
import { loadWebModel } from './web.js';
import { verifyModel } from './verify.js';

await initEngine('wasm');

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dynn-verify-'));
const ARGS = { groups: 4, widths: [8, 8, 16, 16], hidden: 32 };
const model = createModel('vgg-w', ARGS);
randomizeStatistics(model, 3);
const { bytes, metadata } = exportOnnx(model);

interface Tensor {
  name: string;
  data_type: number;
  dims?: number[];
  raw_data?: Uint8Array;
}
interface Graph {
  initializer?: Tensor[];
  node?: { attribute?: { g?: Graph }[] }[];
  input: { name: string; type: { tensor_type: { elem_type: number; shape: { dim: Record<string, unknown>[] } } } }[];
  output: { name: string; type: { tensor_type: { elem_type: number; shape: { dim: Record<string, unknown>[] } } } }[];
}
interface Model {
  graph: Graph;
  metadata_props: { key: string; value: string }[];
}

const decode = (b: Uint8Array) => ModelProto.toObject(ModelProto.decode(b), { longs: Number, arrays: true }) as Model;
const encode = (m: Model) => ModelProto.encode(ModelProto.fromObject(m)).finish();

/** A copy of a model file with its graph or metadata edited. */
function edited(b: Uint8Array, edit: (m: Model, meta: OnnxMetadata) => OnnxMetadata | void): Uint8Array {
  const m = decode(b);
  const meta = Object.fromEntries(m.metadata_props.map(({ key, value }) => [key.slice(5), key === 'dynn.format' || key === 'dynn.dynnVersion' || key === 'dynn.weightsSha256' ? value : JSON.parse(value)])) as OnnxMetadata;
  const next = edit(m, meta) ?? meta;
  m.metadata_props = metadataProps(next);
  return encode(m);
}

/** The bytes with one byte of the initializer `name`'s data changed in place (as a disk error would). */
function flipWeightByte(b: Uint8Array, name: string): Uint8Array {
  const raw = decode(b).graph.initializer!.find((t) => t.name === name)!.raw_data!;
  const at = Buffer.from(b).indexOf(Buffer.from(raw.subarray(0, 32)));
  assert.ok(at > 0, `${name} found in the file`);
  const out = Uint8Array.from(b);
  out[at + 7] ^= 0x7f; // the exponent byte of the second float: a huge or infinite weight
  return out;
}

const verify = (b: Uint8Array) => verifyModel(b, 'm.onnx');

test('the stored digest is SHA-256 over every initializer by name: a JSON line [name, type, dims, bytes] and the raw bytes', async () => {
  const all: Tensor[] = [];
  const walk = (g: Graph) => {
    all.push(...(g.initializer ?? []));
    for (const n of g.node ?? []) for (const a of n.attribute ?? []) if (a.g) walk(a.g);
  };
  walk(decode(bytes).graph);
  assert.ok(all.some((t) => t.data_type === 7), 'the branches\' int64 constants are hashed too');
  const h = createHash('sha256');
  for (const t of all.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const raw = t.raw_data ?? new Uint8Array(0);
    h.update(`${JSON.stringify([t.name, t.data_type, t.dims ?? [], raw.length])}\n`).update(raw);
  }
  assert.match(metadata.weightsSha256 ?? '', /^[0-9a-f]{64}$/);
  assert.equal(metadata.weightsSha256, h.digest('hex'));
  assert.deepEqual(await verify(bytes), { metadata, verified: true });
});

test('a flipped byte in the weights is refused at load: in-thread, in a worker and in the web runtime', async () => {
  const file = path.join(tmp, 'flipped.onnx');
  const bad = flipWeightByte(bytes, 'c2.conv.kernel');
  writeFileSync(file, bad);
  for (const worker of [false, true]) {
    await assert.rejects(OnnxModel.load(file, { worker, threads: 1 }), (err: Error) => {
      assert.ok(err instanceof DynnError);
      assert.match(err.message, /flipped\.onnx: weights digest mismatch: the file was modified or corrupted/);
      return true;
    });
  }
  await assert.rejects(loadWebModel(bad), /model: weights digest mismatch: the file was modified or corrupted/);
  // A flipped branch constant (a slice bound) is caught as well.
  const m = decode(bytes);
  const sub = m.graph.node!.flatMap((n) => n.attribute ?? []).find((a) => a.g?.initializer?.length)!.g!;
  sub.initializer![0].raw_data = Uint8Array.from(sub.initializer![0].raw_data!, (v, i) => (i === 0 ? v ^ 1 : v));
  await assert.rejects(verify(encode(m)), /weights digest mismatch/);
});

test('a foreign or edited graph under copied metadata is refused, naming what differs', async () => {
  // Same architecture, other weights.
  const other = createModel('vgg-w', ARGS);
  randomizeStatistics(other, 9);
  const foreign = edited(exportOnnx(other).bytes, () => metadata);
  other.dispose();
  await assert.rejects(verify(foreign), /weights digest mismatch/);

  // Seven classes under metadata that says ten: the digest matches (it was recomputed), the width does not.
  const seven = createModel('vgg-w', { ...ARGS, numClasses: 7 });
  const sevenExport = exportOnnx(seven);
  seven.dispose();
  const wide = edited(sevenExport.bytes, () => ({ ...metadata, weightsSha256: sevenExport.metadata.weightsSha256 }));
  const file = path.join(tmp, 'seven.onnx');
  writeFileSync(file, wide);
  await assert.rejects(OnnxModel.load(file, { threads: 1 }), /seven\.onnx: output 'scores' has width 7 but metadata says numClasses 10/);

  const cases: [(m: Model, meta: OnnxMetadata) => OnnxMetadata | void, RegExp][] = [
    [(m) => void (m.graph.input = m.graph.input.filter((i) => i.name !== 'u')), /input 'u' is missing from the graph/],
    [(m) => void (m.graph.input[0].type.tensor_type.elem_type = 7), /input 'images' has element type int64 but dynn models use float32/],
    [(m) => void (m.graph.input[0].type.tensor_type.shape.dim[0] = { dim_value: 1 }), /input 'images' has a fixed batch size 1/],
    [(m) => void (m.graph.input[1].type.tensor_type.shape.dim = [{ dim_value: 1 }]), /input 'u' has rank 1 but metadata says \[\] \(rank 0\)/],
    [(m) => void m.graph.output.push({ ...m.graph.output[0], name: 'extra' }), /the graph has output 'extra', which the metadata does not describe/],
    [(_, meta) => ({ ...meta, input: { ...meta.input, shape: [1, 32, 32] } }), /input 'images' has dim 2 = 28 but metadata says \[batch, 1, 32, 32\]/],
    [(_, meta) => ({ ...meta, exits: { count: 2 }, levels: meta.levels.map((l) => ({ ...l, exitFlops: [1, 2] })) }), /input 'stage' is missing from the graph/],
  ];
  for (const [edit, pattern] of cases) {
    await assert.rejects(verify(edited(bytes, edit)), (err: Error) => {
      assert.ok(err instanceof DynnError, String(err.stack));
      assert.match(err.message, pattern);
      assert.match(err.message, /^m\.onnx: .*the graph does not match its dynn metadata/);
      return true;
    });
  }
});

test('early-exit and controller exports are verified too: digest, stage input, features and controller outputs', async () => {
  const exitNet = createModel('vgg-exits', { inputShape: [12, 12, 1], groups: 4, widths: [8, 8, 16, 16], hidden: 32, exitPool: [2, 2, 2], exitHidden: 16 });
  const exits = exportOnnx(exitNet);
  const inGraph = exportOnnx(exitNet, { exitPolicy: { rule: 'entropy', thresholds: [1, 1, 1] } });
  exitNet.dispose();
  const policy = new Policy({ inputShape: model.inputShape, actions: [0.25, 0.5, 1] });
  const ctrl = exportOnnx(model, { controller: { network: policy.net, actions: policy.actions } });
  const ctrlWeight = policy.net.getWeights()[0].name;
  policy.dispose();
  for (const e of [exits, ctrl]) assert.equal((await verify(e.bytes)).verified, true);
  await assert.rejects(verify(flipWeightByte(ctrl.bytes, ctrlWeight)), /weights digest mismatch/);
  await assert.rejects(verify(flipWeightByte(exits.bytes, 'stem.conv.kernel')), /weights digest mismatch/);
  await assert.rejects(
    verify(edited(ctrl.bytes, (_, meta) => ({ ...meta, controller: { ...meta.controller!, actions: [0.5, 1] } }))),
    /output 'controller_scores' has width 3 but metadata says 2 controller actions/,
  );
  await assert.rejects(verify(edited(ctrl.bytes, (_, meta) => ({ ...meta, controller: undefined }))), /the graph has output 'controller_scores', which the metadata does not describe/);
  await assert.rejects(
    verify(edited(exits.bytes, (_, meta) => ({ ...meta, exits: undefined, levels: meta.levels.map(({ exitFlops: _, ...l }) => l) }))),
    /the graph has input 'stage', which the metadata does not describe/,
  );
  await assert.rejects(verify(edited(exits.bytes, (m) => void (m.graph.output = m.graph.output.filter((o) => o.name !== 'features')))), /output 'features' is missing/);
  // The exit rule in the graph: its float64 thresholds input and `exits` output are checked too.
  assert.equal((await verify(inGraph.bytes)).verified, true);
  await assert.rejects(verify(edited(inGraph.bytes, (_, meta) => ({ ...meta, exits: { ...meta.exits!, inGraph: undefined } }))), /the graph has input 'exit_thresholds', which the metadata does not describe/);
  await assert.rejects(verify(edited(inGraph.bytes, (m) => void (m.graph.input.find((i) => i.name === 'exit_thresholds')!.type.tensor_type.elem_type = 1))), /input 'exit_thresholds' has element type float32 but dynn models use float64 there/);
  await assert.rejects(verify(edited(inGraph.bytes, (m) => void (m.graph.output = m.graph.output.filter((o) => o.name !== 'exits')))), /output 'exits' is missing/);
  // The digest does not cover the nodes: a graph answering an exit out of range is refused when it runs
  // (this tampered file, its digest removed, loads unverified).
  const tampered = edited(inGraph.bytes, (m, meta) => {
    const visit = (g: Graph) => {
      for (const t of g.initializer ?? []) if (/^X\d+\/exit0\/index$/.test(t.name)) t.raw_data = new Uint8Array(Float32Array.of(7).buffer);
      for (const n of g.node ?? []) for (const a of n.attribute ?? []) if (a.g) visit(a.g);
    };
    visit(m.graph);
    const { weightsSha256: _, ...rest } = meta;
    return rest as OnnxMetadata;
  });
  const file = path.join(tmp, 'tampered-exits.onnx');
  writeFileSync(file, tampered);
  const m = await OnnxModel.load(file, { threads: 1 });
  try {
    const x = Float32Array.from({ length: 4 * 144 }, (_, i) => Math.sin(i));
    await assert.rejects(m.runExits(x, 1, { thresholds: Infinity }), /the graph's exit policy answered 40 scores and 4 exits for a batch of 4 \(expected 40 scores and exits in 0..3\); is the file modified\?/);
    assert.equal((await m.runExits(x, 1, { thresholds: Infinity, staged: true })).exits.length, 4, 'stage by stage it still runs');
  } finally {
    await m.dispose();
  }
});

test('a model exported before the digest (no weightsSha256) loads unverified, its inputs and outputs still checked', async () => {
  const old = edited(bytes, (_, meta) => {
    const { weightsSha256: _w, ...rest } = meta;
    return rest as OnnxMetadata;
  });
  const file = path.join(tmp, 'old.onnx');
  writeFileSync(file, old);
  const current = path.join(tmp, 'current.onnx');
  writeFileSync(current, bytes);
  const x = Float32Array.from({ length: 2 * 28 * 28 }, (_, i) => Math.sin(i));
  const ref = await OnnxModel.load(current, { threads: 1 });
  assert.equal(ref.verified, true);
  const want = (await ref.run(x, 1)).scores;
  await ref.dispose();
  for (const worker of [false, true]) {
    const m = await OnnxModel.load(file, { worker, threads: 1 });
    assert.equal(m.verified, false, `worker ${worker}`);
    assert.equal(m.metadata.weightsSha256, undefined);
    assert.deepEqual((await m.run(x, 1)).scores, want);
    await m.dispose();
  }
  const web = await loadWebModel(old);
  assert.equal(web.verified, false);
  await web.release();
  // Without a digest, a flipped weight cannot be seen; a wrong graph still is.
  await assert.rejects(verify(edited(old, (m) => void (m.graph.input[0].type.tensor_type.elem_type = 11))), /element type float64/);
});

test('without WebCrypto (a page over plain http, not localhost) the web runtime loads the model unverified, saying why', async () => {
  const flipped = flipWeightByte(bytes, 'c2.conv.kernel');
  const real = Object.getOwnPropertyDescriptor(globalThis, 'crypto')!;
  Object.defineProperty(globalThis, 'crypto', { configurable: true, enumerable: true, get: () => ({ getRandomValues: (a: Uint8Array) => a }) });
  try {
    for (const b of [bytes, flipped]) {
      const web = await loadWebModel(b);
      assert.equal(web.verified, false);
      assert.match(web.unverifiedReason!, /weights not verified: WebCrypto \(crypto\.subtle\) is not available here.*https or localhost/);
      await web.release();
    }
  } finally {
    Object.defineProperty(globalThis, 'crypto', real);
  }
  const web = await loadWebModel(bytes);
  assert.equal(web.verified, true);
  assert.equal(web.unverifiedReason, null);
  await web.release();
  await assert.rejects(loadWebModel(flipped), /weights digest mismatch/);
});

/** Loads bytes as the runtime does; a session that opens is released. Returns 'model' or rethrows. */
async function load(b: Uint8Array): Promise<'model'> {
  const s = await ModelSession.create(ort as unknown as OrtApi, b, 'fuzz.onnx', { graphOptimizationLevel: 'basic', intraOpNumThreads: 1 });
  await s.release();
  return 'model';
}

/** Asserts that loading gives a model or a DynnError naming the file: never another exception. */
async function modelOrDynnError(b: Uint8Array): Promise<void> {
  try {
    await load(b);
  } catch (err) {
    if (!(err instanceof DynnError)) throw new Error(`not a DynnError: ${(err as Error)?.stack ?? String(err)}`);
    assert.match(err.message, /^fuzz\.onnx: /);
  }
}

// A tiny model, so that random flips land in the graph's structure and metadata as often as in the weights.
const tiny = createModel('mlp-w', { inputShape: [4, 4, 1], hidden: [8], groups: 2, numClasses: 3 });
const tinyExport = exportOnnx(tiny, { classNames: ['a', 'b', 'c'] });
tiny.dispose();

test('property: byte flips and truncations of a valid file load as a model or fail with a DynnError', { timeout: 60_000 }, async () => {
  const b = tinyExport.bytes;
  assert.equal(await load(b), 'model');
  const flips = fc.array(fc.record({ at: fc.nat({ max: b.length - 1 }), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 4 });
  await fc.assert(
    fc.asyncProperty(flips, fc.option(fc.nat({ max: b.length }), { nil: undefined }), async (fs, cut) => {
      const out = Uint8Array.from(b);
      for (const { at, xor } of fs) out[at] ^= xor;
      await modelOrDynnError(cut === undefined ? out : out.subarray(0, cut));
    }),
    { numRuns: 120, seed: 42, timeout: 5000 },
  );
  // Every truncation point of the first kilobyte and a sample after: the header, graph and metadata framing.
  for (let cut = 0; cut < b.length; cut += cut < 1024 ? 7 : 97) await modelOrDynnError(b.subarray(0, cut));
});

test('property: arbitrary edits of the metadata of a valid file load as a model or fail with a DynnError', { timeout: 60_000 }, async () => {
  const base = tinyExport.metadata as unknown as Record<string, unknown>;
  const paths: string[][] = [];
  const collect = (v: unknown, p: string[]) => {
    paths.push(p);
    if (v && typeof v === 'object') for (const [k, c] of Object.entries(v)) collect(c, [...p, k]);
  };
  collect(base, []);
  const value = fc.oneof(
    fc.jsonValue(),
    fc.constant(undefined),
    fc.constantFrom(-1, 0, 0.5, 1, 2, 3, 1e308, -1e308, 2 ** 53, 1e9, ''),
    fc.double(),
  );
  const edit = fc.record({ path: fc.constantFrom(...paths.filter((p) => p.length > 0)), value });
  await fc.assert(
    fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 3 }), async (edits) => {
      const meta = structuredClone(base);
      for (const e of edits) {
        let o = meta as Record<string, unknown>;
        for (const k of e.path.slice(0, -1)) o = (o[k] && typeof o[k] === 'object' ? o[k] : (o[k] = {})) as Record<string, unknown>;
        if (e.value === undefined) delete o[e.path[e.path.length - 1]];
        else o[e.path[e.path.length - 1]] = e.value;
      }
      const m = decode(tinyExport.bytes);
      m.metadata_props = Object.entries(meta).map(([k, v]) => ({ key: `dynn.${k}`, value: typeof v === 'string' ? v : String(JSON.stringify(v)) }));
      await modelOrDynnError(encode(m));
    }),
    { numRuns: 100, seed: 7, timeout: 5000 },
  );
});

after(() => model.dispose());
