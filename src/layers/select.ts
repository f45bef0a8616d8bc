import * as tf from '@tensorflow/tfjs-core';
import { DynnError } from '../util/errors.js';
import { roundChannels } from '../gating/gating.js';
import type { ChannelSel } from './types.js';

/** All channels of a tensor that no throttled block produced. */
export function fullSel(channels: number): ChannelSel {
  return { full: channels, count: channels, index: null };
}

/**
 * The channels of the active groups (each `channels / groups` wide) of a throttled layer; with `multiple`
 * above 1, a prefix rounded by `roundChannels` (nested gating only: rounded counts do not split into groups).
 */
export function groupSel(groups: Int32Array, D: number, channels: number, multiple = 1): ChannelSel {
  const size = channels / D;
  let prefix = true;
  for (let i = 0; i < groups.length; i++) if (groups[i] !== i) prefix = false;
  if (prefix) return { full: channels, count: roundChannels(groups.length * size, multiple, channels), index: null };
  if (multiple > 1) throw new DynnError(`channels rounded to multiples of ${multiple} need nested gating (the first groups active), not independent gating`);
  const index = new Int32Array(groups.length * size);
  groups.forEach((g, i) => {
    for (let j = 0; j < size; j++) index[i * size + j] = g * size + j;
  });
  return { full: channels, count: index.length, index };
}

/** Expands a channel selection to NCHW-flattened features: channel c owns features [c*hw, (c+1)*hw). */
export function flattenSel(sel: ChannelSel, hw: number): ChannelSel {
  if (sel.index === null) return { full: sel.full * hw, count: sel.count * hw, index: null };
  const index = new Int32Array(sel.count * hw);
  sel.index.forEach((c, i) => {
    for (let j = 0; j < hw; j++) index[i * hw + j] = c * hw + j;
  });
  return { full: sel.full * hw, count: index.length, index };
}

/**
 * The part of `t` along `axis` that `sel` names: a slice for a prefix (nested gating), a gather for an
 * index list (independent gating), `t` itself when everything is active. Gradients flow back into the
 * full tensor, zero outside the selection.
 */
export function take(t: tf.Tensor, axis: number, sel: ChannelSel): tf.Tensor {
  if (sel.index === null) {
    if (sel.count === t.shape[axis]) return t;
    const begin = t.shape.map(() => 0);
    const size = t.shape.map((n) => n);
    size[axis] = sel.count;
    return tf.slice(t, begin, size);
  }
  return tf.gather(t, tf.tensor1d(sel.index, 'int32'), axis);
}
