import { DynnError } from '../util/errors.js';

/** Bit widths a bottleneck can quantize to. */
export const BITS_RANGE = { min: 1, max: 16 } as const;

/**
 * The smallest quantization step: a sample whose features are all equal gets codes 0 and dequantizes to its
 * minimum exactly, without a division by zero. The ONNX head uses the same floor.
 */
export const MIN_STEP = 1e-12;

/** Throws unless `bits` is an integer in 1..16. */
export function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < BITS_RANGE.min || bits > BITS_RANGE.max) {
    throw new DynnError(`bits must be an integer from ${BITS_RANGE.min} to ${BITS_RANGE.max}, got ${bits}`);
  }
}

/** The largest code at `bits` bits: 2^bits - 1. */
export function maxCode(bits: number): number {
  return 2 ** bits - 1;
}
