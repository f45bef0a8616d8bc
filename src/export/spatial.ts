import type { SpatialResidualBlock } from '../route/spatial.js';
import { attr, floatValueInfo, type GraphBuilder } from './graph.js';
import { SPATIAL_IO } from './spatial-io.js';

export { SPATIAL_IO };


/**
 * Fills `g` with the one graph of a spatially gated block, dynamic in the batch and in the number of positions computed:
 * the gate (a 1x1 convolution as a matrix product on the NHWC rows) above the threshold's logit gives the mask;
 * `NonZero` gives the selected positions on the zero-padded grid, where a 3x3 patch is the position plus 9
 * constant offsets, so no bounds check is needed. conv1 runs on the mask dilated by a 3x3 `MaxPool`, conv2 on
 * the mask: each a `Gather` of patch rows and one `MatMul` (BatchNorm folded into the matrix). conv1's rows
 * are scattered (`ScatterND`) into a zero grid for conv2's patches, and conv2's are added into the padded
 * input (`ScatterND` with `reduction: add`): the other positions keep relu(x). With `fixedMask`, the mask is
 * an input instead (the bench's fixed masks).
 */
export function lowerSpatial(g: GraphBuilder, block: SpatialResidualBlock, options: { fixedMask?: boolean } = {}): void {
  const [H, W, C] = block.inShape;
  const F = block.args.filters;
  const [Hp, Wp] = [H + 2, W + 2];
  const b = block.name;
  const w = block.folded();
  const i64 = (name: string, v: number[]) => g.int64Const(`${b}/${name}`, v);
  const reshape = (x: string, shape: number[], name: string) => g.node('Reshape', [x, i64(`${name}_shape`, shape)], `${b}/${name}`);
  g.input(floatValueInfo(SPATIAL_IO.x, ['batch', C, H, W]));
  const nhwc = g.node('Transpose', [SPATIAL_IO.x], `${b}/nhwc`, { perm: attr.ints([0, 2, 3, 1]) });
  let mask: string;
  if (options.fixedMask) {
    g.input(floatValueInfo(SPATIAL_IO.mask, ['batch', 1, H, W]));
    mask = SPATIAL_IO.mask;
  } else {
    g.input(floatValueInfo(SPATIAL_IO.cut, [], 'the logit the gates\' threshold cuts at'));
    const kernel = g.floatInit(`${b}.gate.folded_kernel`, [C, 1], w.gate.kernel);
    const z = g.node('Add', [g.node('MatMul', [reshape(nhwc, [-1, C], 'rows'), kernel], `${b}/gate/matmul`), g.floatConst(`${b}/gate/bias`, [1], [w.gate.bias])], `${b}/gate/logits`);
    const on = g.node('Greater', [z, SPATIAL_IO.cut], `${b}/gate/on`);
    mask = reshape(g.node('Cast', [on], `${b}/gate/mask_rows`, { to: attr.int(1) }), [-1, 1, H, W], 'mask');
  }
  const need = g.node('MaxPool', [mask], `${b}/need`, { kernel_shape: attr.ints([3, 3]), pads: attr.ints([1, 1, 1, 1]), strides: attr.ints([1, 1]) });
  // Positions on the padded grid, as flat indices: a patch is the position plus 9 constant offsets.
  const padded = (m: string, name: string) => reshape(g.node('Pad', [m, i64(`${name}_pads`, [0, 0, 1, 1, 0, 0, 1, 1])], `${b}/${name}_padded`), [-1], `${name}_flat`);
  const positions = (m: string, name: string) => reshape(g.node('NonZero', [padded(m, name)], `${b}/${name}_nonzero`), [-1], `${name}_index`);
  const rows1 = positions(need, 'conv1');
  const rows2 = positions(mask, 'conv2');
  const offsets = i64('offsets', Array.from({ length: 9 }, (_, t) => (Math.floor(t / 3) - 1) * Wp + (t % 3) - 1));
  const column = (idx: string, name: string) => g.node('Unsqueeze', [idx, i64(`${name}_axis`, [1])], `${b}/${name}_column`);
  const conv = (source: string, idx: string, cin: number, weights: { matrix: Float32Array; bias: Float32Array }, name: string) => {
    const patches = g.node('Gather', [source, g.node('Add', [column(idx, `${name}_patch`), offsets], `${b}/${name}/patch_index`)], `${b}/${name}/patches`, { axis: attr.int(0) });
    // [m, 9 * cin] with m read from the index (a Reshape with -1 is ambiguous when m = 0).
    const shape = g.node('Concat', [g.node('Shape', [idx], `${b}/${name}/m`), i64(`${name}_cols`, [9 * cin])], `${b}/${name}/cols_shape`, { axis: attr.int(0) });
    const cols = g.node('Reshape', [patches, shape], `${b}/${name}/cols`);
    const matrix = g.floatInit(`${b}.${name}.folded_matrix`, [9 * cin, F], weights.matrix);
    const bias = g.floatInit(`${b}.${name}.folded_bias`, [F], weights.bias);
    return g.node('Add', [g.node('MatMul', [cols, matrix], `${b}/${name}/matmul`), bias], `${b}/${name}/y`);
  };
  const source = reshape(g.node('Pad', [nhwc, i64('x_pads', [0, 1, 1, 0, 0, 1, 1, 0])], `${b}/x_padded`), [-1, C], 'x_rows');
  const hidden = g.node('Relu', [conv(source, rows1, C, w.conv1, 'conv1')], `${b}/conv1/relu`);
  // The block keeps its shape (F = C): conv1's grid is the input's shape, zero where conv1 did not run.
  const grid = g.node('ScatterND', [g.node('ConstantOfShape', [g.node('Shape', [source], `${b}/grid_shape`)], `${b}/grid_zeros`), column(rows1, 'conv1_scatter'), hidden], `${b}/conv1/grid`);
  const residual = conv(grid, rows2, F, w.conv2, 'conv2');
  const sum = g.node('ScatterND', [source, column(rows2, 'conv2_scatter'), residual], `${b}/sum`, { reduction: attr.string('add') });
  const inner = g.node('Slice', [reshape(sum, [-1, Hp, Wp, F], 'sum_map'), i64('starts', [1, 1]), i64('ends', [H + 1, W + 1]), i64('axes', [1, 2])], `${b}/interior`);
  g.nodeTo('Transpose', [g.node('Relu', [inner], `${b}/relu`)], SPATIAL_IO.y, { perm: attr.ints([0, 3, 1, 2]) });
  const count = (m: string, name: string) => g.node('ReduceSum', [reshape(m, [-1, H * W], `${name}_per_sample`), i64(`${name}_sum_axes`, [1])], `${b}/${name}_count`, { keepdims: attr.int(1) });
  g.nodeTo('Concat', [count(need, 'conv1'), count(mask, 'conv2')], SPATIAL_IO.computed, { axis: attr.int(1) });
  g.output(floatValueInfo(SPATIAL_IO.y, ['batch', F, H, W]));
  g.output(floatValueInfo(SPATIAL_IO.computed, ['batch', 2]));
}
