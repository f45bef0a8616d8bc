import { fullSel } from '../layers/select.js';
import type { Layer } from '../layers/layer.js';
import { addWeights } from '../export/export.js';
import { attr, floatValueInfo, GraphBuilder, NameScope } from '../export/graph.js';
import { lowerChain } from '../export/lower.js';
import { DataType, encodeModel, IR_VERSION, OPSET_VERSION, type ValueInfoMsg } from '../export/onnx-proto.js';
import { VERSION } from '../version.js';
import type { SplitNetwork } from './bottleneck.js';
import { MIN_STEP } from './bits.js';
import { SPLIT_IO } from './core.js';

export { SPLIT_IO } from './core.js';

function typedInfo(name: string, elem: number, dims: (number | string)[]): ValueInfoMsg {
  return { name, type: { tensor_type: { elem_type: elem, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) } } } };
}

function layerWeights(split: SplitNetwork, layers: Layer[]) {
  const names = new Set(layers.flatMap((l) => l.weights().map((w) => w.name)));
  return split.model.getWeights().filter((w) => names.has(w.name));
}

function encode(graph: ReturnType<GraphBuilder['build']>, doc: string): Uint8Array {
  return encodeModel({
    ir_version: IR_VERSION,
    opset_import: [{ domain: '', version: OPSET_VERSION }],
    producer_name: 'dynn',
    producer_version: VERSION,
    doc_string: doc,
    graph,
    metadata_props: [],
  });
}

/**
 * The head as ONNX: images (NCHW float32) through the network up to the split point, the encoder's first
 * `channels` outputs (its weights sliced by the runtime input), quantized per sample to `bits` bits exactly as
 * `quantize` does in TF.js. Outputs the integer codes and each sample's min and step.
 */
export function exportHead(split: SplitNetwork): Uint8Array {
  const model = split.model;
  const [h, w, c] = model.inputShape;
  const layers = model.layers.slice(0, split.point.index + 1);
  const g = new GraphBuilder('dynn_split_head', new NameScope());
  g.input(floatValueInfo(SPLIT_IO.images, ['batch', c, h, w], 'images, NCHW float32'));
  g.input(typedInfo(SPLIT_IO.channels, DataType.INT64, [1]));
  g.input(floatValueInfo(SPLIT_IO.bits, [1], 'bit width, 1 to 16'));
  const dims = new Map<string, number[]>();
  addWeights(g, [...layerWeights(split, layers), ...split.bottleneck.getWeights().slice(0, 2)], dims);
  const f = lowerChain(layers, SPLIT_IO.images, fullSel(c), { g, plan: model.plan(1), prefix: 'head', dims }).y;
  const cut = (name: string) =>
    g.node('Slice', [name, g.int64Const(`${name}/starts`, [0]), SPLIT_IO.channels, g.int64Const(`${name}/axes`, [0])], `${name}/active`);
  const z = g.node('Conv', [f, cut('bottleneck.encoder.kernel'), cut('bottleneck.encoder.bias')], 'encoder', { kernel_shape: attr.ints([1, 1]) });
  const axes = { axes: attr.ints([1, 2, 3]), keepdims: attr.int(1) };
  const lo = g.node('ReduceMin', [z], 'lo', axes);
  const hi = g.node('ReduceMax', [z], 'hi', axes);
  const levels = g.node('Sub', [g.node('Pow', [g.floatConst('two', [1], [2]), SPLIT_IO.bits], 'pow'), g.floatConst('one', [1], [1])], 'levels');
  const step = g.node('Max', [g.node('Div', [g.node('Sub', [hi, lo], 'range'), levels], 'raw_step'), g.floatConst('min_step', [1], [MIN_STEP])], 'step4');
  const rounded = g.node('Round', [g.node('Div', [g.node('Sub', [z, lo], 'shifted'), step], 'scaled')], 'rounded');
  const clipped = g.node('Min', [g.node('Max', [rounded, g.floatConst('zero', [1], [0])], 'floor0'), levels], 'clipped');
  g.nodeTo('Cast', [clipped], SPLIT_IO.codes, { to: attr.int(DataType.INT32) });
  const flat = g.int64Const('flat', [-1]);
  g.nodeTo('Reshape', [lo, flat], SPLIT_IO.min);
  g.nodeTo('Reshape', [step, flat], SPLIT_IO.step);
  g.output(typedInfo(SPLIT_IO.codes, DataType.INT32, ['batch', 'channels', split.point.shape[0], split.point.shape[1]]));
  g.output(floatValueInfo(SPLIT_IO.min, ['batch']));
  g.output(floatValueInfo(SPLIT_IO.step, ['batch']));
  return encode(g.build(), `dynn split head: ${model.config.model} up to ${split.point.name}, slimmable encoder, quantizer`);
}

/**
 * The tail as ONNX: codes, min and step dequantized, the decoder's first `c` inputs (c read from the codes'
 * shape), then the rest of the network. Outputs the class scores.
 */
export function exportTail(split: SplitNetwork): Uint8Array {
  const model = split.model;
  const [fh, fw, fc] = split.point.shape;
  const layers = model.layers.slice(split.point.index + 1);
  const g = new GraphBuilder('dynn_split_tail', new NameScope());
  g.input(typedInfo(SPLIT_IO.codes, DataType.INT32, ['batch', 'channels', fh, fw]));
  g.input(floatValueInfo(SPLIT_IO.min, ['batch']));
  g.input(floatValueInfo(SPLIT_IO.step, ['batch']));
  const dims = new Map<string, number[]>();
  addWeights(g, [...layerWeights(split, layers), ...split.bottleneck.getWeights().slice(2)], dims);
  const perSample = g.int64Const('per_sample', [-1, 1, 1, 1]);
  const codes = g.node('Cast', [SPLIT_IO.codes], 'codes_f', { to: attr.int(DataType.FLOAT) });
  const scaled = g.node('Mul', [codes, g.node('Reshape', [SPLIT_IO.step, perSample], 'step4')], 'scaled');
  const z = g.node('Add', [scaled, g.node('Reshape', [SPLIT_IO.min, perSample], 'min4')], 'dequantized');
  const c = g.node('Slice', [g.node('Shape', [SPLIT_IO.codes], 'codes_shape'), g.int64Const('c_start', [1]), g.int64Const('c_end', [2])], 'c');
  // The decoder kernel is OIHW [C, K, 1, 1]: its first c inputs are axis 1.
  const kernel = g.node('Slice', ['bottleneck.decoder.kernel', g.int64Const('k_start', [0]), c, g.int64Const('k_axes', [1])], 'decoder_kernel');
  let f = g.node('Conv', [z, kernel, 'bottleneck.decoder.bias'], 'decoder', { kernel_shape: attr.ints([1, 1]) });
  if (split.bottleneck.relu) f = g.node('Relu', [f], 'decoder_relu');
  const y = lowerChain(layers, f, fullSel(fc), { g, plan: model.plan(1), prefix: 'tail', dims }).y;
  g.nodeTo('Identity', [y], SPLIT_IO.scores);
  g.output(floatValueInfo(SPLIT_IO.scores, ['batch', model.numClasses]));
  return encode(g.build(), `dynn split tail: decoder, ${model.config.model} after ${split.point.name}`);
}
