/**
 * The weights digest stored in a dynn model's metadata (`dynn.weightsSha256`) and checked at load.
 *
 * It is the SHA-256 (lowercase hex) of this byte stream: for every initializer of the model, those of the
 * main graph and of every subgraph (the `If` branches' constant slice bounds and thresholds), taken in order
 * of name (JavaScript string order; dynn's names are ASCII and unique model-wide), the UTF-8 line
 * `JSON.stringify([name, data_type, dims, raw_data byte length]) + "\n"` followed by the raw_data bytes.
 * Names, types and shapes are hashed with the bytes, so renamed, reshaped or swapped tensors fail as
 * flipped bytes do. Node structure is not hashed; the runtime checks the graph's inputs and outputs instead.
 *
 * This module imports nothing from Node: the browser runtime hashes with WebCrypto, Node with node:crypto.
 */
import { DynnError } from '../util/errors.js';

/** The parts of a TensorProto the digest reads (as encoded, or as decoded with `longs: Number`). */
export interface DigestTensor {
  name?: string;
  data_type?: number;
  dims?: number[];
  raw_data?: Uint8Array;
}

/** The parts of a GraphProto the digest walks. */
export interface DigestGraph {
  initializer?: DigestTensor[];
  node?: { attribute?: { g?: DigestGraph | null }[] }[];
}

/** Every initializer of a graph and its subgraphs, in document order. */
function initializers(graph: DigestGraph, out: DigestTensor[] = []): DigestTensor[] {
  out.push(...(graph.initializer ?? []));
  for (const n of graph.node ?? []) for (const a of n.attribute ?? []) if (a.g) initializers(a.g, out);
  return out;
}

/** The byte chunks the digest hashes, in order (see the module comment). */
export function weightsDigestChunks(graph: DigestGraph): Uint8Array[] {
  const enc = new TextEncoder();
  // A stable sort: duplicate names (invalid ONNX) still give one answer for one file.
  const tensors = initializers(graph).sort((a, b) => ((a.name ?? '') < (b.name ?? '') ? -1 : (a.name ?? '') > (b.name ?? '') ? 1 : 0));
  const chunks: Uint8Array[] = [];
  for (const t of tensors) {
    const raw = t.raw_data ?? new Uint8Array(0);
    chunks.push(enc.encode(JSON.stringify([t.name ?? '', t.data_type ?? 0, (t.dims ?? []).map(Number), raw.length]) + '\n'), raw);
  }
  return chunks;
}

/** A SHA-256 of byte chunks as lowercase hex: node:crypto in Node, WebCrypto in a browser. */
export type Sha256 = (chunks: Uint8Array[]) => Promise<string>;

/** SHA-256 with WebCrypto (`crypto.subtle`, in browsers' secure contexts and in Node 20+). */
export const webSha256: Sha256 = async (chunks) => {
  const subtle = (globalThis as { crypto?: { subtle?: SubtleCrypto } }).crypto?.subtle;
  if (!subtle) throw new DynnError('cannot verify the model: WebCrypto (crypto.subtle) is not available here: browsers offer it only to secure contexts (https or localhost)');
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
};
