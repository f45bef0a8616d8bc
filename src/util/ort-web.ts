import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';

/** URL path under which dynn's pages find onnxruntime-web's files (served locally: a page fetches nothing outside). */
export const ORT_WEB_PATH = '/vendor/ort/';
/** The module a page imports: onnxruntime-web's wasm-only ES module build (its wasm binary beside it). */
export const ORT_WEB_ENTRY = `${ORT_WEB_PATH}ort.wasm.min.mjs`;

/** The files served: the entry and the wasm binary with its loader, nothing else of the package. */
const ORT_FILE = /^ort(\.wasm\.min\.mjs|-wasm-simd-threaded\.(mjs|wasm))$/;
const CONTENT_TYPES: Record<string, string> = { '.mjs': 'text/javascript; charset=utf-8', '.wasm': 'application/wasm' };

/** Adds `GET /vendor/ort/:file` to a page server (the dashboard, a split's `dynn serve`). */
export function ortWebRoute(app: FastifyInstance): void {
  const dir = path.dirname(createRequire(import.meta.url).resolve('onnxruntime-web'));
  app.get<{ Params: { file: string } }>(`${ORT_WEB_PATH}:file`, async (req, reply) => {
    const file = req.params.file;
    if (!ORT_FILE.test(file)) return reply.code(404).type('text/plain').send('not found');
    return reply.type(CONTENT_TYPES[path.extname(file)]).send(await fsp.readFile(path.join(dir, file)));
  });
}
