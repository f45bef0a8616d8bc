import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bytesPerSample, decodeFrame, encodeFrame, FRAME_HEADER_BYTES, FrameError, type FeatureFrame } from './wire.js';

const limits = [{ at: 'pool1', height: 3, width: 5, maxChannels: 4 }];

function frame(bits: number, channels: number, count: number, split = 0): FeatureFrame {
  const values = channels * 15;
  const codes = Uint16Array.from({ length: count * values }, (_, i) => (i * 2654435761) % 2 ** bits);
  return { split, bits, channels, height: 3, width: 5, count, codes, min: Float32Array.from({ length: count }, (_, i) => -i), step: Float32Array.from({ length: count }, (_, i) => 0.5 + i) };
}

test('frames round-trip at every bit width, with the documented size', () => {
  for (let bits = 1; bits <= 16; bits++) {
    for (const [channels, count] of [[1, 1], [3, 2], [4, 3]]) {
      const f = frame(bits, channels, count);
      const bytes = encodeFrame(f);
      assert.equal(bytes.length, FRAME_HEADER_BYTES + count * bytesPerSample(channels, 3, 5, bits));
      assert.equal(bytesPerSample(channels, 3, 5, bits), 8 + Math.ceil((channels * 15 * bits) / 8));
      assert.deepEqual(decodeFrame(bytes, limits), f);
    }
  }
});

test('bad frames are FrameErrors that name the problem', () => {
  const good = encodeFrame(frame(4, 2, 2));
  const edit = (at: number, set: (v: DataView) => void) => {
    const b = good.slice();
    set(new DataView(b.buffer));
    return b;
  };
  const cases: [Uint8Array, RegExp][] = [
    [good.subarray(0, 10), /16-byte header; got 10 bytes/],
    [edit(0, (v) => v.setUint32(0, 0x12345678, true)), /not a dynn feature frame/],
    [edit(4, (v) => v.setUint8(4, 3)), /version 3 is not supported; expected 1 or 2/],
    [edit(14, (v) => v.setUint16(14, 1, true)), /unknown split point 1; this tail serves 0 \(pool1\)/],
    [edit(5, (v) => v.setUint8(5, 0)), /bits must be from 1 to 16, got 0/],
    [edit(5, (v) => v.setUint8(5, 17)), /got 17/],
    [edit(6, (v) => v.setUint16(6, 5, true)), /channels must be from 1 to 4, got 5/],
    [edit(6, (v) => v.setUint16(6, 0, true)), /got 0/],
    [edit(8, (v) => v.setUint16(8, 4, true)), /features are 4x5; this tail takes 3x5 at pool1/],
    [edit(12, (v) => v.setUint16(12, 0, true)), /1 to 1024 samples, got 0/],
    [edit(12, (v) => v.setUint16(12, 3, true)), /has \d+ bytes; got/],
    [good.subarray(0, good.length - 1), /has \d+ bytes; got/],
    [edit(16, (v) => v.setFloat32(16, NaN, true)), /sample 0: min NaN/],
    [edit(20, (v) => v.setFloat32(20, 0, true)), /step 0 must be finite and the step positive/],
    [edit(16, (v) => (v.setFloat32(16, 1e38, true), v.setFloat32(20, 1e38, true))), /sample 0: min 9\.9+\d*e\+37 \+ 15 \* step .* overflows float32/],
    [edit(20 + bytesPerSample(2, 3, 5, 4), (v) => v.setFloat32(20 + bytesPerSample(2, 3, 5, 4), Infinity, true)), /sample 1/],
  ];
  for (const [bytes, pattern] of cases) assert.throws(() => decodeFrame(bytes, limits), (e: unknown) => e instanceof FrameError && pattern.test((e as Error).message), String(pattern));
});

test('version 2 frames name their split point; version 1 frames are read by a tail of one split point only', () => {
  const two = [...limits, { at: 'pool2', height: 2, width: 2, maxChannels: 8 }];
  const f = { ...frame(3, 6, 2), height: 2, width: 2, codes: Uint16Array.from({ length: 2 * 24 }, (_, i) => i % 8), split: 1 };
  const bytes = encodeFrame(f);
  assert.equal(bytes[4], 2);
  assert.deepEqual(decodeFrame(bytes, two), f);
  assert.throws(() => decodeFrame(bytes, limits), /unknown split point 1; this tail serves 0 \(pool1\)/);
  // The same split-0 frame in the version 1 layout: u32 samples where version 2 has u16 samples and u16 split.
  const g = frame(4, 2, 3);
  const v1 = encodeFrame(g);
  const view = new DataView(v1.buffer);
  view.setUint8(4, 1);
  view.setUint32(12, 3, true);
  assert.deepEqual(decodeFrame(v1, limits), g);
  assert.throws(() => decodeFrame(v1, two), (e: unknown) => e instanceof FrameError && /a version 1 frame names no split point; this tail serves 2: 0 \(pool1\), 1 \(pool2\); send version 2/.test((e as Error).message));
});
