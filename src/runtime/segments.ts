import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { DynnError } from '../util/errors.js';
import { weightsDigestChunks, type Sha256 } from '../export/digest.js';
import { MANIFEST_FILE, parseManifest, routedRatios, SEGMENT_IO, type SegmentEntry, type SegmentsManifest } from '../export/manifest.js';
import { ONNX_FORMAT, ONNX_IO, type OnnxMetadata } from '../export/metadata.js';
import { ModelProto } from '../export/onnx-proto.js';
import { SPATIAL_IO } from '../export/spatial-io.js';
import { arrayRows, dispatchAsync, dispatchFromAsync, dispatchPaddedAsync } from '../route/dispatch.js';
import { assignExperts, expertCapacity, mixtureWeights, stackPays } from '../route/experts.js';
import { logitCut, nestedCounts } from '../route/count.js';
import { checkGateThreshold } from '../route/modes.js';
import { argmaxRows, toNchw, type OrtApi, type Prediction, type RunOptions } from './core.js';
import { checkValues, type DecodedGraph, type Expected } from './verify.js';

/** The result of running a batch through a segmented dynamic model. */
export interface RoutedPrediction extends Prediction {
  /** Per deciding segment (manifest order): the inner groups each sample ran (a gated block), its route (a switch), or the positions a spatially gated block computed. */
  counts: Int32Array[];
  /** Each sample's executed FLOPs (gates included) over the backbone's with nothing skipped. */
  flopsRatios: Float64Array;
}

/** Options of one routed run. */
export interface RoutedRunOptions extends RunOptions {
  /** The gates' threshold (default: the manifest's). */
  threshold?: number;
}

/** Reads a file of the folder by its (validated, plain) name. */
export type ReadSegment = (file: string) => Promise<Uint8Array>;

const sessionsOf = (p: Loaded): InferenceSession[] => ('graph' in p ? [p.graph] : 'body' in p ? [p.gate, p.body] : 'experts' in p ? [p.gate, ...p.experts, ...(p.stacked ? [p.stacked] : [])] : [p.gate, ...p.routes]);

const per = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Checks one graph file against what the manifest says of it; returns nothing, throws a DynnError naming the file. */
async function verifySegment(bytes: Uint8Array, source: string, weightsSha256: string, inputs: Expected[], outputs: Expected[], sha256: Sha256 | null): Promise<void> {
  let graph: DecodedGraph | null | undefined;
  try {
    graph = (ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, arrays: true }) as { graph?: DecodedGraph | null }).graph;
  } catch (err) {
    throw new DynnError(`${source}: not a valid ONNX model (${(err as Error).message}); is the file truncated or corrupt?`);
  }
  if (!graph) throw new DynnError(`${source}: the model has no graph; is the file truncated or corrupt?`);
  checkValues('input', graph.input ?? [], inputs, source);
  checkValues('output', graph.output ?? [], outputs, source);
  if (!sha256) return;
  const digest = await sha256(weightsDigestChunks(graph));
  if (digest !== weightsSha256) {
    throw new DynnError(`${source}: weights digest mismatch: the file was modified, corrupted or comes from another export (SHA-256 of the weights is ${digest.slice(0, 12)}..., the manifest says ${weightsSha256.slice(0, 12)}...)`);
  }
}

/**
 * The experts a plain graph's mixtures chose (`routes`: [batch, sum of k], each mixture's k columns in turn),
 * one Int32Array per slot; a value that is not an expert index of its mixture is refused.
 */
function graphRoutes(routes: Float32Array, mixtures: { name: string; experts: number; topK: number }[], batch: number): Int32Array[] {
  const width = mixtures.reduce((a, mx) => a + mx.topK, 0);
  if (routes.length !== batch * width) throw new DynnError(`the graph reported ${routes.length} expert choices for ${batch} samples and ${width} slots`);
  const out: Int32Array[] = [];
  let col = 0;
  for (const mx of mixtures) {
    for (let s = 0; s < mx.topK; s++, col++) {
      out.push(Int32Array.from({ length: batch }, (_, i) => {
        const e = routes[i * width + col];
        if (!(Number.isInteger(e) && e >= 0 && e < mx.experts)) throw new DynnError(`${mx.name}: the graph chose expert ${e} for sample ${i}, not one of its ${mx.experts}`);
        return e;
      }));
    }
  }
  return out;
}

/** The graphs of one segment, as ONNX Runtime sessions. */
type Loaded =
  | { entry: Extract<SegmentEntry, { kind: 'plain' | 'spatial' }>; graph: InferenceSession }
  | { entry: Extract<SegmentEntry, { kind: 'gated' }>; gate: InferenceSession; body: InferenceSession }
  | { entry: Extract<SegmentEntry, { kind: 'switch' }>; gate: InferenceSession; routes: InferenceSession[] }
  | { entry: Extract<SegmentEntry, { kind: 'moe' }>; gate: InferenceSession; experts: InferenceSession[]; stacked?: InferenceSession };

/**
 * A dynamic model exported by segments (`exportSegments`), run in ONNX Runtime: per gated block, the gate
 * runs on the whole batch, the shared count rule (`route/count.ts`) turns its logits into each sample's
 * number of inner groups, the batch is partitioned by count with the dispatch primitive, each part's body
 * runs once at its k, and the outputs are put back in input order. Node and browser alike (`OrtApi`).
 */
export class SegmentedSession {
  /**
   * The manifest as the single-file models' metadata, so the server and `OnnxModel` treat a segmented model
   * as a model with one level (u = 1: the gates choose each sample's width, not the caller).
   */
  readonly metadata: OnnxMetadata;

  private constructor(
    private readonly ort: OrtApi,
    private readonly parts: Loaded[],
    /** The folder's manifest. */
    readonly manifest: SegmentsManifest,
    /** Whether every graph's weights digest was checked (false when no hash function is available here). */
    readonly verified: boolean,
  ) {
    const m = manifest;
    this.metadata = {
      format: ONNX_FORMAT,
      dynnVersion: m.dynnVersion,
      model: m.model,
      input: { name: ONNX_IO.images, layout: 'NCHW', shape: m.input.shape },
      numClasses: m.numClasses,
      classNames: m.classNames,
      levels: [{ u: 1, level: 0, minU: 1, flops: 2 * m.macs.backbone, macs: m.macs.backbone, params: 0, flopsRatio: 1 }],
      routed: { threshold: m.threshold, gatedBlocks: m.segments.reduce((a, s) => a + (s.kind === 'plain' ? (s.mixtures?.length ?? 0) : 1), 0) },
    };
  }

  /**
   * Validates the manifest (text of `manifest.json` in the folder `source`), then each graph it names
   * (read with `read`): inputs and outputs against the manifest's shapes, weights against the stored
   * digests with `sha256` (null: not checked). Every problem is a DynnError naming the file.
   */
  static async create(ort: OrtApi, manifestText: string, read: ReadSegment, source: string, options: InferenceSession.SessionOptions, sha256: Sha256 | null): Promise<SegmentedSession> {
    const manifest = parseManifest(manifestText, `${source}/${MANIFEST_FILE}`);
    const open = async (file: string, weightsSha256: string, inputs: Expected[], outputs: Expected[]): Promise<InferenceSession> => {
      const where = `${source}/${file}`;
      const bytes = await read(file);
      await verifySegment(bytes, where, weightsSha256, inputs, outputs, sha256);
      try {
        return await ort.InferenceSession.create(bytes, options);
      } catch (err) {
        throw new DynnError(`${where}: ONNX Runtime cannot load it: ${(err as Error).message}`);
      }
    };
    const parts: Loaded[] = [];
    try {
      for (const entry of manifest.segments) {
        const x: Expected = { name: SEGMENT_IO.x, dims: ['batch', ...entry.input] };
        const y: Expected = { name: SEGMENT_IO.y, dims: ['batch', ...entry.output] };
        if (entry.kind === 'plain') {
          const slots = (entry.mixtures ?? []).reduce((a, mx) => a + mx.topK, 0);
          const routes: Expected[] = slots > 0 ? [{ name: SEGMENT_IO.routes, dims: ['batch', slots], width: `${slots} expert slots` }] : [];
          parts.push({ entry, graph: await open(entry.graph.file, entry.graph.weightsSha256, [x], [y, ...routes]) });
        }
        else if (entry.kind === 'spatial') {
          const computed: Expected = { name: SPATIAL_IO.computed, dims: ['batch', 2] };
          parts.push({ entry, graph: await open(entry.graph.file, entry.graph.weightsSha256, [x, { name: SPATIAL_IO.cut, dims: [] }], [y, computed]) });
        }
        else if (entry.kind === 'switch') {
          const K = entry.routes.length;
          const gate = await open(entry.gate.file, entry.gate.weightsSha256, [x], [{ name: SEGMENT_IO.logits, dims: ['batch', K - 1], width: `${K} routes` }]);
          const routes: InferenceSession[] = [];
          parts.push({ entry, gate, routes });
          // Pushed before the routes open, so a failure releases what did open.
          for (const r of entry.routes) routes.push(await open(r.file, r.weightsSha256, [x], [y]));
        } else if (entry.kind === 'moe') {
          const E = entry.experts;
          const gate = await open(entry.gate.file, entry.gate.weightsSha256, [x], [{ name: SEGMENT_IO.logits, dims: ['batch', entry.routerOutputs ?? 2 * E], width: `${E} experts` }]);
          const experts: InferenceSession[] = [];
          const part: Extract<Loaded, { experts: InferenceSession[] }> = { entry, gate, experts };
          parts.push(part);
          for (const r of entry.expertGraphs) experts.push(await open(r.file, r.weightsSha256, [x], [y]));
          if (entry.stacked) part.stacked = await open(entry.stacked.file, entry.stacked.weightsSha256, [{ name: SEGMENT_IO.x, dims: [E, null, ...entry.input] }], [{ name: SEGMENT_IO.y, dims: [E, null, ...entry.output] }]);
        } else {
          const gate = await open(entry.gate.file, entry.gate.weightsSha256, [x], [{ name: SEGMENT_IO.logits, dims: ['batch', entry.groups], width: `${entry.groups} groups` }]);
          parts.push({ entry, gate, body: await open(entry.body.file, entry.body.weightsSha256, [x, { name: SEGMENT_IO.k, dims: [] }], [y]).catch(async (err) => { await gate.release(); throw err; }) });
        }
      }
    } catch (err) {
      for (const p of parts) for (const s of sessionsOf(p)) await s.release();
      throw err;
    }
    return new SegmentedSession(ort, parts, manifest, sha256 !== null);
  }

  private async once(s: InferenceSession, feeds: Record<string, Tensor>, fetch: string): Promise<{ data: Float32Array; ms: number }> {
    const start = performance.now();
    const out = await s.run(feeds, [fetch]);
    return { data: out[fetch].data as Float32Array, ms: performance.now() - start };
  }

  private tensor(data: Float32Array, dims: readonly number[]): Tensor {
    return new this.ort.Tensor('float32', data, dims);
  }

  /** Class scores, each sample's route and its executed FLOPs ratio for a batch (NCHW unless `options.layout`). */
  async runRouted(images: Float32Array, options: RoutedRunOptions = {}): Promise<RoutedPrediction> {
    const m = this.manifest;
    if (!(images instanceof Float32Array)) throw new DynnError('images must be a Float32Array');
    const n0 = per(m.input.shape);
    if (images.length === 0 || images.length % n0 !== 0) throw new DynnError(`images hold ${images.length} values, not a whole batch of [${m.input.shape}] samples (${n0} values each)`);
    const threshold = options.threshold ?? m.threshold;
    checkGateThreshold(threshold);
    const batch = images.length / n0;
    let x = toNchw(this.metadata, images, options);
    let ms = 0;
    const counts: Int32Array[] = [];
    const computed: Float32Array[] = [];
    for (const p of this.parts) {
      const dims = [batch, ...p.entry.input];
      if (p.entry.kind === 'spatial' && 'graph' in p) {
        // One graph computes the positions its gate selects (dynamic in their number) and reports how many.
        const start = performance.now();
        const out = await p.graph.run({ [SPATIAL_IO.x]: this.tensor(x, dims), [SPATIAL_IO.cut]: this.tensor(Float32Array.of(logitCut(threshold)), []) }, [SPATIAL_IO.y, SPATIAL_IO.computed]);
        ms += performance.now() - start;
        x = (out[SPATIAL_IO.y].data as Float32Array).slice();
        const c = (out[SPATIAL_IO.computed].data as Float32Array).slice();
        computed.push(c);
        counts.push(Int32Array.from({ length: batch }, (_, i) => c[2 * i + 1]));
        continue;
      }
      if ('graph' in p && p.entry.kind === 'plain' && p.entry.mixtures) {
        // Mixtures dispatched inside the graph: it also reports each sample's experts.
        const start = performance.now();
        const out = await p.graph.run({ [SEGMENT_IO.x]: this.tensor(x, dims) }, [SEGMENT_IO.y, SEGMENT_IO.routes]);
        ms += performance.now() - start;
        x = (out[SEGMENT_IO.y].data as Float32Array).slice();
        counts.push(...graphRoutes(out[SEGMENT_IO.routes].data as Float32Array, p.entry.mixtures, batch));
        continue;
      }
      if ('graph' in p) {
        const r = await this.once(p.graph, { [SEGMENT_IO.x]: this.tensor(x, dims) }, SEGMENT_IO.y);
        ms += r.ms;
        x = r.data;
        continue;
      }
      if ('experts' in p) {
        const r = await this.runMixture(p, x, batch, counts);
        ms += r.ms;
        x = r.y;
        continue;
      }
      const { gate, entry } = p;
      const z = await this.once(gate, { [SEGMENT_IO.x]: this.tensor(x, dims) }, SEGMENT_IO.logits);
      ms += z.ms;
      // A gated block's count is its inner groups (one body graph takes k); a switch's is its route (a graph each).
      const k = nestedCounts(z.data, entry.kind === 'gated' ? entry.groups : entry.routes.length - 1, threshold);
      counts.push(k);
      x = await dispatchAsync(
        x,
        k,
        async (route, part, rows) => {
          const feeds = { [SEGMENT_IO.x]: this.tensor(part, [rows.length, ...entry.input]) };
          const r = 'body' in p ? await this.once(p.body, { ...feeds, [SEGMENT_IO.k]: this.tensor(Float32Array.of(route), []) }, SEGMENT_IO.y) : await this.once(p.routes[route], feeds, SEGMENT_IO.y);
          ms += r.ms;
          // ONNX Runtime may reuse its output buffer for the next run.
          return r.data.slice();
        },
        { input: arrayRows(per(entry.input)), output: arrayRows(per(entry.output)) },
      );
    }
    const C = m.numClasses;
    return { scores: x, classes: argmaxRows(x, C), batch, numClasses: C, u: 1, level: 0, ms, counts, flopsRatios: routedRatios(m, counts, batch, computed) };
  }

  /**
   * A mixture of experts on batch `x`: the router on every row, each sample's experts by the shared assignment
   * rule (`route/experts.ts`, capacity at the manifest's factor), each expert's graph once on its rows
   * (`dispatchFromAsync`), the outputs summed with the gates (plus the input, for a residual mixture). Pushes
   * each slot's experts onto `counts`.
   */
  private async runMixture(p: Extract<Loaded, { experts: InferenceSession[] }>, x: Float32Array, batch: number, counts: Int32Array[]): Promise<{ y: Float32Array; ms: number }> {
    const { entry } = p;
    const E = entry.experts;
    const k = entry.topK;
    const z = await this.once(p.gate, { [SEGMENT_IO.x]: this.tensor(x, [batch, ...entry.input]) }, SEGMENT_IO.logits);
    let ms = z.ms;
    // The router's first E outputs are the scores (folders written before dynn-segments/2 also hold the noise scales, which only training uses).
    const width = entry.routerOutputs ?? 2 * E;
    const h = width === E ? z.data : Float32Array.from({ length: batch * E }, (_, j) => z.data[Math.floor(j / E) * width + (j % E)]);
    const a = assignExperts(h, E, k, entry.capacityFactor === undefined ? batch : expertCapacity(entry.capacityFactor, k, batch, E), entry.overflow, entry.priority ?? 'batch');
    for (let s = 0; s < k; s++) counts.push(a.experts.slice(s * batch, (s + 1) * batch));
    const w = mixtureWeights(h, E, k, a);
    const pairs = [...a.experts.keys()].filter((q) => a.experts[q] >= 0);
    const sources = Int32Array.from(pairs, (q) => q % batch);
    const outPer = per(entry.output);
    const routes = Int32Array.from(pairs, (q) => a.experts[q]);
    const ops = { input: arrayRows(per(entry.input)), output: arrayRows(outPer) };
    const { stacked } = p;
    // Stacked experts: one run over every expert's rows, padded to the most loaded expert's, where that pays (as TF.js).
    const ys = pairs.length === 0
      ? new Float32Array(0)
      : stacked && stackPays(routes, E)
        ? await dispatchPaddedAsync(x, sources, routes, E, async (part, layout) => {
            const r = await this.once(stacked, { [SEGMENT_IO.x]: this.tensor(part, [E, layout.width, ...entry.input]) }, SEGMENT_IO.y);
            ms += r.ms;
            return r.data.slice();
          }, ops)
        : await dispatchFromAsync(x, sources, routes, async (e, part, rows) => {
            const r = await this.once(p.experts[e], { [SEGMENT_IO.x]: this.tensor(part, [rows.length, ...entry.input]) }, SEGMENT_IO.y);
            ms += r.ms;
            return r.data.slice();
          }, ops);
    const y = entry.residual ? x.slice() : new Float32Array(batch * outPer);
    pairs.forEach((q, j) => {
      const at = sources[j] * outPer;
      for (let c = 0; c < outPer; c++) y[at + c] += w[q] * ys[j * outPer + c];
    });
    return { y, ms };
  }

  /** `runRouted`, as the single-file sessions' `run` (u is the gates' to choose: any u in (0, 1] runs the same). */
  async run(images: Float32Array, _u: number, options: RunOptions = {}): Promise<RoutedPrediction> {
    return this.runRouted(images, options);
  }

  async runExits(): Promise<never> {
    throw new DynnError(`this ${this.manifest.model.model} model has no early exits`);
  }

  async decide(): Promise<never> {
    throw new DynnError(`this ${this.manifest.model.model} model's gates decide inside the network; it has no controller`);
  }

  async step(): Promise<never> {
    return this.decide();
  }

  /** Frees every session. */
  async release(): Promise<void> {
    for (const p of this.parts) for (const s of sessionsOf(p)) await s.release();
  }
}
