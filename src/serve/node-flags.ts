/**
 * Node's flags for a server under load. V8 starts an old-generation collection whenever the old generation's
 * headroom is smaller than the young generation, since one scavenge could promote all of it. A server answering
 * hundreds of requests a second has a small old generation (about 20 MB), so with large semi-spaces (32-64 MB:
 * V8's default on a machine with some GB of memory, or the 64 MB used before) it fell into full GCs every 0.2 s:
 * each promoted the requests in flight, which filled the headroom for the next (2-20 ms pauses on the core the
 * model runs on, most of the p99 under load). An old-generation limit of at least 256 MB keeps the headroom above
 * a young generation of 16 MB semi-spaces: no full GC but the memory reducer's, at the cost of up to that much
 * garbage held. V8 sizes both at start, so `dynn serve` restarts node with them ({@link relaunchWithServeFlags});
 * they must be on node's command line, since node refuses `--initial-old-space-size` in `NODE_OPTIONS`.
 * (Its own module: the CLI's entry, its help and the load bench read it without loading the server.)
 */
export const SERVE_NODE_FLAGS = '--max-semi-space-size=16 --initial-old-space-size=256';

/** Set in the restarted server's environment; read once here and removed, so the server's own children never see it. */
const RELAUNCHED = 'DYNN_SERVE_RELAUNCHED';
const relaunched = process.env[RELAUNCHED] !== undefined;
delete process.env[RELAUNCHED];

/** Whether this process is a server that `dynn serve` restarted (it has an IPC channel to its first process). */
export const restartedServer = relaunched && typeof process.send === 'function';

/**
 * The flags of {@link SERVE_NODE_FLAGS} that node was started without, by name: a value the user gave (on node's
 * command line or, for the flags node accepts there, in `NODE_OPTIONS`) is theirs to keep. V8 reads `_` as `-`.
 */
export function missingServeFlags(execArgv: readonly string[], nodeOptions = ''): string[] {
  const name = (flag: string) => flag.split('=')[0].replace(/_/g, '-');
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/)].map(name));
  return SERVE_NODE_FLAGS.split(' ').filter((f) => !given.has(name(f)));
}

/**
 * For `dynn serve` started without its node flags: runs the same command again in a child node with them and
 * resolves with its exit code (128 + the signal's number if a signal ended it). The child runs in a session of
 * its own, so a terminal's Ctrl-C reaches it once, handed on by this process; a second SIGINT or SIGTERM here
 * ends it at once (SIGKILL). SIGHUP is not handed on: this process dies of it, and the child, like any child
 * whose first process is gone, shuts down when its IPC channel closes ({@link parentGone}). Resolves with null,
 * running nothing, where no flag is missing, in a restarted server, under a debugger (`--inspect` attaches to
 * this process) and on Windows (a console's Ctrl-C reaches both processes there, and a signal handed on ends
 * the child abruptly).
 */
export async function relaunchWithServeFlags(): Promise<number | null> {
  const missing = missingServeFlags(process.execArgv, process.env.NODE_OPTIONS);
  const debugged = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].some((a) => a.startsWith('--inspect'));
  if (missing.length === 0 || relaunched || debugged || process.platform === 'win32') return null;
  const { spawn } = await import('node:child_process');
  const { constants } = await import('node:os');
  const child = spawn(process.execPath, [...missing, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, [RELAUNCHED]: '1' },
    detached: true,
  });
  let signals = 0;
  const forward = (sig: NodeJS.Signals) => void child.kill(++signals > 1 ? 'SIGKILL' : sig);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}

/**
 * Resolves once the `dynn serve` that restarted this server is gone, at once if it already is; never for a
 * server started directly.
 */
export function parentGone(): Promise<void> {
  return new Promise((resolve) => {
    if (!restartedServer) return;
    if (!process.connected) return resolve();
    process.once('disconnect', () => resolve());
    // The channel only watches the parent: it must not keep a finished server alive.
    process.channel?.unref();
  });
}
