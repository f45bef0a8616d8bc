import type { FastifyInstance } from 'fastify';
import { createHttpApp, type HttpSafetyOptions } from '../util/http.js';
import { classify, nonFiniteScores } from '../serve/errors.js';
import { DynnError } from '../util/errors.js';
import { SplitTail } from './runtime.js';
import type { TailResponse } from './client.js';
import { headPageRoutes } from './web.js';
import { decodeFrame, FRAME_HEADER_BYTES, MAX_FRAME_SAMPLES, bytesPerSample } from './wire.js';

export type { TailResponse } from './client.js';

const ROUTES = 'POST /v1/tail, GET /v1/split, GET / (the head in the browser)';

/** Options of a split's tail server. */
export interface SplitServerOptions extends HttpSafetyOptions {
  /** The split directory (`dynn split --out`). */
  dir: string;
  /** ONNX Runtime intra-op threads (default 1). */
  threads?: number;
  /** The head page (`GET /`): where the split's data set files are, for its test images. */
  dataDir?: string;
  /** The head page: test images it offers (default 16, at most 64). */
  samples?: number;
}

/**
 * The server side of split computing: `POST /v1/tail` takes a feature frame (application/octet-stream, the wire
 * format of `wire.ts`), validates it (magic, version, bits, channel count, size, finite scales) and answers the
 * classes; anything wrong is a 4xx with a JSON error. `GET /v1/split` gives the split's metadata (its points and
 * wire format), so a head can choose its bottleneck. `GET /` is the head in the browser (`web.ts`): head.onnx in
 * onnxruntime-web sending its frames here.
 */
export class SplitServer {
  private constructor(
    readonly app: FastifyInstance,
    readonly tail: SplitTail,
  ) {}

  static async create(o: SplitServerOptions): Promise<SplitServer> {
    const tail = await SplitTail.load(o.dir, { threads: o.threads });
    const [, h, w] = tail.meta.features.shape;
    const bodyLimit = FRAME_HEADER_BYTES + MAX_FRAME_SAMPLES * bytesPerSample(tail.meta.bottleneck.maxChannels, h, w, 16);
    const app = createHttpApp({ bodyLimit, logger: false, forceCloseConnections: 'idle' }, o);
    app.removeContentTypeParser('text/plain');
    app.removeContentTypeParser('application/json');
    app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
    app.setErrorHandler((err, _req, reply) => {
      const { status, kind, message } = classify(err instanceof Error ? err : new Error(String(err)), 'application/octet-stream (a dynn feature frame)');
      return reply.code(status).type('application/json').send({ error: kind, message });
    });
    app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}; routes: ${ROUTES}` }));
    const meta = tail.meta;
    app.get('/v1/split', async () => ({ at: meta.at, input: meta.input, features: meta.features, bottleneck: meta.bottleneck, points: meta.points, wire: meta.wire, classNames: meta.classNames }));
    app.post('/v1/tail', async (request): Promise<TailResponse> => {
      const t0 = performance.now();
      if (!Buffer.isBuffer(request.body)) throw new DynnError('send the feature frame as application/octet-stream');
      const frame = decodeFrame(request.body, tail.limits);
      const scores = await tail.run(frame);
      const k = meta.numClasses;
      const rows = Array.from({ length: frame.count }, (_, i) => Array.from(scores.subarray(i * k, (i + 1) * k)));
      const bad = nonFiniteScores(scores, k);
      if (bad) throw bad;
      const classes = rows.map((r) => r.indexOf(Math.max(...r)));
      return { classes, labels: classes.map((c) => meta.classNames[c] ?? String(c)), scores: rows, timings: { tailMs: performance.now() - t0 } };
    });
    headPageRoutes(app, o.dir, meta, { dataDir: o.dataDir, samples: o.samples });
    return new SplitServer(app, tail);
  }

  async listen(o: { port?: number; host?: string } = {}): Promise<string> {
    return this.app.listen({ port: o.port ?? 0, host: o.host ?? '127.0.0.1' });
  }

  async close(): Promise<void> {
    await this.app.close();
    await this.tail.release();
  }
}
