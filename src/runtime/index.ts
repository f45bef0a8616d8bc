/**
 * Runtime: dynn's ONNX models on ONNX Runtime. This entry is for Node (onnxruntime-node, optionally in a
 * worker thread); `./web.js` is the browser entry (onnxruntime-web) with the same `ModelSession` API.
 */
export {
  OnnxModel,
  openSession,
  sessionOptions,
  defaultThreads,
  NODE_EXECUTION_PROVIDERS,
  type LoadOptions,
  type ModelRunOptions,
  type ModelPrediction,
  type NodeDevice,
} from './node.js';
export {
  ModelSession,
  nhwcToNchw,
  argmaxRows,
  levelFor,
  runMixed,
  toNchw,
  type Prediction,
  type ExitPrediction,
  type MixedPrediction,
  type Decision,
  type PlannedPrediction,
  type ExitOptions,
  type RunOptions,
  type ImageLayout,
  type OrtApi,
} from './core.js';
export {
  profileModel,
  readLatencyTable,
  saveLatencyTable,
  latencyTablePath,
  LATENCY_FORMAT,
  type LatencyTable,
  type LatencyRow,
  type ProfileOptions,
} from './profile.js';
export { verifyModel, type VerifiedModel } from './verify.js';
export { TemporalSession, NonFiniteScoresError, temporalOf, type SessionStep, type StepResult, type StepFn } from './session.js';
export { SegmentedSession, type RoutedPrediction, type RoutedRunOptions } from './segments.js';
export { readOnnxMetadata, type OnnxMetadata, type OnnxLevel } from '../export/metadata.js';
