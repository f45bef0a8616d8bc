import { PNG } from 'pngjs';
import { sampleSize } from '../data/imageset.js';
import type { ImageSet } from '../data/types.js';
import { DynnError } from '../util/errors.js';

/** One sample of an 8-bit grey or RGB set as PNG bytes (pngjs, deflate level 9, its adaptive filters). */
export function pngBytes(set: ImageSet, i: number): Buffer {
  const colorType = set.channels === 1 ? 0 : set.channels === 3 ? 2 : null;
  if (colorType === null) throw new DynnError(`PNG holds grey or RGB images; these have ${set.channels} channels`);
  const size = sampleSize(set);
  const png = new PNG({ width: set.width, height: set.height, colorType, inputColorType: colorType, inputHasAlpha: false });
  png.data = Buffer.from(set.images.subarray(i * size, (i + 1) * size));
  return PNG.sync.write(png, { colorType, inputColorType: colorType, inputHasAlpha: false, deflateLevel: 9 });
}

/** What sending the input itself costs per sample: raw 8-bit pixels, and the mean PNG over `limit` samples. */
export function inputBytes(set: ImageSet, limit = 1000): { raw: number; png: number } {
  const n = Math.min(set.count, limit);
  let total = 0;
  for (let i = 0; i < n; i++) total += pngBytes(set, i).length;
  return { raw: sampleSize(set), png: n ? total / n : 0 };
}
