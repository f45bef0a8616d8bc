import { DynnError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { checkLimits } from './common.js';
import { loadFashionMnist } from './fashion-mnist.js';
import type { Dataset, ImageSet, LoadOptions } from './types.js';

/**
 * Streams of frames made from a labelled image set, for controllers that plan frame t+1 from frame t
 * (NaviSlim's temporal control). Each sequence shows one item for a while (a geometric number of frames),
 * then another; meanwhile how hard the frames are drifts smoothly: five bounded random walks set the
 * item's shift, its contrast, an occluding square's size and place, and the sensor noise. The walks go on
 * across item changes (the light and the camera do not reset when the object changes). Every frame keeps
 * its item's label, and `sequence` names the sequence each frame belongs to, frames in order.
 */
export interface StreamOptions {
  /** Frames to make (the last sequence is cut short to fit). */
  frames: number;
  /** Frames per sequence (default 100). */
  length?: number;
  /** Mean frames an item stays (default 20; each frame changes it with probability 1/hold). */
  hold?: number;
  /** How fast difficulty drifts: the walks' step, as a share of each range per frame (default 0.04). */
  drift?: number;
  seed?: number;
}

/** The walks' ranges: shift in pixels, contrast factor, occluder side as a share of the image, noise (std, in [0, 1] units). */
export const STREAM_RANGES = {
  shift: [-4, 4],
  contrast: [0.3, 1],
  occlusion: [0, 0.5],
  noise: [0, 0.4],
} as const;

/** Default sizes of `fashion-mnist-stream`: frames drawn from Fashion-MNIST's train and test images. */
export const STREAM_DEFAULTS = { train: 60000, test: 10000, length: 100, hold: 20, drift: 0.04 };

/** The fixed seed of the registered set (the data set is one set, whatever seed a training run uses). */
export const STREAM_SEED = 0x5712ea;

/** A frame's place in its walks: what the renderer reads. Every field in its `STREAM_RANGES` range. */
interface FrameState {
  dx: number;
  dy: number;
  contrast: number;
  occlusion: number;
  /** The occluder's centre, in [0, 1] of the image's side. */
  oy: number;
  ox: number;
  noise: number;
}

/** One step of a random walk on [lo, hi], reflected at the ends. */
function walk(rng: Rng, v: number, lo: number, hi: number, step: number): number {
  let x = v + (2 * rng.next() - 1) * step * (hi - lo);
  if (x < lo) x = 2 * lo - x;
  if (x > hi) x = 2 * hi - x;
  return Math.min(hi, Math.max(lo, x));
}

/** A standard normal deviate (Box-Muller). */
function gaussian(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
}

/** How hard a frame is, in [0, 1]: the mean of its walks' positions, each scaled so 1 is the hardest end. */
export function difficultyOf(s: FrameState): number {
  const [slo, shi] = STREAM_RANGES.shift;
  const shift = (Math.abs(s.dx) + Math.abs(s.dy)) / (2 * Math.max(-slo, shi));
  const [clo, chi] = STREAM_RANGES.contrast;
  const contrast = (chi - s.contrast) / (chi - clo);
  const occlusion = s.occlusion / STREAM_RANGES.occlusion[1];
  const noise = s.noise / STREAM_RANGES.noise[1];
  return (shift + contrast + occlusion + noise) / 4;
}

/** Writes frame `f` of `out` from source image `src` (HWC bytes) under `s`. */
function render(src: Uint8Array, s: FrameState, set: ImageSet, out: Uint8Array, f: number, rng: Rng): void {
  const { height: H, width: W, channels: C } = set;
  const per = H * W * C;
  const dy = Math.round(s.dy);
  const dx = Math.round(s.dx);
  const side = s.occlusion * Math.min(H, W);
  const y0 = s.oy * H - side / 2;
  const x0 = s.ox * W - side / 2;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const sy = y - dy;
      const sx = x - dx;
      const occluded = side >= 1 && y >= y0 && y < y0 + side && x >= x0 && x < x0 + side;
      for (let c = 0; c < C; c++) {
        // Mid-grey occluder: neither the background (0) nor the item's bright parts.
        let v = occluded ? 0.5 : sy >= 0 && sy < H && sx >= 0 && sx < W ? (src[(sy * W + sx) * C + c] / 255) * s.contrast : 0;
        if (s.noise > 0) v += s.noise * gaussian(rng);
        out[f * per + (y * W + x) * C + c] = Math.round(255 * Math.min(1, Math.max(0, v)));
      }
    }
  }
}

/** What `makeStream` returns besides the frames: each frame's difficulty in [0, 1] (`difficultyOf`). */
export interface Stream extends ImageSet {
  sequence: Int32Array;
  difficulty: Float32Array;
}

/** Frames made from `base` (see `StreamOptions`); the same options and seed give the same bytes. */
export function makeStream(base: ImageSet, opts: StreamOptions): Stream {
  const length = opts.length ?? STREAM_DEFAULTS.length;
  const hold = opts.hold ?? STREAM_DEFAULTS.hold;
  const drift = opts.drift ?? STREAM_DEFAULTS.drift;
  const { frames } = opts;
  if (!Number.isInteger(frames) || frames < 1) throw new DynnError(`a stream needs a positive integer number of frames, got ${frames}`);
  if (!Number.isInteger(length) || length < 1) throw new DynnError(`the stream's sequence length must be a positive integer, got ${length}`);
  if (!(hold >= 1 && Number.isFinite(hold))) throw new DynnError(`the stream's hold must be at least 1 frame, got ${hold}`);
  if (!(drift >= 0 && drift <= 1)) throw new DynnError(`the stream's drift must be in [0, 1], got ${drift}`);
  if (base.count < 1) throw new DynnError('a stream needs at least one source image');
  const per = base.height * base.width * base.channels;
  const images = new Uint8Array(frames * per);
  const labels = new Uint8Array(frames);
  const sequence = new Int32Array(frames);
  const difficulty = new Float32Array(frames);
  const rng = new Rng(opts.seed ?? STREAM_SEED);
  const R = STREAM_RANGES;
  const uniform = ([lo, hi]: readonly [number, number]) => lo + (hi - lo) * rng.next();
  let s: FrameState | undefined;
  let item = 0;
  for (let f = 0; f < frames; f++) {
    const seq = Math.floor(f / length);
    if (f % length === 0) {
      // A new sequence starts anywhere in its walks, with a new item.
      s = { dx: uniform(R.shift), dy: uniform(R.shift), contrast: uniform(R.contrast), occlusion: uniform(R.occlusion), oy: rng.next(), ox: rng.next(), noise: uniform(R.noise) };
      item = rng.int(base.count);
    } else {
      const p = s!;
      s = {
        dx: walk(rng, p.dx, R.shift[0], R.shift[1], drift),
        dy: walk(rng, p.dy, R.shift[0], R.shift[1], drift),
        contrast: walk(rng, p.contrast, R.contrast[0], R.contrast[1], drift),
        occlusion: walk(rng, p.occlusion, R.occlusion[0], R.occlusion[1], drift),
        oy: walk(rng, p.oy, 0, 1, drift),
        ox: walk(rng, p.ox, 0, 1, drift),
        noise: walk(rng, p.noise, R.noise[0], R.noise[1], drift),
      };
      if (rng.next() < 1 / hold) item = rng.int(base.count);
    }
    render(base.images.subarray(item * per, (item + 1) * per), s, base, images, f, rng);
    labels[f] = base.labels[item];
    sequence[f] = seq;
    difficulty[f] = difficultyOf(s);
  }
  return { images, labels, count: frames, height: base.height, width: base.width, channels: base.channels, sequence, difficulty };
}

/**
 * `fashion-mnist-stream`: 60,000 training frames from Fashion-MNIST's training images and 10,000 test frames
 * from its test images, in sequences of 100 (see `makeStream`), always from `STREAM_SEED`. `trainLimit` and
 * `testLimit` make only that many frames (the first frames of the full set, so limits do not change them).
 */
export async function loadFashionMnistStream(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  const fm = await loadFashionMnist({ dataDir: opts.dataDir });
  const train = makeStream(fm.train, { frames: opts.trainLimit ?? STREAM_DEFAULTS.train, seed: STREAM_SEED });
  const test = makeStream(fm.test, { frames: opts.testLimit ?? STREAM_DEFAULTS.test, seed: STREAM_SEED + 1 });
  return { ...fm, name: 'fashion-mnist-stream', train, test };
}

/**
 * `fashion-mnist-distorted`: the stream's frames drawn independently (every frame a new item at a new place in
 * the walks; 60,000 training and 10,000 test frames): a network trains here on as many items as Fashion-MNIST
 * has, with the distortions the stream will show it. Not a stream (no sequences).
 */
export async function loadFashionMnistDistorted(opts: LoadOptions = {}): Promise<Dataset> {
  checkLimits(opts);
  const fm = await loadFashionMnist({ dataDir: opts.dataDir });
  const independent = (set: ImageSet, frames: number, seed: number): ImageSet => {
    const { sequence: _, ...frameSet } = makeStream(set, { frames, length: 1, seed });
    return frameSet;
  };
  const train = independent(fm.train, opts.trainLimit ?? STREAM_DEFAULTS.train, STREAM_SEED + 2);
  const test = independent(fm.test, opts.testLimit ?? STREAM_DEFAULTS.test, STREAM_SEED + 3);
  return { ...fm, name: 'fashion-mnist-distorted', train, test };
}
