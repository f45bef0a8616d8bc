import { promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { DynnError } from '../util/errors.js';
import type { ImageSet } from './types.js';

const gunzip = promisify(zlib.gunzip);

/** The most a data file may decompress to: far above any real data set here, far below a gzip bomb's reach. */
export const MAX_DECOMPRESSED_BYTES = 2 ** 30;

/** IDX magic number of unsigned-byte, 3-dimensional data (images: count x height x width). */
export const IDX_IMAGES_MAGIC = 0x00000803;
/** IDX magic number of unsigned-byte, 1-dimensional data (labels). */
export const IDX_LABELS_MAGIC = 0x00000801;

/**
 * Reads a file whole, gunzipping it when it starts with the gzip magic bytes 1f 8b (whatever its name), to at
 * most `maxBytes`.
 */
export async function readMaybeGzip(file: string, maxBytes = MAX_DECOMPRESSED_BYTES): Promise<Uint8Array> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(file);
  } catch (err) {
    throw new DynnError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (raw.length < 2 || raw[0] !== 0x1f || raw[1] !== 0x8b) return raw;
  try {
    return await gunzip(raw, { maxOutputLength: maxBytes });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new DynnError(`${file}: decompresses to more than ${maxBytes} bytes; not a data set dynn reads`, { cause: err });
    }
    throw new DynnError(`${file}: corrupt gzip data (${(err as Error).message})`, { cause: err });
  }
}

/** Parses an IDX unsigned-byte file with the given magic; returns its dimensions and a copy of its payload. */
function parseIdx(bytes: Uint8Array, file: string, magic: number, what: string): { dims: number[]; data: Uint8Array } {
  const ndims = magic & 0xff;
  const headerSize = 4 + 4 * ndims;
  const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
  if (bytes.length < 4) throw new DynnError(`${file}: truncated: ${bytes.length} bytes, too short for an IDX header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const found = view.getUint32(0);
  if (found !== magic) {
    throw new DynnError(`${file}: wrong magic number ${hex(found)}, expected ${hex(magic)} (IDX ${what})`);
  }
  if (bytes.length < headerSize) {
    throw new DynnError(`${file}: truncated: ${bytes.length} bytes, the IDX header alone needs ${headerSize}`);
  }
  const dims: number[] = [];
  for (let d = 0; d < ndims; d++) dims.push(view.getUint32(4 + 4 * d));
  if (dims.some((n) => n === 0)) throw new DynnError(`${file}: empty IDX ${what} (dimensions ${dims.join('x')})`);
  const expected = headerSize + dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== expected) {
    const problem = bytes.length < expected ? 'truncated' : 'trailing bytes';
    throw new DynnError(
      `${file}: ${problem}: ${bytes.length} bytes, but the header (${dims.join('x')}) implies ${expected}`,
    );
  }
  return { dims, data: new Uint8Array(bytes.subarray(headerSize)) };
}

/** Parses IDX images (magic 0x00000803); `file` is only used in error messages. */
export function parseIdxImages(
  bytes: Uint8Array,
  file: string,
): { images: Uint8Array; count: number; height: number; width: number } {
  const { dims, data } = parseIdx(bytes, file, IDX_IMAGES_MAGIC, 'images');
  return { images: data, count: dims[0], height: dims[1], width: dims[2] };
}

/** Parses IDX labels (magic 0x00000801), each checked to be below `numClasses`; `file` names it in errors. */
export function parseIdxLabels(bytes: Uint8Array, file: string, numClasses: number): Uint8Array {
  const { data } = parseIdx(bytes, file, IDX_LABELS_MAGIC, 'labels');
  const bad = data.findIndex((l) => l >= numClasses);
  if (bad >= 0) {
    throw new DynnError(`${file}: label ${data[bad]} at index ${bad} is out of range (${numClasses} classes)`);
  }
  return data;
}

/** Loads a pair of IDX files (gzipped or raw) into a single-channel ImageSet, checking that their counts agree. */
export async function loadIdxPair(imagesFile: string, labelsFile: string, numClasses: number): Promise<ImageSet> {
  const [imageBytes, labelBytes] = await Promise.all([readMaybeGzip(imagesFile), readMaybeGzip(labelsFile)]);
  const { images, count, height, width } = parseIdxImages(imageBytes, imagesFile);
  const labels = parseIdxLabels(labelBytes, labelsFile, numClasses);
  if (labels.length !== count) {
    throw new DynnError(`${labelsFile}: holds ${labels.length} labels but ${imagesFile} holds ${count} images`);
  }
  return { images, labels, count, height, width, channels: 1 };
}
