import { DynnError } from '../util/errors.js';
import { weightsDigestChunks, webSha256, type DigestGraph, type Sha256 } from '../export/digest.js';
import { ONNX_IO, parseMetadataProps, type OnnxMetadata } from '../export/metadata.js';
import { DataType, ModelProto } from '../export/onnx-proto.js';

/** A model file checked against its own metadata. */
export interface VerifiedModel {
  metadata: OnnxMetadata;
  /**
   * Whether the weights digest was checked. False for models exported before dynn stored one: their
   * inputs and outputs are still checked, their weights are not.
   */
  verified: boolean;
  /** Why the weights digest was not checked, when it was not. */
  reason?: string;
}

export interface DecodedValueInfo {
  name?: string;
  type?: { tensor_type?: { elem_type?: number; shape?: { dim?: { dim_value?: number; dim_param?: string }[] } } };
}

export interface DecodedGraph extends DigestGraph {
  input?: DecodedValueInfo[];
  output?: DecodedValueInfo[];
}

/**
 * One expected graph value: its dims, where a number must match exactly, 'batch' must not be fixed (dynn
 * models take any batch size), and null may be anything.
 */
export interface Expected {
  name: string;
  dims: (number | 'batch' | null)[];
  /** What the metadata calls the last dim, for the message (e.g. "numClasses 10"). */
  width?: string;
  /** Element type (`DataType`), float32 unless given. */
  elem?: number;
}

const ELEMENT_TYPES: Record<number, string> = { 1: 'float32', 2: 'uint8', 3: 'int8', 6: 'int32', 7: 'int64', 9: 'bool', 10: 'float16', 11: 'float64' };

/** The inputs and outputs a model with this metadata has, as `exportOnnx` writes them. */
function expectedSignature(meta: OnnxMetadata): { inputs: Expected[]; outputs: Expected[] } {
  const [c, h, w] = meta.input.shape;
  const inputs: Expected[] = [
    // An early-exit model's `images` is any stage's input, so only its rank is fixed.
    { name: ONNX_IO.images, dims: meta.exits ? ['batch', null, null, null] : ['batch', c, h, w] },
    { name: ONNX_IO.u, dims: [] },
  ];
  const outputs: Expected[] = [{ name: ONNX_IO.scores, dims: ['batch', meta.numClasses], width: `numClasses ${meta.numClasses}` }];
  if (meta.exits) {
    inputs.push({ name: ONNX_IO.stage, dims: [] });
    outputs.push({ name: ONNX_IO.features, dims: ['batch', null, null, null] });
    if (meta.exits.inGraph) {
      inputs.push({ name: ONNX_IO.exitThresholds, dims: [meta.exits.count - 1], elem: DataType.DOUBLE });
      outputs.push({ name: ONNX_IO.exits, dims: ['batch'] });
    }
  }
  if (meta.controller) {
    const k = meta.controller.actions.length;
    outputs.push({ name: ONNX_IO.controller, dims: ['batch', k], width: `${k} controller actions` });
    if (meta.controller.temporal) inputs.push({ name: ONNX_IO.action, dims: ['batch'] });
    if (meta.controller.temporal?.resolutions) inputs.push({ name: ONNX_IO.resolution, dims: [] });
  }
  return { inputs, outputs };
}

function describe(dims: Expected['dims']): string {
  return `[${dims.map((d) => (d === null ? '?' : d)).join(', ')}]`;
}

/** Checks one side (inputs or outputs) of the graph against the expected values; throws on the first difference. */
export function checkValues(kind: 'input' | 'output', got: DecodedValueInfo[], expected: Expected[], source: string): void {
  const fail = (msg: string): never => {
    throw new DynnError(`${source}: ${msg}; the graph does not match its dynn metadata or manifest (a foreign or modified graph?)`);
  };
  const byName = new Map(got.map((v) => [v.name ?? '', v]));
  const extra = got.find((v) => !expected.some((e) => e.name === v.name));
  if (extra) fail(`the graph has ${kind} '${extra.name}', which the metadata does not describe (expected ${expected.map((e) => `'${e.name}'`).join(', ')})`);
  if (byName.size !== got.length) fail(`the graph lists an ${kind} twice`);
  for (const e of expected) {
    const v = byName.get(e.name);
    if (!v) fail(`${kind} '${e.name}' is missing from the graph`);
    const tensor = v!.type?.tensor_type;
    const elem = tensor?.elem_type ?? 0;
    const want = e.elem ?? DataType.FLOAT;
    if (elem !== want) fail(`${kind} '${e.name}' has element type ${ELEMENT_TYPES[elem] ?? elem} but dynn models use ${ELEMENT_TYPES[want]} there`);
    const dims = tensor?.shape?.dim;
    if (!dims) fail(`${kind} '${e.name}' has no shape but metadata says ${describe(e.dims)}`);
    if (dims!.length !== e.dims.length) fail(`${kind} '${e.name}' has rank ${dims!.length} but metadata says ${describe(e.dims)} (rank ${e.dims.length})`);
    dims!.forEach((d, i) => {
      const want = e.dims[i];
      const fixed = d.dim_value !== undefined && d.dim_value !== null ? Number(d.dim_value) : null;
      if (want === 'batch' && fixed !== null) fail(`${kind} '${e.name}' has a fixed batch size ${fixed}; dynn models take any batch size`);
      if (typeof want !== 'number' || fixed === want) return;
      if (e.width && i === e.dims.length - 1) fail(`${kind} '${e.name}' has width ${fixed ?? `'${d.dim_param ?? '?'}'`} but metadata says ${e.width}`);
      fail(`${kind} '${e.name}' has dim ${i} = ${fixed ?? `'${d.dim_param ?? '?'}'`} but metadata says ${describe(e.dims)}`);
    });
  }
}

/** Why a model loads unverified where the page cannot hash (plain http on a name other than localhost). */
export const NO_HASH = 'weights not verified: WebCrypto (crypto.subtle) is not available here; browsers offer it only to secure contexts (https or localhost)';

/**
 * Checks a model file before ONNX Runtime sees it, in Node and in the browser alike: decodes the ModelProto,
 * validates its dynn metadata, checks the graph's inputs and outputs (names, float32, ranks, fixed dims, the
 * score width against numClasses, `u`, and the early-exit and controller values) against the metadata, and
 * recomputes the weights digest (`export/digest.ts`) with `sha256`. Every difference is a DynnError naming
 * `source` and what differs. A model without a stored digest (exported by an older dynn) loads with
 * `verified: false`, as does any model when `sha256` is null (no hash function here); `reason` says which.
 */
export async function verifyModel(bytes: Uint8Array, source: string, sha256: Sha256 | null = webSha256): Promise<VerifiedModel> {
  let msg: { graph?: DecodedGraph | null; metadata_props?: { key?: string; value?: string }[] };
  try {
    msg = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, arrays: true }) as typeof msg;
  } catch (err) {
    throw new DynnError(`${source}: not a valid ONNX model (${(err as Error).message}); is the file truncated or corrupt?`);
  }
  const metadata = parseMetadataProps(msg.metadata_props ?? [], source);
  const graph = msg.graph;
  if (!graph) throw new DynnError(`${source}: the model has no graph; is the file truncated or corrupt?`);
  const { inputs, outputs } = expectedSignature(metadata);
  checkValues('input', graph.input ?? [], inputs, source);
  checkValues('output', graph.output ?? [], outputs, source);
  if (metadata.weightsSha256 === undefined) return { metadata, verified: false, reason: 'the model was exported before dynn stored a weights digest' };
  if (!sha256) return { metadata, verified: false, reason: NO_HASH };
  const digest = await sha256(weightsDigestChunks(graph));
  if (digest !== metadata.weightsSha256) {
    throw new DynnError(`${source}: weights digest mismatch: the file was modified or corrupted (SHA-256 of the weights is ${digest.slice(0, 12)}..., the metadata says ${metadata.weightsSha256.slice(0, 12)}...)`);
  }
  return { metadata, verified: true };
}
