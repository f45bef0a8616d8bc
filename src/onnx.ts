/** ONNX export and the ONNX Runtime engine (onnxruntime-node): `import { onnx, runtime } from 'dynn/onnx'`. */
export * as onnx from './export/index.js';
export * as runtime from './runtime/index.js';
