import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { HttpError } from '../serve/errors.js';
import { ORT_WEB_ENTRY, ORT_WEB_PATH, ortWebRoute } from '../util/ort-web.js';
import type { SampleImages } from '../data/samples.js';
import { HEAD_PAGE_CSP, headPage } from './page.js';
import { HEAD_FILE, type SplitMeta } from './store.js';

/**
 * dynn's modules the head page loads, relative to dist/src: its script and everything it imports. None imports
 * node or a bare package name (a test checks the closure), so the browser loads them as they are, without a bundler.
 */
export const BROWSER_MODULES = ['split/head-page.js', 'split/core.js', 'split/client.js', 'split/wire.js', 'split/bits.js', 'split/navisplit.js', 'split/shaper.js', 'util/errors.js'] as const;
/** Where the page finds them. */
export const MODULES_PATH = '/static/dynn/';
/** dist/src, where the compiled modules are. */
export const DIST_SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Test images the page offers by default, and the most it may ask for. */
const DEFAULT_SAMPLES = 16;
const MAX_SAMPLES = 64;

/** Options of the head page. */
export interface HeadPageOptions {
  /** Where the split's data set files are (its test images on the page). */
  dataDir?: string;
  /** Test images the page offers (default 16, at most 64). */
  samples?: number;
}

/**
 * The browser's head on a split's tail server: `GET /` (the page), `GET /head.onnx`, `GET /v1/split/samples`
 * (test images of the split's data set), dynn's browser modules and onnxruntime-web.
 */
export function headPageRoutes(app: FastifyInstance, dir: string, meta: SplitMeta, o: HeadPageOptions = {}): void {
  const count = Math.min(MAX_SAMPLES, o.samples ?? DEFAULT_SAMPLES);
  let samples: Promise<SampleImages> | null = null;
  const config = {
    ortUrl: ORT_WEB_ENTRY,
    wasmPaths: ORT_WEB_PATH,
    scriptUrl: `${MODULES_PATH}split/head-page.js`,
    splitUrl: 'v1/split',
    headUrl: HEAD_FILE,
    samplesUrl: 'v1/split/samples',
  };
  app.get('/', async (_req, reply) => reply.header('content-security-policy', HEAD_PAGE_CSP).type('text/html; charset=utf-8').send(headPage(meta, config)));
  app.get(`/${HEAD_FILE}`, async (_req, reply) => reply.type('application/octet-stream').send(await fsp.readFile(path.join(dir, HEAD_FILE))));
  app.get('/v1/split/samples', async () => {
    if (!meta.dataset) throw new HttpError(404, 'not_found', 'the split does not record its data set, so there are no test images to offer');
    const dataset = meta.dataset;
    samples ??= import('../data/samples.js').then((m) => m.sampleImages(dataset, { dataDir: o.dataDir, count }));
    try {
      return await samples;
    } catch (err) {
      samples = null;
      throw new HttpError(404, 'not_found', `cannot open data set ${dataset} here: ${(err as Error).message}`);
    }
  });
  const modules = new Set<string>(BROWSER_MODULES);
  app.get<{ Params: { '*': string } }>(`${MODULES_PATH}*`, async (req, reply) => {
    const rel = req.params['*'];
    if (!modules.has(rel)) throw new HttpError(404, 'not_found', `no module ${rel}`);
    return reply.type('text/javascript; charset=utf-8').send(await fsp.readFile(path.join(DIST_SRC, rel)));
  });
  ortWebRoute(app);
}
