import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { DynnError } from '../util/errors.js';
import { createHttpApp, listenHttp, type HttpSafetyOptions } from '../util/http.js';
import { ORT_WEB_ENTRY, ORT_WEB_PATH, ortWebRoute } from '../util/ort-web.js';
import { buildReport } from '../report/report.js';
import { gatherRun, RUN_FILES } from '../report/sources.js';
import { commandLine } from '../report/commands.js';
import { CASCADE_DEFAULTS } from '../control/cascade.js';
import { ONNX_IO, type OnnxMetadata } from '../export/metadata.js';
import { verifyModel } from '../runtime/verify.js';
import type { SampleImages } from '../data/samples.js';
import { DEMO_SCRIPT } from './demo-client.js';
import { liveFragment } from './live.js';
import { demoPage, errorPage, indexPage, livePage } from './pages.js';
import { findRun, listRuns, readInside, SAVED_REPORT, type RunEntry } from './runs.js';

/** Options of the dashboard app (the HTTP safety ones default to `HTTP_DEFAULTS`). */
export interface DashboardOptions extends HttpSafetyOptions {
  /** Folder of run directories (searched two levels deep). */
  runsDir: string;
  /** Where the data set files are (test images of the demo page). */
  dataDir?: string;
  /** Test images offered on the demo page (default 24, at most 64). */
  samples?: number;
  /** How often the live page polls (default 2000 ms). */
  pollMs?: number;
}

const MAX_SAMPLES = 64;
/** A saved report is a file from the run folder: shown without scripts, in an origin of its own. */
const SAVED_REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/** SHA-256 of byte chunks (the weights digest of `export/digest.ts`), with node:crypto. */
async function sha256(chunks: Uint8Array[]): Promise<string> {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest('hex');
}

function html(reply: FastifyReply, body: string, code = 200): FastifyReply {
  return reply.code(code).type('text/html; charset=utf-8').send(body);
}

/** A decoded test set cached per run and data set, so the demo page's images load once. */
interface SampleCache {
  key: string;
  body: SampleImages;
}

/** Builds the dashboard app (not listening): run list, reports, live training, in-browser demo. */
export async function createDashboard(options: DashboardOptions): Promise<FastifyInstance> {
  const runsDir = options.runsDir;
  await listRuns(runsDir);
  const pollMs = options.pollMs ?? 2000;
  const sampleCount = Math.min(MAX_SAMPLES, options.samples ?? 24);
  const samples = new Map<string, SampleCache>();
  const onnxMeta = new Map<string, { mtime: number; meta: OnnxMetadata; verified: boolean; reason: string | null }>();
  const app = createHttpApp({ logger: false }, options);
  // The API answers with paths relative to the runs folder: where the user keeps it is not the page's business.
  const roots = [...new Set([path.resolve(runsDir), await fsp.realpath(runsDir)])];
  const escapeRe = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const rootPattern = new RegExp(`(?:${roots.map(escapeRe).join('|')})(?:${escapeRe(path.sep)}|(?![\\w.-]))`, 'g');
  const relative = (text: string) => text.replace(rootPattern, (m) => (m.endsWith(path.sep) ? '' : '.'));

  const run = async (name: string, reply: FastifyReply, asJson: boolean): Promise<RunEntry | null> => {
    const r = await findRun(runsDir, name);
    if (!r || r.refused) {
      const [code, title, message] = r?.refused ? [403, 'run not served', r.refused] : [404, 'run not found', asJson ? `no run "${name}" in the runs folder` : `no run "${name}" in ${runsDir}`];
      if (asJson) reply.code(code).send({ error: message });
      else html(reply, errorPage(title, message), code);
      return null;
    }
    return r;
  };

  app.setErrorHandler((err, req, reply) => {
    const user = err instanceof DynnError;
    const code = user ? ((err as { statusCode?: number }).statusCode ?? 400) : 500;
    const message = user ? err.message : `internal error: ${(err as Error).message}`;
    if (req.url.startsWith('/api/')) return reply.code(code).send({ error: relative(message) });
    return html(reply, errorPage('dynn dashboard', message), code);
  });

  app.get('/', async (_req, reply) => html(reply, indexPage(runsDir, await listRuns(runsDir))));
  app.get('/api/runs', async () => ({
    runs: (await listRuns(runsDir)).map((r) => ({
      ...r,
      dir: path.relative(runsDir, r.dir).split(path.sep).join('/') || '.',
      ...(r.error ? { error: relative(r.error) } : {}),
      ...(r.refused ? { refused: relative(r.refused) } : {}),
    })),
  }));

  app.get<{ Params: { name: string } }>('/runs/:name/report', async (req, reply) => {
    const r = await run(req.params.name, reply, false);
    if (!r) return reply;
    if (r.error || !r.model) return html(reply, errorPage(`${r.name}: report`, r.error ?? 'no checkpoint yet: the report appears after the first epoch'), 404);
    // Lenient: a malformed sweep file is stated in its section; the rest of the run's page stands.
    const data = await gatherRun(r.dir, r.name, { sweep: false, lenient: true });
    const report = await buildReport([data], { title: `dynn report: ${r.name}`, command: commandLine(['dynn', 'report', r.dir, '--no-sweep', '--out', `${r.dir}/${SAVED_REPORT}`]) });
    return html(reply, report.html);
  });

  app.get<{ Params: { name: string } }>('/runs/:name/report.html', async (req, reply) => {
    const r = await run(req.params.name, reply, false);
    if (!r) return reply;
    const file = r.hasSavedReport ? await readInside(runsDir, path.join(r.dir, SAVED_REPORT)) : null;
    if (!file) return html(reply, errorPage(`${r.name}: saved report`, `no ${SAVED_REPORT} in ${r.dir}: \`dynn report ${r.dir} --out ${r.dir}/${SAVED_REPORT}\` makes one`), 404);
    return html(reply.header('content-security-policy', SAVED_REPORT_CSP), file.bytes.toString('utf8'));
  });

  app.get<{ Params: { name: string } }>('/runs/:name/live', async (req, reply) => {
    const r = await run(req.params.name, reply, false);
    if (!r) return reply;
    return html(reply, livePage(r, await liveFragment(r), pollMs));
  });

  app.get<{ Params: { name: string } }>('/api/runs/:name/live', async (req, reply) => {
    const r = await run(req.params.name, reply, true);
    if (!r) return reply;
    return { name: r.name, epochs: r.epochs, live: r.live, updatedAt: r.updatedAt, html: relative(await liveFragment(r)) };
  });

  app.get<{ Params: { name: string } }>('/runs/:name/demo', async (req, reply) => {
    const r = await run(req.params.name, reply, false);
    if (!r) return reply;
    const controllers = r.model && !r.error ? (await gatherRun(r.dir, r.name, { sweep: false, lenient: true })).controllers.filter((c) => c.samples === 'validation split').map((c) => c.name) : [];
    return html(reply, demoPage(r, { ortUrl: ORT_WEB_ENTRY, wasmPaths: ORT_WEB_PATH, samples: sampleCount, cascade: CASCADE_DEFAULTS, controllers }));
  });

  app.get<{ Params: { name: string } }>(`/runs/:name/${RUN_FILES.onnx}`, async (req, reply) => {
    const r = await run(req.params.name, reply, false);
    if (!r) return reply;
    const file = r.hasOnnx ? await readInside(runsDir, path.join(r.dir, RUN_FILES.onnx)) : null;
    if (!file) return reply.code(404).type('text/plain').send(`no ${RUN_FILES.onnx} in ${r.name}`);
    return reply.type('application/octet-stream').send(file.bytes);
  });

  app.get<{ Params: { name: string } }>('/api/runs/:name/model', async (req, reply) => {
    const r = await run(req.params.name, reply, true);
    if (!r) return reply;
    const file = r.hasOnnx ? await readInside(runsDir, path.join(r.dir, RUN_FILES.onnx)) : null;
    if (!file) return reply.code(404).send({ error: `no ${RUN_FILES.onnx} in run ${r.name}: \`dynn export RUN --onnx RUN/${RUN_FILES.onnx}\` makes one` });
    let cached = onnxMeta.get(file.real);
    if (!cached || cached.mtime !== file.mtimeMs) {
      // Checked here with node:crypto: the page may lack WebCrypto (plain http on a name other than localhost).
      const v = await verifyModel(file.bytes, `${r.name}/${RUN_FILES.onnx}`, sha256);
      cached = { mtime: file.mtimeMs, meta: v.metadata, verified: v.verified, reason: v.reason ?? null };
      onnxMeta.set(file.real, cached);
    }
    return { metadata: cached.meta, verified: cached.verified, unverifiedReason: cached.reason, io: ONNX_IO, cascade: CASCADE_DEFAULTS };
  });

  app.get<{ Params: { name: string }; Querystring: { count?: string } }>('/api/runs/:name/samples', async (req, reply) => {
    const r = await run(req.params.name, reply, true);
    if (!r) return reply;
    if (!r.dataset) return reply.code(404).send({ error: 'the run has no checkpoint yet, so its data set is unknown' });
    const count = Number(req.query.count ?? sampleCount);
    if (!Number.isInteger(count) || count < 1 || count > MAX_SAMPLES) throw new DynnError(`count must be an integer in [1, ${MAX_SAMPLES}], got ${JSON.stringify(req.query.count)}`);
    const key = `${r.dataset}:${count}`;
    let cached = samples.get(r.name);
    if (!cached || cached.key !== key) {
      const { sampleImages } = await import('../data/samples.js');
      try {
        cached = { key, body: await sampleImages(r.dataset, { dataDir: options.dataDir, count }) };
      } catch (err) {
        return reply.code(404).send({ error: `cannot open data set ${r.dataset} here: ${(err as Error).message}` });
      }
      samples.set(r.name, cached);
    }
    return cached.body;
  });

  app.get('/static/demo.js', async (_req, reply) => reply.type('text/javascript; charset=utf-8').send(DEMO_SCRIPT));

  ortWebRoute(app);

  return app;
}

/** A listening dashboard. */
export interface RunningDashboard {
  app: FastifyInstance;
  /** e.g. http://127.0.0.1:8080 */
  url: string;
  close(): Promise<void>;
}

/** Starts the dashboard on host:port (default 127.0.0.1; port 0 picks a free one). */
export async function startDashboard(options: DashboardOptions & { port?: number; host?: string }): Promise<RunningDashboard> {
  const app = await createDashboard(options);
  const host = options.host ?? '127.0.0.1';
  try {
    await listenHttp(app, options.port ?? 8080, host);
  } catch (err) {
    await app.close();
    throw err;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  return { app, url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`, close: () => app.close() };
}
