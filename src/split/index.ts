/** Split computing: a network cut after a layer, a learned slimmable bottleneck between head and tail, its wire format and runtime. */
export { Bottleneck, SplitNetwork, splitPoints, findSplitPoint, checkBottleneck, type SplitPoint } from './bottleneck.js';
export { quantize, dequantize, fakeQuantize, checkBits, BITS_RANGE } from './quantize.js';
export { distill, type DistillOptions, type DistillEpoch } from './train.js';
export { splitNetwork, planSplit, DEFAULT_CHANNELS, DEFAULT_BITS, type SplitOptions, type TrainedSplit, type TrainedSplitPoint, type PlannedSplit } from './split.js';
export { exportHead, exportTail, SPLIT_IO } from './export.js';
export { encodeFrame, decodeFrame, bytesPerSample, FrameError, WIRE_FORMAT, WIRE_VERSION, WIRE_VERSIONS, type FeatureFrame, type FrameLimits } from './wire.js';
export { saveSplit, loadSplitMeta, checkSplitDir, isSplitDir, SPLIT_FORMAT, SPLIT_FORMAT_V1, SPLIT_FILE, type SplitMeta, type SplitPointMeta, type SplitFigure } from './store.js';
export { SplitHead, SplitTail, measureSplit, splitIndex } from './runtime.js';
export { pngBytes, inputBytes } from './input-size.js';
export { SplitServer, type SplitServerOptions, type TailResponse } from './server.js';
export { runHead, type HeadOptions, type HeadReport } from './head.js';
export { postFrame, sendFrame, DEFAULT_TAIL_TIMEOUT_MS, type SentFrame, type FrameHead } from './client.js';
export { Shaper, type ShaperOptions } from './shaper.js';
export { LinkMonitor, PointPicker, ComputeCosts, choosePoint, predictedMs, type LinkEstimate, type OperatingPoint, type ComputeMs } from './navisplit.js';
