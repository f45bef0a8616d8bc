import { DynnError } from '../util/errors.js';
import { BITS_RANGE } from './bits.js';

/** Version of the binary feature frame; a frame of another version is refused. */
export const WIRE_VERSION = 1;
/** The frame's first four bytes, "DYSF" (dynn split features). */
export const WIRE_MAGIC = 0x46535944;
/** Bytes of the frame header. */
export const FRAME_HEADER_BYTES = 16;
/** Bytes of each sample's header: its min and quantization step, float32. */
export const SAMPLE_HEADER_BYTES = 8;
/** Most samples one frame may carry. */
export const MAX_FRAME_SAMPLES = 1024;

/**
 * The wire format, as stored in the split's metadata. All numbers little-endian. A frame is a 16-byte header,
 * then per sample its 8-byte header and its codes, bit-packed.
 */
export const WIRE_FORMAT = {
  version: WIRE_VERSION,
  byteOrder: 'little-endian',
  header: 'u32 magic 0x46535944 ("DYSF"), u8 version, u8 bits, u16 channels, u16 height, u16 width, u32 samples (16 bytes)',
  sample: 'f32 min, f32 step, then channels*height*width codes of `bits` bits each in NCHW order, packed least significant bit first, padded to a whole byte',
  dequantize: 'value = min + code * step',
  quantization: 'per sample, per tensor: min and max over the sample, step = max((max - min) / (2^bits - 1), 1e-12), code = round-half-even((x - min) / step)',
  entropyCoder: 'none',
} as const;

/** One frame's features: codes of `count` samples, each [channels, height, width] in NCHW order. */
export interface FeatureFrame {
  bits: number;
  channels: number;
  height: number;
  width: number;
  count: number;
  /** count x channels x height x width codes, each in 0..2^bits - 1. */
  codes: Uint16Array;
  /** Per sample. */
  min: Float32Array;
  step: Float32Array;
}

/** Bytes of one sample's codes at `bits` bits. */
export function payloadBytes(values: number, bits: number): number {
  return Math.ceil((values * bits) / 8);
}

/** Bytes one sample costs on the wire: its 8-byte header and its packed codes (the frame header excluded). */
export function bytesPerSample(channels: number, height: number, width: number, bits: number): number {
  return SAMPLE_HEADER_BYTES + payloadBytes(channels * height * width, bits);
}

/** Packs codes of `bits` bits, least significant bit first, into `out` from `offset`. */
function pack(codes: Uint16Array, bits: number, out: Uint8Array, offset: number): void {
  let acc = 0;
  let have = 0;
  let o = offset;
  for (let i = 0; i < codes.length; i++) {
    acc |= codes[i] << have;
    have += bits;
    while (have >= 8) {
      out[o++] = acc & 0xff;
      acc >>>= 8;
      have -= 8;
    }
  }
  if (have > 0) out[o] = acc & 0xff;
}

function unpack(src: Uint8Array, offset: number, bits: number, out: Uint16Array): void {
  const mask = (1 << bits) - 1;
  let acc = 0;
  let have = 0;
  let o = offset;
  for (let i = 0; i < out.length; i++) {
    while (have < bits) {
      acc |= src[o++] << have;
      have += 8;
    }
    out[i] = acc & mask;
    acc >>>= bits;
    have -= bits;
  }
}

/** Encodes a frame (codes must already be in range). */
export function encodeFrame(f: FeatureFrame): Uint8Array {
  const values = f.channels * f.height * f.width;
  const per = bytesPerSample(f.channels, f.height, f.width, f.bits);
  const out = new Uint8Array(FRAME_HEADER_BYTES + f.count * per);
  const view = new DataView(out.buffer);
  view.setUint32(0, WIRE_MAGIC, true);
  view.setUint8(4, WIRE_VERSION);
  view.setUint8(5, f.bits);
  view.setUint16(6, f.channels, true);
  view.setUint16(8, f.height, true);
  view.setUint16(10, f.width, true);
  view.setUint32(12, f.count, true);
  for (let s = 0; s < f.count; s++) {
    const at = FRAME_HEADER_BYTES + s * per;
    view.setFloat32(at, f.min[s], true);
    view.setFloat32(at + 4, f.step[s], true);
    pack(f.codes.subarray(s * values, (s + 1) * values), f.bits, out, at + SAMPLE_HEADER_BYTES);
  }
  return out;
}

/** What a receiver accepts: the feature map's size and the widest bottleneck. */
export interface FrameLimits {
  height: number;
  width: number;
  maxChannels: number;
}

/** A frame that is not what the receiver accepts: the server answers 400 with its message. */
export class FrameError extends DynnError {}

/** Decodes and validates a frame against `limits`; every problem is a FrameError that names it. */
export function decodeFrame(bytes: Uint8Array, limits: FrameLimits): FeatureFrame {
  if (bytes.length < FRAME_HEADER_BYTES) throw new FrameError(`a feature frame has a ${FRAME_HEADER_BYTES}-byte header; got ${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== WIRE_MAGIC) throw new FrameError('not a dynn feature frame (its first bytes are not "DYSF")');
  const version = view.getUint8(4);
  if (version !== WIRE_VERSION) throw new FrameError(`feature frame version ${version} is not supported; expected ${WIRE_VERSION}`);
  const bits = view.getUint8(5);
  if (bits < BITS_RANGE.min || bits > BITS_RANGE.max) throw new FrameError(`bits must be from ${BITS_RANGE.min} to ${BITS_RANGE.max}, got ${bits}`);
  const channels = view.getUint16(6, true);
  if (channels < 1 || channels > limits.maxChannels) throw new FrameError(`channels must be from 1 to ${limits.maxChannels}, got ${channels}`);
  const height = view.getUint16(8, true);
  const width = view.getUint16(10, true);
  if (height !== limits.height || width !== limits.width) {
    throw new FrameError(`features are ${height}x${width}; this tail takes ${limits.height}x${limits.width}`);
  }
  const count = view.getUint32(12, true);
  if (count < 1 || count > MAX_FRAME_SAMPLES) throw new FrameError(`a frame holds 1 to ${MAX_FRAME_SAMPLES} samples, got ${count}`);
  const per = bytesPerSample(channels, height, width, bits);
  const want = FRAME_HEADER_BYTES + count * per;
  if (bytes.length !== want) throw new FrameError(`a frame of ${count} samples of ${channels}x${height}x${width} codes at ${bits} bits has ${want} bytes; got ${bytes.length}`);
  const values = channels * height * width;
  const codes = new Uint16Array(count * values);
  const min = new Float32Array(count);
  const step = new Float32Array(count);
  for (let s = 0; s < count; s++) {
    const at = FRAME_HEADER_BYTES + s * per;
    min[s] = view.getFloat32(at, true);
    step[s] = view.getFloat32(at + 4, true);
    if (!Number.isFinite(min[s]) || !Number.isFinite(step[s]) || step[s] <= 0) {
      throw new FrameError(`sample ${s}: min ${min[s]} and step ${step[s]} must be finite and the step positive`);
    }
    // The tail dequantizes in float32: the largest value a code can take must be finite there too.
    const top = Math.fround(min[s] + ((1 << bits) - 1) * step[s]);
    if (!Number.isFinite(top)) throw new FrameError(`sample ${s}: min ${min[s]} + ${(1 << bits) - 1} * step ${step[s]} overflows float32`);
    unpack(bytes, at + SAMPLE_HEADER_BYTES, bits, codes.subarray(s * values, (s + 1) * values));
  }
  return { bits, channels, height, width, count, codes, min, step };
}
