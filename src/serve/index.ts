/**
 * Serving: an HTTP inference server for dynn's ONNX models that throttles under load. Micro-batched
 * requests, a level per batch from a policy (adaptive: the highest level whose profiled latency plus the
 * queue wait meets the SLO), Prometheus metrics, graceful shutdown.
 */
export { DynnServer, type ServeOptions, type PredictResponse } from './server.js';
export { MicroBatcher, type BatchRunner, type BatcherOptions, type BatchedResult, type RunRecord } from './batcher.js';
export {
  adaptiveLevel,
  createPolicy,
  estimatorFor,
  parsePolicy,
  policies,
  LatencyEstimator,
  type AdaptiveArgs,
  type Dispatch,
  type LatencyFn,
  type PendingView,
  type PolicyDef,
  type PolicyEnv,
  type PolicySpec,
  type SampleController,
  type ServePolicy,
} from './policy.js';
export { parseJsonRequest, parseBinaryRequest, jsonBodySchema, querySchema, MAX_BUDGET_MS, type InputSpec, type Layout, type PredictInput } from './input.js';
export { ServeMetrics, type MetricsOptions } from './metrics.js';
export { HttpError, type ErrorKind } from './errors.js';
export { SessionStore, SESSION_DEFAULTS, type SessionStoreOptions, type SessionPredictResponse } from './sessions.js';
