import type { CommandModule } from './types.js';
import { numberOption, type Io } from './io.js';
import { httpFlags, httpOptions } from './http-options.js';
import { SERVE_NODE_FLAGS, parentGone, restartedServer } from '../serve/node-flags.js';

type Opts = Record<string, unknown>;

/**
 * Resolves once the process gets SIGINT or SIGTERM, or once the `dynn serve` that restarted it with its node
 * flags is gone. A server started directly then leaves a second signal its default action (it ends at once); a
 * restarted one keeps ignoring them, since tools that signal every process of a service (systemd, pkill) reach it
 * twice, directly and through its first process, which ends it at once on a second signal of its own.
 */
function shutdownSignal(): Promise<string> {
  return new Promise((resolve) => {
    // Not SIGHUP: a listener would override `nohup`. A restarted server never gets the terminal's hangup (its
    // first process does, dies of it, and the server then drains as its parent is gone).
    const signals = ['SIGINT', 'SIGTERM'] as const;
    const on = (sig: string) => {
      if (!restartedServer) for (const s of signals) process.off(s, on);
      resolve(sig);
    };
    for (const s of signals) process.on(s, on);
    void parentGone().then(() => on('the parent process exited'));
  });
}

/** `dynn serve MODEL [--port N] [--host H] [--slo-ms MS] [--policy P] ...`: runs until SIGINT or SIGTERM. */
export async function serveCommand(file: string, o: Opts, io: Io, stop: Promise<string> = shutdownSignal()): Promise<void> {
  const { isSplitDir } = await import('../split/store.js');
  if (await isSplitDir(file)) return (await import('./split-commands.js')).serveSplit(file, o, io, stop, httpOptions(o));
  const port = numberOption(o.port, 'port', { int: true, min: 0, max: 65535 }) ?? 8080;
  const host = o.host === undefined ? '127.0.0.1' : String(o.host);
  const sloMs = numberOption(o.sloMs, 'slo-ms', { min: 0.001 });
  const maxBatch = numberOption(o.maxBatch, 'max-batch', { int: true, min: 1 });
  const maxWaitMs = numberOption(o.maxWaitMs, 'max-wait-ms', { min: 0 });
  const maxQueue = numberOption(o.maxQueue, 'max-queue', { int: true, min: 1 });
  const bodyLimit = numberOption(o.bodyLimit, 'body-limit', { int: true, min: 1024 });
  const threads = numberOption(o.threads, 'threads', { int: true, min: 1 });
  const maxSessions = numberOption(o.maxSessions, 'max-sessions', { int: true, min: 1 });
  const sessionIdleMs = numberOption(o.sessionIdleMs, 'session-idle-ms', { int: true, min: 1, max: 2 ** 31 - 1 });
  const policy = o.policy === undefined ? undefined : String(o.policy);
  const http = httpOptions(o);
  const log = (line: string) => io.err(`dynn serve: ${line}\n`);
  const { DynnServer } = await import('../serve/server.js');
  const { parsePolicy } = await import('../serve/policy.js');
  if (policy !== undefined) parsePolicy(policy);
  const server = await DynnServer.create({
    model: file,
    policy,
    sloMs,
    maxBatch,
    maxWaitMs,
    maxQueue,
    bodyLimit,
    threads,
    maxSessions,
    sessionIdleMs,
    spinning: o.spinning === true,
    exits: o.exits !== false,
    profile: o.profile === true,
    log,
    ...http,
  });
  let url: string;
  try {
    url = await server.listen({ port, host });
  } catch (err) {
    await server.close();
    throw err;
  }
  const m = server.metadata;
  const sessions = server.sessions ? { max: server.sessions.maxSessions, idleMs: server.sessions.idleMs } : undefined;
  const info = { url, model: file, policy: server.policy.name, sloMs: sloMs ?? 25, levels: m.levels.map((l) => l.u), input: [...m.input.shape], ...(sessions ? { sessions } : {}) };
  if (o.json) io.out(JSON.stringify(info) + '\n');
  else if (m.routed) io.out(`dynn serve: listening on ${url} (${m.model.model}, dynamic: ${m.routed.gatedBlocks} gated blocks at threshold ${m.routed.threshold}, SLO ${info.sloMs} ms)\n`);
  else {
    const exits = m.exits?.inGraph && o.exits !== false ? `; early exits by its ${m.exits.inGraph.rule} rule` : '';
    io.out(`dynn serve: listening on ${url} (${m.model.model}, levels ${info.levels.map((u) => Number(u.toFixed(3))).join(', ')}, policy ${info.policy}, SLO ${info.sloMs} ms${exits}${sessions ? `; sessions of its temporal controller: at most ${sessions.max}, expiring after ${sessions.idleMs} ms idle` : ''})\n`);
  }
  const sig = await stop;
  log(`${sig}: finishing queued requests and shutting down`);
  await server.close();
}

/** The serving command. */
export const serveCommands: CommandModule = (cli, io) => {
  const command = cli
    .command('serve <model>', 'serve an exported ONNX model (or a dynamic model\'s folder) over HTTP, throttling u to meet a latency SLO under load')
    .option('--port <n>', 'TCP port; 0 picks a free one [default: 8080]')
    .option('--host <addr>', 'address to listen on [default: 127.0.0.1]')
    .option('--slo-ms <ms>', 'latency objective per request, server side [default: 25]')
    .option('--policy <p>', 'adaptive (highest level meeting the SLO, planned for a share of it while answers come late), fixed:U, or controller (the one exported in the model) [default: adaptive; fixed:1 for a dynamic model\'s folder]')
    .option('--max-batch <n>', 'most samples per batch run and per request [default: 64]')
    .option('--max-wait-ms <ms>', 'how long a batch may wait to fill while the model is idle [default: 2]')
    .option('--max-queue <n>', 'most samples waiting; more get 503 [default: 32 x max batch]')
    .option('--body-limit <bytes>', 'largest request body [default: room for a max batch as JSON]')
    .option('--threads <n>', 'ONNX Runtime intra-op threads [default: the core count]')
    .option('--spinning', 'let idle ONNX Runtime threads spin (faster alone, slower beside the HTTP thread)')
    .option('--no-exits', 'an early-exit model exported with its fitted rule: run every sample to the last exit instead of letting sure ones leave early')
    .option('--profile', 'with no latency table beside the model, measure one at startup (else: refuse to start)')
    .option('--max-sessions <n>', 'a model with a temporal controller: most sessions open at once; more get 429 [default: 1024]')
    .option('--session-idle-ms <ms>', 'a model with a temporal controller: a session unused this long expires [default: 60000]')
    .option('--data-dir <dir>', 'a split\'s folder: where its data set files are (the head page\'s test images)')
    .option('--json', 'print the startup line as JSON');
  httpFlags(command)
    .example('dynn serve fm-vgg.onnx --port 8080 --slo-ms 25 --policy adaptive')
    .example(`dynn serve fm-vgg.onnx   # runs in a node restarted with ${SERVE_NODE_FLAGS} (V8's heap sized for load) unless given values of its own`)
    .example(`curl -s localhost:8080/v1/predict -H 'content-type: application/json' -d '{"inputs": [...784 numbers...], "budgetMs": 10}'`)
    .action(async (model, o) => serveCommand(model, o, io));
};
