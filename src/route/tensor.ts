import * as tf from '@tensorflow/tfjs-core';
import { dispatch, dispatchFrom, dispatchPadded, rowsOf, type PaddedLayout, type RowOps } from './dispatch.js';

/** Rows of TF.js tensors (axis 0). Call inside `tf.tidy`. */
export const tensorRows: RowOps<tf.Tensor> = {
  count: (x) => x.shape[0],
  gather: (x, rows) => tf.gather(x, rows),
  concat: (parts) => (parts.length === 1 ? parts[0] : tf.concat(parts, 0)),
  parts: (x, rowSets) => {
    const order = new Int32Array(rowSets.reduce((a, r) => a + r.length, 0));
    let at = 0;
    for (const rows of rowSets) {
      order.set(rows, at);
      at += rows.length;
    }
    return tf.split(rowsOf(tensorRows, x, order), rowSets.map((r) => r.length), 0);
  },
};

/** `dispatch` over TF.js tensors in and out. Call inside `tf.tidy`; gradients flow to every part. */
export function dispatchTensor(x: tf.Tensor, routes: ArrayLike<number>, run: (route: number, part: tf.Tensor, rows: Int32Array) => tf.Tensor): tf.Tensor {
  return dispatch(x, routes, run, { input: tensorRows, output: tensorRows });
}

/** `dispatchFrom` over TF.js tensors: output row p reads row `sources[p]` of `x`. Call inside `tf.tidy`. */
export function dispatchTensorFrom(x: tf.Tensor, sources: Int32Array, routes: ArrayLike<number>, run: (route: number, part: tf.Tensor, rows: Int32Array) => tf.Tensor): tf.Tensor {
  return dispatchFrom(x, sources, routes, run, { input: tensorRows, output: tensorRows });
}

/** `dispatchPadded` over TF.js tensors: every route's rows in one call, padded to the largest route. Call inside `tf.tidy`. */
export function dispatchTensorPadded(x: tf.Tensor, sources: Int32Array, routes: ArrayLike<number>, R: number, run: (part: tf.Tensor, layout: PaddedLayout) => tf.Tensor): tf.Tensor {
  return dispatchPadded(x, sources, routes, R, run, { input: tensorRows, output: tensorRows });
}
