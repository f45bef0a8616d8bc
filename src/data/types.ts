/** A labelled image set held as bytes (0..255), NHWC order. */
export interface ImageSet {
  images: Uint8Array;
  labels: Uint8Array;
  count: number;
  height: number;
  width: number;
  channels: number;
  /** For streams (`fashion-mnist-stream`): the sequence of each frame, frames of a sequence in order. */
  sequence?: Int32Array;
  /** For streams: how hard each frame was made, in [0, 1] (see `data/stream.ts`). */
  difficulty?: Float32Array;
}

/** A named data set with its fixed train/test split. */
export interface Dataset {
  name: string;
  numClasses: number;
  classNames: string[];
  train: ImageSet;
  test: ImageSet;
}

/**
 * Options every loader accepts. `dataDir` overrides where file-backed sets are looked for; `trainLimit` and
 * `testLimit` keep the first N samples (for `synthetic` they are the sizes); `seed` only affects `synthetic`.
 */
export interface LoadOptions {
  dataDir?: string;
  trainLimit?: number;
  testLimit?: number;
  seed?: number;
}
