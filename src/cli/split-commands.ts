import type { CommandModule } from './types.js';
import { choiceOption, numberOption, pct, table, type Io } from './io.js';
import { intListOption } from './deploy-commands.js';
import { DynnError } from '../util/errors.js';
import { kebab } from '../train/flags.js';

type Opts = Record<string, unknown>;

const ENGINES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;

/** `dynn split RUN --at LAYER[,LAYER..] [--channels C] [--bits B] --out DIR`: trains a bottleneck at each split point and writes the split. */
export async function splitCommand(run: string, o: Opts, io: Io): Promise<void> {
  if (o.at === undefined || o.at === true) throw new DynnError('split needs --at LAYER (the layer to split after)');
  if (o.out === undefined || o.out === true) throw new DynnError('split needs --out DIR (where to write the head and tail graphs and split.json)');
  const out = String(o.out);
  const ats = String(o.at).split(',').map((a) => a.trim()).filter(Boolean);
  if (ats.length === 0) throw new DynnError('--at needs a layer, or a comma-separated list of layers');
  const options = {
    at: ats,
    channels: intListOption(o.channels, 'channels'),
    bits: intListOption(o.bits, 'bits'),
    epochs: numberOption(o.epochs, 'epochs', { int: true, min: 1 }),
    batchSize: numberOption(o.batchSize, 'batch-size', { int: true, min: 1 }),
    lr: numberOption(o.lr, 'lr', { min: Number.MIN_VALUE }),
    taskWeight: numberOption(o.taskWeight, 'task-weight', { min: 0 }),
    seed: numberOption(o.seed, 'seed', { int: true }),
    pngSamples: numberOption(o.pngSamples, 'png-samples', { int: true, min: 1 }),
  };
  const trainLimit = numberOption(o.trainLimit, 'train-limit', { int: true, min: 1 });
  const testLimit = numberOption(o.testLimit, 'test-limit', { int: true, min: 1 });
  const engine = choiceOption(o.engine, 'engine', ENGINES);
  const { checkSplitDir, planSplit, splitNetwork, saveSplit, measureSplit } = await import('../split/index.js');
  await checkSplitDir(out, o.force === true);
  const { initEngine } = await import('../engine/backend.js');
  const { loadRun } = await import('../train/run.js');
  const { loadDataset } = await import('../data/datasets.js');
  const { head } = await import('../data/imageset.js');
  await initEngine(engine);
  const { model, meta } = await loadRun(run);
  try {
    planSplit(model, options);
    const dataset = String(o.dataset ?? meta.dataset);
    const data = await loadDataset(dataset, { dataDir: o.dataDir as string | undefined, trainLimit: trainLimit ?? (meta.options?.trainLimit as number | undefined), testLimit, seed: meta.seed });
    const [h, w, c] = model.inputShape;
    if (data.test.height !== h || data.test.width !== w || data.test.channels !== c) {
      throw new DynnError(`data set ${dataset} has ${data.test.height}x${data.test.width}x${data.test.channels} images; the run's model takes ${h}x${w}x${c}`);
    }
    const train = head(data.train, data.train.count - Math.min(meta.validationSamples ?? 0, data.train.count - 1));
    const say = (text: string) => {
      if (!o.json) io.err(text);
    };
    say(`training a bottleneck after ${ats.join(', ')} on ${train.count} samples of ${dataset}\n`);
    const r = splitNetwork(model, train, data.test, { ...options, onEpoch: (e) => say(`${e.at} epoch ${e.epoch}: feature MSE ${e.mse.toFixed(5)}, task loss ${e.taskLoss.toFixed(4)}\n`) }, data.classNames);
    r.meta.dataset = dataset;
    try {
      await measureSplit(r);
      await saveSplit(out, r.splits, r.meta);
    } finally {
      r.dispose();
    }
    const m = r.meta;
    if (o.json) {
      const result = { points: m.points, baseAccuracy: m.baseAccuracy, inputBytesPerSample: m.inputBytesPerSample, inputPngBytesPerSample: m.inputPngBytesPerSample };
      io.out(JSON.stringify(result, null, 2) + '\n');
      return;
    }
    const ms = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(3));
    const splitOf = new Map(m.splits.map((s) => [s.at, s]));
    io.out(
      `split ${run} after ${ats.join(', ')} into ${out} (input ${m.inputBytesPerSample} B raw, ${m.inputPngBytesPerSample.toFixed(1)} B as PNG; unsplit accuracy ${pct(m.baseAccuracy)})\n` +
        table(
          ['split point', 'features', 'channels', 'bits', 'bytes/sample', 'x PNG', 'accuracy', 'head MFLOPs', 'head ms'],
          m.points.map((p) => [
            p.at,
            splitOf.get(p.at)!.features.shape.join('x'),
            p.channels,
            p.bits,
            p.bytesPerSample,
            (p.bytesPerSample / m.inputPngBytesPerSample).toFixed(3),
            pct(p.accuracy),
            p.headFlops === undefined ? '-' : (p.headFlops / 1e6).toFixed(3),
            ms(splitOf.get(p.at)!.measured?.headMs),
          ]),
        ),
    );
  } finally {
    model.dispose();
  }
}

/** `dynn head DIR --server URL`: the device side, each frame through a head graph and over a shaped link to the tail. */
export async function headCommand(dir: string, o: Opts, io: Io): Promise<void> {
  if (o.server === undefined || o.server === true) throw new DynnError('head needs --server URL (the tail: dynn serve DIR)');
  const server = String(o.server);
  try {
    new URL(server);
  } catch {
    throw new DynnError(`--server ${server} is not a URL (e.g. http://127.0.0.1:8080)`);
  }
  const options = {
    at: o.at === undefined || o.at === true ? undefined : String(o.at),
    channels: numberOption(o.channels, 'channels', { int: true, min: 1 }),
    bits: numberOption(o.bits, 'bits', { int: true, min: 1, max: 16 }),
    bandwidthMbps: numberOption(o.bandwidthMbps, 'bandwidth-mbps', { min: Number.MIN_VALUE }),
    delayMs: numberOption(o.delayMs, 'delay-ms', { min: 0 }),
    latencyBudgetMs: numberOption(o.latencyBudgetMs, 'latency-budget-ms', { min: Number.MIN_VALUE }),
    threads: numberOption(o.threads, 'threads', { int: true, min: 1 }),
    timeoutMs: numberOption(o.timeoutMs, 'timeout-ms', { min: Number.MIN_VALUE }),
  };
  const testLimit = numberOption(o.testLimit, 'test-limit', { int: true, min: 1 }) ?? 100;
  const { loadSplitMeta, runHead } = await import('../split/index.js');
  const meta = await loadSplitMeta(dir);
  const dataset = o.dataset === undefined ? meta.dataset : String(o.dataset);
  if (dataset === undefined) throw new DynnError(`${dir} does not record its data set; pass --dataset NAME`);
  const { loadDataset } = await import('../data/datasets.js');
  const data = await loadDataset(dataset, { dataDir: o.dataDir as string | undefined, trainLimit: 1, testLimit });
  const r = await runHead({ dir, server, images: data.test, ...options });
  if (o.json) {
    io.out(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  io.out(
    `${r.samples} frames of ${dataset} to ${server}: accuracy ${pct(r.accuracy)}, ${r.meanBytes.toFixed(1)} B a request, latency mean ${r.meanMs.toFixed(2)} ms, p50 ${r.p50Ms.toFixed(2)} ms, p95 ${r.p95Ms.toFixed(2)} ms\n` +
      table(['split point', 'channels', 'bits', 'frames'], r.used.map((u) => [u.at, u.channels, u.bits, u.frames])),
  );
}

/** `dynn serve DIR` on a split directory: the tail behind POST /v1/tail until SIGINT or SIGTERM. */
export async function serveSplit(dir: string, o: Opts, io: Io, stop: Promise<string>, http: object): Promise<void> {
  // The tail answers each frame as it comes (its body bounded by the wire format): a model's batching and
  // policy options would be silently ignored, so they are refused.
  const modelOnly = (['sloMs', 'policy', 'maxBatch', 'maxWaitMs', 'maxQueue', 'bodyLimit', 'profile', 'spinning', 'maxSessions', 'sessionIdleMs'] as const).filter((k) => o[k] !== undefined && o[k] !== false);
  if (modelOnly.length) {
    throw new DynnError(`${dir} is a split folder: its tail serves each frame as it comes, so ${modelOnly.map((k) => `--${kebab(k)}`).join(', ')} ${modelOnly.length > 1 ? 'do' : 'does'} not apply (they are options of a served model)`);
  }
  const port = numberOption(o.port, 'port', { int: true, min: 0, max: 65535 }) ?? 8080;
  const host = o.host === undefined ? '127.0.0.1' : String(o.host);
  const { SplitServer } = await import('../split/server.js');
  const server = await SplitServer.create({ dir, threads: numberOption(o.threads, 'threads', { int: true, min: 1 }), dataDir: o.dataDir === undefined ? undefined : String(o.dataDir), ...http });
  let url: string;
  try {
    url = await server.listen({ port, host });
  } catch (err) {
    await server.close();
    throw err;
  }
  const m = server.tail.meta;
  const ats = m.splits.map((s) => s.at);
  if (o.json) io.out(JSON.stringify({ url, split: dir, at: ats, routes: ['POST /v1/tail', 'GET /v1/split', 'GET /'] }) + '\n');
  else io.out(`dynn serve: listening on ${url} (the tails of ${m.model.model} after ${ats.map((a, i) => `${a} (split ${i})`).join(', ')}: POST /v1/tail; the head in a browser, at ${ats[0]}: ${url}/)\n`);
  const sig = await stop;
  io.err(`dynn serve: ${sig}: shutting down\n`);
  await server.close();
}

/** The split-computing commands. */
export const splitCommands: CommandModule = (cli, io) => {
  cli
    .command('split <run>', 'split computing: train a slimmable bottleneck after each of one or more layers (head distillation, network frozen) and write a head and a tail graph per split point and the wire format')
    .option('--at <layers>', 'the layer, or comma-separated layers, to split after (required)')
    .option('--channels <list>', 'bottleneck channel counts [default: 1,2,4,8 up to the layer\'s]')
    .option('--bits <list>', 'bit widths, 1 to 16 [default: 2,4,8]')
    .option('--out <dir>', 'where to write the split (required)')
    .option('--force', 'replace the split in a non-empty --out')
    .option('--epochs <n>', 'passes over the training set [default: 1]')
    .option('--batch-size <n>', '[default: 64]')
    .option('--lr <x>', 'Adam learning rate [default: 0.003]')
    .option('--task-weight <x>', 'weight of the cross-entropy beside the feature MSE [default: 1]')
    .option('--seed <n>', '[default: 0]')
    .option('--dataset <name>', 'data set [default: the run\'s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--train-limit <n>', 'train on the first N samples')
    .option('--test-limit <n>', 'evaluate on the first N test samples')
    .option('--png-samples <n>', 'test samples whose PNG size is averaged [default: 1000]')
    .option('--engine <name>', 'auto, tensorflow, wasm or cpu')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn split runs/fm-vgg --at pool1,pool2 --out runs/fm-split --json')
    .action(async (run, o) => splitCommand(run, o, io));

  cli
    .command('head <dir>', 'split computing, device side: run the head graph on frames of a data set and send the features to a tail server (dynn serve DIR)')
    .option('--server <url>', 'the tail server (required)')
    .option('--at <layer>', 'only this split point\'s bottlenecks (required with --channels when the split has several)')
    .option('--channels <n>', 'a fixed bottleneck: channels (with --bits) [default: the most accurate trained point]')
    .option('--bits <n>', 'a fixed bottleneck: bits (with --channels)')
    .option('--bandwidth-mbps <x>', 'shape the uplink to this rate (a token bucket in the sender)')
    .option('--delay-ms <ms>', 'one-way delay added to each request (with --bandwidth-mbps)')
    .option('--latency-budget-ms <ms>', 'NaviSplit: pick each frame\'s split point and bottleneck to meet this end-to-end latency at the best accuracy')
    .option('--dataset <name>', 'where the frames come from [default: the split\'s]')
    .option('--data-dir <dir>', 'where the data set files are')
    .option('--test-limit <n>', 'frames to send: the first N test samples [default: 100]')
    .option('--threads <n>', 'ONNX Runtime threads [default: 1]')
    .option('--timeout-ms <ms>', 'most time to wait for the tail\'s answer to one frame [default: 10000]')
    .option('--json', 'machine-readable output on stdout')
    .example('dynn head runs/fm-split --server http://127.0.0.1:8080 --bandwidth-mbps 1 --delay-ms 5 --json')
    .action(async (dir, o) => headCommand(dir, o, io));
};
