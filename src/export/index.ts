/** Export: a throttleable network as one ONNX model with a utilization input; a dynamic one by segments, as a folder. */
export { exportOnnx, saveOnnx, type ExportOptions, type OnnxExport } from './export.js';
export { weightsDigestChunks, webSha256, type Sha256 } from './digest.js';
export { readOnnxMetadata, parseMetadataProps, levelIndexFor, METADATA_LIMITS, ONNX_FORMAT, ONNX_IO, type OnnxMetadata, type OnnxLevel } from './metadata.js';
export { lowerings, type LayerLowering, type BranchContext } from './lower.js';
export { exitRuleLowerings, type RuleLowering } from './exits.js';
export { exportSegments, saveSegments, type SegmentsOptions, type SegmentsExport } from './segments.js';
export { parseManifest, routedRatios, MANIFEST_FILE, SEGMENTS_FORMAT, SEGMENT_IO, type SegmentsManifest, type SegmentEntry } from './manifest.js';
