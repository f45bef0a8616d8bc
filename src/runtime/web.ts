/**
 * The browser entry of dynn's runtime: the same `ModelSession` as in Node, on onnxruntime-web. It imports
 * nothing from Node (no fs, no worker_threads), so a bundler can ship it to a page:
 *
 * ```ts
 * import { loadWebModel } from 'dynn/web';
 * const model = await loadWebModel('/models/vgg.onnx', { device: 'wasm' });
 * const p = await model.run(images, 0.5); // Float32Array NCHW, or {layout: 'NHWC'}
 * ```
 */
import * as ortWeb from 'onnxruntime-web';
import type { InferenceSession } from 'onnxruntime-web';
import { DynnError } from '../util/errors.js';
import { ModelSession, type OrtApi } from './core.js';
import { webSha256 } from '../export/digest.js';
import { SegmentedSession } from './segments.js';
import { MANIFEST_FILE } from '../export/manifest.js';

export { ModelSession, nhwcToNchw, argmaxRows, levelFor, type Prediction, type RunOptions, type ImageLayout } from './core.js';
export { verifyModel, type VerifiedModel } from './verify.js';
export { TemporalSession, type SessionStep } from './session.js';
export type { PlannedPrediction } from './core.js';
export { SegmentedSession, type RoutedPrediction, type RoutedRunOptions } from './segments.js';
export { readOnnxMetadata, levelIndexFor, type OnnxMetadata, type OnnxLevel } from '../export/metadata.js';

/** Where a model runs in a browser. */
export type WebDevice = 'wasm' | 'webgpu' | 'webnn';

/** Device to onnxruntime-web execution providers, in preference order (wasm last as the fallback). */
export const WEB_EXECUTION_PROVIDERS: Readonly<Record<WebDevice, readonly string[]>> = {
  wasm: ['wasm'],
  webgpu: ['webgpu', 'wasm'],
  webnn: ['webnn', 'wasm'],
};

/** Options of `loadWebModel`. */
export interface WebLoadOptions {
  /** Device (default 'wasm'). */
  device?: WebDevice;
  /**
   * WebAssembly threads. onnxruntime-web keeps this in its process-wide `env`, so it applies to every
   * session created afterwards. Default: the core count when the page is cross-origin isolated (threads
   * need SharedArrayBuffer), else 1.
   */
  threads?: number;
  /** Run the wasm backend in onnxruntime-web's proxy worker, so `run` does not block the page (also global). */
  proxy?: boolean;
}

/** onnxruntime-web's threads, proxy and providers for a device (the globals are set here). */
function webSession(options: WebLoadOptions): InferenceSession.SessionOptions {
  const device = options.device ?? 'wasm';
  const providers = WEB_EXECUTION_PROVIDERS[device];
  if (!providers) throw new DynnError(`unknown device "${device}"; expected one of ${Object.keys(WEB_EXECUTION_PROVIDERS).join(', ')}`);
  const g = globalThis as { crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number } };
  ortWeb.env.wasm.numThreads = options.threads ?? (g.crossOriginIsolated ? (g.navigator?.hardwareConcurrency ?? 1) : 1);
  if (options.proxy !== undefined) ortWeb.env.wasm.proxy = options.proxy;
  return { executionProviders: [...providers], graphOptimizationLevel: 'all' };
}

/** GET with the network's failure as a DynnError naming the URL (fetch says only "fetch failed"). */
async function get(url: string | URL): Promise<Response> {
  try {
    return await fetch(url);
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new DynnError(`${String(url)}: cannot fetch it (${cause ?? (err as Error).message})`);
  }
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  const res = await get(url);
  if (!res.ok) throw new DynnError(`${url}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * Loads a dynamic model exported by segments from the URL of its folder (`<folder>/manifest.json` and the
 * graphs it names, fetched beside it), with the checks the Node loader makes (weights digests with
 * WebCrypto where the page has it). `runRouted` dispatches each batch by the gates' counts.
 */
export async function loadWebSegments(folder: string | URL, options: WebLoadOptions = {}): Promise<SegmentedSession> {
  const opts = webSession(options);
  const base = String(folder).replace(/\/?$/, '/');
  const res = await get(new URL(MANIFEST_FILE, base));
  if (!res.ok) throw new DynnError(`${base}${MANIFEST_FILE}: HTTP ${res.status}`);
  const subtle = (globalThis as { crypto?: { subtle?: unknown } }).crypto?.subtle;
  // File names are checked to be plain names before any fetch, so every URL stays under the folder.
  return SegmentedSession.create(ortWeb as unknown as OrtApi, await res.text(), (f) => fetchBytes(String(new URL(f, base))), base.replace(/\/$/, ''), opts, subtle ? webSha256 : null);
}

/**
 * Loads a dynn ONNX model from a URL or bytes with onnxruntime-web, after the checks `OnnxModel.load` makes
 * (metadata, inputs and outputs, weights digest with WebCrypto); `verified` on the result says whether the
 * digest was checked, `unverifiedReason` why not (no digest in the file, or no WebCrypto: a page served over
 * plain http on a name other than localhost still loads the model, unverified).
 */
export async function loadWebModel(source: string | URL | ArrayBuffer | Uint8Array, options: WebLoadOptions = {}): Promise<ModelSession> {
  const opts = webSession(options);
  let bytes: Uint8Array;
  let name: string;
  if (typeof source === 'string' || source instanceof URL) {
    name = String(source);
    bytes = await fetchBytes(name);
  } else {
    name = 'model';
    bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
  }
  const subtle = (globalThis as { crypto?: { subtle?: unknown } }).crypto?.subtle;
  return ModelSession.create(ortWeb as unknown as OrtApi, bytes, name, opts, subtle ? webSha256 : null);
}
