import { DynnError } from '../util/errors.js';
import { AttributeType, DataType, type AttributeMsg, type GraphMsg, type NodeMsg, type TensorMsg, type ValueInfoMsg } from './onnx-proto.js';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** An attribute value, tagged with its ONNX type (a JS number alone cannot say int or float). */
export type Attr =
  | { type: 'int'; value: number }
  | { type: 'float'; value: number }
  | { type: 'ints'; value: number[] }
  | { type: 'string'; value: string }
  | { type: 'graph'; value: GraphMsg };

/** Typed attribute constructors: `attr.ints([3, 3])`, `attr.float(1e-5)`, `attr.graph(branch)`. */
export const attr = {
  int: (value: number): Attr => ({ type: 'int', value }),
  float: (value: number): Attr => ({ type: 'float', value }),
  ints: (value: number[]): Attr => ({ type: 'ints', value }),
  string: (value: string): Attr => ({ type: 'string', value }),
  graph: (value: GraphMsg): Attr => ({ type: 'graph', value }),
};

function attributeMsg(name: string, a: Attr): AttributeMsg {
  switch (a.type) {
    case 'int':
      return { name, type: AttributeType.INT, i: a.value };
    case 'float':
      return { name, type: AttributeType.FLOAT, f: a.value };
    case 'ints':
      return { name, type: AttributeType.INTS, ints: a.value };
    case 'string':
      return { name, type: AttributeType.STRING, s: new TextEncoder().encode(a.value) };
    case 'graph':
      return { name, type: AttributeType.GRAPH, g: a.value };
  }
}

/** Float32 values as ONNX raw_data (little-endian). */
function floatBytes(data: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.length * 4);
  const view = new DataView(out.buffer);
  data.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return out;
}

function int64Bytes(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
  return out;
}

/**
 * The names of one model. ONNX requires value names to be unique across the main graph and every subgraph
 * (an `If` branch sees the outer scope), so all graph builders of a model draw from one of these.
 */
export class NameScope {
  private readonly used = new Set<string>();

  /** `base` itself if free, else `base_2`, `base_3`, ... */
  unique(base: string): string {
    let name = base;
    for (let i = 2; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }

  /** Claims an exact name; a clash is a bug in the exporter. */
  claim(name: string): string {
    if (this.used.has(name)) throw new DynnError(`internal: ONNX name "${name}" is used twice`);
    this.used.add(name);
    return name;
  }
}

/** A float tensor value's type: element type float, dims numbers or symbolic names; `null` dims leave the rank open. */
export function floatValueInfo(name: string, dims: (number | string)[] | null, doc?: string): ValueInfoMsg {
  return valueInfo(name, DataType.FLOAT, dims, doc);
}

/** A tensor value's type of any element type (`DataType`), as `floatValueInfo`. */
export function valueInfo(name: string, elemType: number, dims: (number | string)[] | null, doc?: string): ValueInfoMsg {
  return {
    name,
    type: {
      tensor_type: {
        elem_type: elemType,
        ...(dims ? { shape: { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) } } : {}),
      },
    },
    ...(doc ? { doc_string: doc } : {}),
  };
}

/** The first dim of `x` (its rows, a batch's samples) as an int64 [1] value: one `Shape` node. */
export function rowCount(g: GraphBuilder, x: string, base: string): string {
  return g.node('Shape', [x], base, { start: attr.int(0), end: attr.int(1) });
}

/** Builds one ONNX graph (the main graph or a subgraph): nodes, initializers, inputs and outputs. */
export class GraphBuilder {
  private readonly nodes: NodeMsg[] = [];
  private readonly inits: TensorMsg[] = [];
  private readonly inputs: ValueInfoMsg[] = [];
  private readonly outputs: ValueInfoMsg[] = [];

  constructor(
    readonly name: string,
    readonly names: NameScope,
  ) {}

  /**
   * Adds a node with one output and returns the output's name (derived from `base`); `domain` names an operator
   * set other than ONNX's own (the model must import it).
   */
  node(opType: string, inputs: string[], base: string, attrs: Record<string, Attr> = {}, domain?: string): string {
    return this.add(opType, inputs, [this.names.unique(base)], attrs, domain)[0];
  }

  /** Adds a node whose one output has exactly the name `output` (a graph output such as `scores`). */
  nodeTo(opType: string, inputs: string[], output: string, attrs: Record<string, Attr> = {}, domain?: string): string {
    return this.add(opType, inputs, [this.names.claim(output)], attrs, domain)[0];
  }

  /** Adds a node with several outputs (an `If` with two results), named from `bases`; returns the names. */
  nodeOutputs(opType: string, inputs: string[], bases: string[], attrs: Record<string, Attr> = {}): string[] {
    return this.add(opType, inputs, bases.map((b) => this.names.unique(b)), attrs);
  }

  /** Adds a node whose outputs have exactly the names `outputs` (graph outputs). */
  nodeOutputsTo(opType: string, inputs: string[], outputs: string[], attrs: Record<string, Attr> = {}): string[] {
    return this.add(opType, inputs, outputs.map((o) => this.names.claim(o)), attrs);
  }

  private add(opType: string, inputs: string[], outputs: string[], attrs: Record<string, Attr>, domain?: string): string[] {
    this.nodes.push({
      name: this.names.unique(`${outputs[0]}/${opType}`),
      op_type: opType,
      ...(domain ? { domain } : {}),
      input: inputs,
      output: outputs,
      attribute: Object.entries(attrs).map(([k, v]) => attributeMsg(k, v)),
    });
    return outputs;
  }

  /** A float32 initializer with exactly this name (weights keep their dotted dynn names). */
  floatInit(name: string, dims: number[], data: Float32Array, doc?: string): string {
    if (dims.reduce((a, b) => a * b, 1) !== data.length) throw new DynnError(`internal: ${name} has ${data.length} values for dims [${dims}]`);
    this.inits.push({ name: this.names.claim(name), dims, data_type: DataType.FLOAT, raw_data: floatBytes(data), ...(doc ? { doc_string: doc } : {}) });
    return name;
  }

  /** A constant float32 tensor under a fresh name. */
  floatConst(base: string, dims: number[], values: number[]): string {
    const name = this.names.unique(base);
    this.inits.push({ name, dims, data_type: DataType.FLOAT, raw_data: floatBytes(Float32Array.from(values)) });
    return name;
  }

  /** A constant int64 vector under a fresh name (Slice bounds, Reshape shapes). */
  int64Const(base: string, values: number[]): string {
    const name = this.names.unique(base);
    this.inits.push({ name, dims: [values.length], data_type: DataType.INT64, raw_data: int64Bytes(values) });
    return name;
  }

  /** A constant int64 scalar (a 0-d tensor) under a fresh name (OneHot's depth, Gather's index, Range's bounds). */
  int64Scalar(base: string, value: number): string {
    const name = this.names.unique(base);
    this.inits.push({ name, dims: [], data_type: DataType.INT64, raw_data: int64Bytes([value]) });
    return name;
  }

  input(info: ValueInfoMsg): void {
    this.names.claim(info.name);
    this.inputs.push(info);
  }

  output(info: ValueInfoMsg): void {
    this.outputs.push(info);
  }

  build(doc?: string): GraphMsg {
    return {
      name: this.name,
      node: this.nodes,
      initializer: this.inits,
      input: this.inputs,
      output: this.outputs,
      ...(doc ? { doc_string: doc } : {}),
    };
  }
}
