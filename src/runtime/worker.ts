// Worker-thread side of `OnnxModel.load(file, {worker: true})`: owns one ONNX Runtime session and answers
// run requests in arrival order, so the main thread's event loop never blocks on `session.run()`.
import { parentPort, workerData } from 'node:worker_threads';
import { openSession, type LoadOptions, type WorkerReply, type WorkerRequest } from './node.js';
import type { ModelSession } from './core.js';

const port = parentPort;
if (!port) throw new Error('src/runtime/worker.ts must run as a worker thread');

const { file, options } = workerData as { file: string; options: Omit<LoadOptions, 'worker'> };
const reply = (m: WorkerReply, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
const asError = (err: unknown) => ({ name: (err as Error).name ?? 'Error', message: (err as Error).message ?? String(err) });

let session: ModelSession;
try {
  session = await openSession(file, options);
  reply({ type: 'ready', metadata: session.metadata });
} catch (err) {
  reply({ type: 'error', id: null, error: asError(err) });
  process.exit(0);
}

let queue: Promise<unknown> = Promise.resolve();
port.on('message', (m: WorkerRequest) => {
  queue = queue.then(async () => {
    if (m.type === 'close') {
      await session.release();
      port.close();
      return;
    }
    try {
      const p = await session.run(m.images, m.u, m.options);
      // Copies: ONNX Runtime may own the output buffer.
      const prediction = { ...p, scores: p.scores.slice() };
      reply({ type: 'result', id: m.id, prediction }, [prediction.scores.buffer as ArrayBuffer, prediction.classes.buffer as ArrayBuffer]);
    } catch (err) {
      reply({ type: 'error', id: m.id, error: asError(err) });
    }
  });
});
