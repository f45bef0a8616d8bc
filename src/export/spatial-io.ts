/** Inputs and outputs of a spatially gated block's graph (TF-free: the runtimes read it). */
export const SPATIAL_IO = {
  /** The block's input, NCHW [batch, C, H, W]. */
  x: 'x',
  /** The logit the gates' threshold cuts at (`logitCut`), a float32 scalar: a position is computed when its logit is above. */
  cut: 'cut',
  /** With a fixed mask instead of the gate (benches): 1 where a position is computed, [batch, 1, H, W]. */
  mask: 'mask',
  /** The block's output, NCHW. */
  y: 'y',
  /** Per sample, the positions conv1 and conv2 computed, [batch, 2] (float32): what it spent. */
  computed: 'computed',
} as const;
