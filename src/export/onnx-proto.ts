import protobuf from 'protobufjs';

/**
 * The subset of onnx.proto (ONNX 1.12, IR version 8) that dynn writes and reads. Field numbers are those of
 * the official schema, so any ONNX reader accepts the result; fields dynn never sets are left out.
 */
const ONNX_PROTO = `
syntax = "proto3";
package onnx;

message AttributeProto {
  enum AttributeType { UNDEFINED = 0; FLOAT = 1; INT = 2; STRING = 3; TENSOR = 4; GRAPH = 5; FLOATS = 6; INTS = 7; STRINGS = 8; }
  string name = 1;
  AttributeType type = 20;
  float f = 2;
  int64 i = 3;
  bytes s = 4;
  TensorProto t = 5;
  GraphProto g = 6;
  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
}

message ValueInfoProto {
  string name = 1;
  TypeProto type = 2;
  string doc_string = 3;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  string name = 3;
  string op_type = 4;
  string domain = 7;
  repeated AttributeProto attribute = 5;
  string doc_string = 6;
}

message StringStringEntryProto {
  string key = 1;
  string value = 2;
}

message OperatorSetIdProto {
  string domain = 1;
  int64 version = 2;
}

message ModelProto {
  int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  string producer_name = 2;
  string producer_version = 3;
  string domain = 4;
  int64 model_version = 5;
  string doc_string = 6;
  GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
}

message GraphProto {
  repeated NodeProto node = 1;
  string name = 2;
  repeated TensorProto initializer = 5;
  string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
}

message TensorProto {
  repeated int64 dims = 1;
  int32 data_type = 2;
  string name = 8;
  string doc_string = 12;
  bytes raw_data = 9;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    }
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    int32 elem_type = 1;
    TensorShapeProto shape = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
  }
}

// Reads only the metadata of a model: the decoder skips every other field (the weights among them).
message ModelMetadataOnly {
  int64 ir_version = 1;
  repeated StringStringEntryProto metadata_props = 14;
}
`;

const root = protobuf.parse(ONNX_PROTO, { keepCase: true }).root;

/** The ONNX ModelProto message type. */
export const ModelProto = root.lookupType('onnx.ModelProto');
/** ModelProto with only `ir_version` and `metadata_props` declared, for reading metadata cheaply. */
export const ModelMetadataOnly = root.lookupType('onnx.ModelMetadataOnly');

/** ONNX IR version written: 8 is the newest Debian's python3-onnx 1.12 checks, and ORT 1.30 loads it. */
export const IR_VERSION = 8;
/** Default-domain opset written (17 pairs with IR 8 in ONNX 1.12). */
export const OPSET_VERSION = 17;

/** TensorProto.DataType values dynn uses. */
export const DataType = { FLOAT: 1, INT32: 6, INT64: 7, BOOL: 9, DOUBLE: 11 } as const;

/** AttributeProto.AttributeType values dynn uses. */
export const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, GRAPH: 5, INTS: 7 } as const;

/** Plain-object shapes of the messages, as protobufjs encodes them. */
export interface TensorMsg {
  name: string;
  dims: number[];
  data_type: number;
  raw_data: Uint8Array;
  doc_string?: string;
}

export interface AttributeMsg {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  g?: GraphMsg;
  ints?: number[];
}

export interface NodeMsg {
  name: string;
  op_type: string;
  /** The operator set's domain; empty or absent for ONNX's own operators. */
  domain?: string;
  input: string[];
  output: string[];
  attribute: AttributeMsg[];
}

export interface ValueInfoMsg {
  name: string;
  type: { tensor_type: { elem_type: number; shape?: { dim: ({ dim_value: number } | { dim_param: string })[] } } };
  doc_string?: string;
}

export interface GraphMsg {
  name: string;
  node: NodeMsg[];
  initializer: TensorMsg[];
  input: ValueInfoMsg[];
  output: ValueInfoMsg[];
  doc_string?: string;
}

export interface ModelMsg {
  ir_version: number;
  opset_import: { domain: string; version: number }[];
  producer_name: string;
  producer_version: string;
  doc_string?: string;
  graph: GraphMsg;
  metadata_props: { key: string; value: string }[];
}

/** Serializes a model message to ONNX protobuf bytes. */
export function encodeModel(model: ModelMsg): Uint8Array {
  return ModelProto.encode(ModelProto.fromObject(model)).finish();
}
