// Worker-thread side of `OnnxModel.load(file, {worker: true})`: owns one ONNX Runtime session and answers
// run requests in arrival order, so the main thread's event loop never blocks on `session.run()`.
import { parentPort, workerData } from 'node:worker_threads';
import { openSession, type LoadOptions, type WorkerReply, type WorkerRequest } from './node.js';
import type { ModelSession } from './core.js';
import type { SegmentedSession } from './segments.js';

const port = parentPort;
if (!port) throw new Error('src/runtime/worker.ts must run as a worker thread');

const { file, options } = workerData as { file: string; options: Omit<LoadOptions, 'worker'> };
const reply = (m: WorkerReply, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
const asError = (err: unknown) => ({ name: (err as Error).name ?? 'Error', message: (err as Error).message ?? String(err) });

let session: ModelSession | SegmentedSession;
try {
  session = await openSession(file, options);
  reply({ type: 'ready', metadata: session.metadata, verified: session.verified });
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
      const value = (await (session[m.method] as unknown as (...a: unknown[]) => Promise<object>)(...m.args)) as Record<string, unknown>;
      // Copies of typed arrays (ONNX Runtime may own an output buffer), then moved to the main thread.
      const out: Record<string, unknown> = {};
      const transfer: ArrayBuffer[] = [];
      for (const [k, v] of Object.entries(value)) {
        if (ArrayBuffer.isView(v)) {
          const copy = (v as Float32Array).slice();
          transfer.push(copy.buffer as ArrayBuffer);
          out[k] = copy;
        } else out[k] = v;
      }
      // A lent input goes back as it came, uncopied, for the caller to reuse.
      if (m.lend) {
        out.images = m.args[0];
        transfer.push((m.args[0] as Float32Array).buffer as ArrayBuffer);
      }
      reply({ type: 'result', id: m.id, value: out }, transfer);
    } catch (err) {
      reply({ type: 'error', id: m.id, error: asError(err) });
    }
  });
});
