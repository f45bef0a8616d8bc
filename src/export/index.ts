/** Export: a throttleable network as one ONNX model with a utilization input. */
export { exportOnnx, saveOnnx, type ExportOptions, type OnnxExport } from './export.js';
export { weightsDigestChunks, webSha256, type Sha256 } from './digest.js';
export { readOnnxMetadata, parseMetadataProps, levelIndexFor, METADATA_LIMITS, ONNX_FORMAT, ONNX_IO, type OnnxMetadata, type OnnxLevel } from './metadata.js';
export { lowerings, type LayerLowering, type BranchContext } from './lower.js';
