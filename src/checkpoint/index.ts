/** Framework-free checkpoint directories: named float32 arrays, config and metadata, saved atomically. */
export {
  CHECKPOINT_FORMAT,
  CHECKPOINT_FORMAT_VERSION,
  MANIFEST_FILE,
  isCheckpointDir,
  loadCheckpoint,
  readCheckpointInfo,
  saveCheckpoint,
} from './checkpoint.js';
export type {
  ArraySpec,
  CheckpointContent,
  CheckpointExpectation,
  CheckpointInfo,
  CheckpointManifest,
  NamedArray,
} from './checkpoint.js';
