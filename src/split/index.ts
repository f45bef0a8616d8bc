/** Split computing: a network cut after a layer, a learned slimmable bottleneck between head and tail, its wire format and runtime. */
export { Bottleneck, SplitNetwork, splitPoints, findSplitPoint, checkBottleneck, type SplitPoint } from './bottleneck.js';
export { quantize, dequantize, fakeQuantize, checkBits, BITS_RANGE } from './quantize.js';
export { distill, type DistillOptions, type DistillEpoch } from './train.js';
export { splitNetwork, planSplit, DEFAULT_CHANNELS, DEFAULT_BITS, type SplitOptions, type TrainedSplit } from './split.js';
export { exportHead, exportTail, SPLIT_IO } from './export.js';
export { encodeFrame, decodeFrame, bytesPerSample, FrameError, WIRE_FORMAT, WIRE_VERSION, type FeatureFrame, type FrameLimits } from './wire.js';
export { saveSplit, loadSplitMeta, checkSplitDir, isSplitDir, SPLIT_FORMAT, SPLIT_FILE, type SplitMeta } from './store.js';
export { SplitHead, SplitTail } from './runtime.js';
export { pngBytes, inputBytes } from './input-size.js';
export { SplitServer, type SplitServerOptions, type TailResponse } from './server.js';
export { runHead, type HeadOptions, type HeadReport } from './head.js';
export { postFrame, sendFrame, DEFAULT_TAIL_TIMEOUT_MS, type SentFrame } from './client.js';
export { Shaper, type ShaperOptions } from './shaper.js';
export { LinkMonitor, PointPicker, choosePoint, predictedMs, type LinkEstimate } from './navisplit.js';
