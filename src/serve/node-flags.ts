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

/** Set in the restarted server's environment: it never restarts again. */
const RELAUNCHED = 'DYNN_SERVE_RELAUNCHED';

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
 * For `dynn serve` started without its node flags: runs the same command again in a child node with them,
 * forwards SIGINT, SIGTERM and SIGHUP to it, and resolves with its exit code (128 + the signal's number if a
 * signal ended it). The child has its own process group, so a terminal's Ctrl-C reaches it once, through this
 * process (a second one still ends it at once), and it shuts down when this process dies (its IPC channel
 * closes; see {@link parentGone}). Resolves with null where nothing is missing or this is the restarted child.
 */
export async function relaunchWithServeFlags(): Promise<number | null> {
  const missing = missingServeFlags(process.execArgv, process.env.NODE_OPTIONS);
  if (missing.length === 0 || process.env[RELAUNCHED] !== undefined) return null;
  const { spawn } = await import('node:child_process');
  const { constants } = await import('node:os');
  const child = spawn(process.execPath, [...missing, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    detached: process.platform !== 'win32', // on Windows it would open a console of its own
    env: { ...process.env, [RELAUNCHED]: '1' },
  });
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const forward = (sig: NodeJS.Signals) => void child.kill(sig);
  for (const sig of signals) process.on(sig, forward);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      for (const sig of signals) process.off(sig, forward);
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}

/** Resolves once the process that restarted this server is gone (never, for a server started directly). */
export function parentGone(): Promise<void> {
  return new Promise((resolve) => {
    if (process.env[RELAUNCHED] === undefined || !process.connected) return;
    process.once('disconnect', () => resolve());
    // The channel only watches the parent: it must not keep a finished server alive.
    process.channel?.unref();
  });
}
