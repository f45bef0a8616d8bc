/** Export: a throttleable network as one ONNX model with a utilization input. */
export { exportOnnx, saveOnnx, type ExportOptions, type OnnxExport } from './export.js';
export { readOnnxMetadata, levelIndexFor, ONNX_FORMAT, ONNX_IO, type OnnxMetadata, type OnnxLevel } from './metadata.js';
export { lowerings, type LayerLowering, type BranchContext } from './lower.js';
