import net from 'node:net';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { DynnError } from './errors.js';

/**
 * Safety settings shared by dynn's HTTP servers (`dynn serve`, `dynn dashboard`): which Host names they
 * answer to, and how long and how many connections a client may hold.
 */
export interface HttpSafetyOptions {
  /**
   * Host names, besides the loopback ones, that requests may name in their Host header. `.example.com` also
   * allows its subdomains; `*` allows any. Unset: a request that reaches the server over a loopback address
   * must name a loopback host (`localhost`, `127.x.x.x`, `[::1]`), which defeats DNS rebinding.
   */
  allowedHosts?: string[];
  /** Most time to receive a request's headers, ms (default 10 000). */
  headersTimeoutMs?: number;
  /** Most time to receive a whole request, headers and body, ms (default 60 000). */
  requestTimeoutMs?: number;
  /** A connection with no traffic either way for this long is closed, ms (default 60 000). */
  idleTimeoutMs?: number;
  /** How long a keep-alive connection waits for its next request, ms (default 5000). */
  keepAliveTimeoutMs?: number;
  /** Most open connections; beyond it new ones are closed at once (default 512). */
  maxConnections?: number;
}

/** The defaults of `HttpSafetyOptions`. */
export const HTTP_DEFAULTS = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 512,
} as const;

/** A request whose Host header the server does not answer to (403). */
export class ForbiddenHostError extends DynnError {
  readonly statusCode = 403;
  constructor(message: string) {
    super(message);
    this.name = 'ForbiddenHostError';
  }
}

/** Host header characters; anything else (`@`, `/`, spaces) is refused before URL parsing can reinterpret it. */
const HOST_CHARS = /^[A-Za-z0-9._\-:[\]]+$/;

/**
 * The host name of a Host header, canonical as a browser sends it (lower case, IPv4 and IPv6 normalized,
 * no port, no trailing dot), or null when it is not a host.
 */
export function hostName(header: string): string | null {
  if (!HOST_CHARS.test(header)) return null;
  let name: string;
  try {
    name = new URL(`http://${header}`).hostname;
  } catch {
    return null;
  }
  return name.endsWith('.') ? name.slice(0, -1) : name;
}

/** Whether a canonical host name (from `hostName`) is a loopback name or address. */
export function isLoopbackHost(name: string): boolean {
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  if (name.startsWith('[')) return isLoopbackAddress(name.slice(1, -1));
  return isLoopbackAddress(name);
}

/** Whether a canonical host name is an IP address literal (`10.0.0.5`, `[fe80::1]`). */
function isAddressLiteral(name: string): boolean {
  return net.isIPv4(name) || (name.startsWith('[') && net.isIPv6(name.slice(1, -1)));
}

/** Whether an IP address (as sockets report it) is a loopback one. */
function isLoopbackAddress(address: string): boolean {
  const a = address.toLowerCase();
  if (net.isIPv4(a)) return a.startsWith('127.');
  if (a === '::1') return true;
  // IPv4-mapped: sockets write ::ffff:127.0.0.1, URL parsing ::ffff:7f00:1.
  if (a.startsWith('::ffff:') && net.isIPv4(a.slice(7))) return a.slice(7).startsWith('127.');
  const mapped = /^::ffff:([0-9a-f]{1,4}):[0-9a-f]{1,4}$/.exec(a);
  return mapped !== null && parseInt(mapped[1], 16) >> 8 === 0x7f;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const v = value ?? fallback;
  if (!(Number.isFinite(v) && v > 0)) throw new DynnError(`${name} must be a positive number, got ${value}`);
  return v;
}

/** The allow-list entries, canonical; a DynnError names an entry that is not a host name. */
function parseAllowedHosts(list: string[]): string[] {
  return list.map((entry) => {
    const e = entry.trim().toLowerCase();
    if (e === '*') return e;
    const name = hostName(e.startsWith('.') ? e.slice(1) : e);
    if (!name || e === '.') throw new DynnError(`allowed host ${JSON.stringify(entry)} is not a host name (e.g. example.com, .example.com for its subdomains, or *)`);
    return e.startsWith('.') ? `.${name}` : name;
  });
}

/**
 * A Fastify app with dynn's HTTP safety settings: timeouts against slow clients, a bound on connections,
 * `X-Content-Type-Options: nosniff`, and a Host check (a `ForbiddenHostError` thrown from an `onRequest` hook,
 * so each server's error handler answers it in its own format). Both servers make their app here.
 */
export function createHttpApp(fastifyOptions: FastifyServerOptions, safety: HttpSafetyOptions = {}): FastifyInstance {
  const headersTimeout = positive(safety.headersTimeoutMs, HTTP_DEFAULTS.headersTimeoutMs, 'the headers timeout');
  const requestTimeout = positive(safety.requestTimeoutMs, HTTP_DEFAULTS.requestTimeoutMs, 'the request timeout');
  const idle = positive(safety.idleTimeoutMs, HTTP_DEFAULTS.idleTimeoutMs, 'the idle timeout');
  const keepAlive = positive(safety.keepAliveTimeoutMs, HTTP_DEFAULTS.keepAliveTimeoutMs, 'the keep-alive timeout');
  const maxConnections = positive(safety.maxConnections, HTTP_DEFAULTS.maxConnections, 'the connection limit');
  if (!Number.isInteger(maxConnections)) throw new DynnError(`the connection limit must be an integer, got ${maxConnections}`);
  if (headersTimeout > requestTimeout) throw new DynnError(`the headers timeout (${headersTimeout} ms) must not exceed the request timeout (${requestTimeout} ms)`);
  const allowed = parseAllowedHosts(safety.allowedHosts ?? []);
  const app = Fastify({
    ...fastifyOptions,
    connectionTimeout: idle,
    keepAliveTimeout: keepAlive,
    requestTimeout,
    // Node checks the headers and request timeouts only every connectionsCheckingInterval (30 s by default).
    http: { headersTimeout, requestTimeout, connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeout / 4))) },
  });
  app.server.maxConnections = maxConnections;
  const anyHost = allowed.includes('*');
  const listed = (name: string) => allowed.some((a) => a === name || (a.startsWith('.') && (name === a.slice(1) || name.endsWith(a))));
  // A client sends the same Host on every request: the few headers that passed are remembered, not parsed again.
  const passed = new Set<string>();
  // A callback hook, not an async one: no promise per request.
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-content-type-options', 'nosniff');
    const header = request.headers.host;
    if (anyHost || (header !== undefined && passed.has(header))) return done();
    const name = header === undefined ? null : hostName(header);
    // DNS rebinding needs a name: a Host that is an address literal cannot be rebound, so it passes, on any
    // bind; a name must be a loopback one or listed, also on a server bound beyond loopback (0.0.0.0).
    if (name !== null && (isLoopbackHost(name) || isAddressLiteral(name) || listed(name))) {
      // Bounded: when full it starts over, so headers seen lately keep the fast path.
      if (passed.size >= 64) passed.clear();
      passed.add(header as string);
      return done();
    }
    const shown = header === undefined ? 'no Host header' : `Host ${JSON.stringify(header)}`;
    const hint = name ? `; to serve it under that name, start the server with --allowed-hosts ${name}` : '';
    done(
      new ForbiddenHostError(
        `${shown} is not allowed: this server answers only to ${['localhost', '127.0.0.1', '[::1]', ...allowed].join(', ')} (a guard against DNS rebinding)${hint}`,
      ),
    );
  });
  return app;
}

/** Listens, and turns the errors a user causes (port in use, unknown host, ...) into DynnErrors that say what to do. */
export async function listenHttp(app: FastifyInstance, port: number, host: string): Promise<string> {
  try {
    return await app.listen({ port, host });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const where = `port ${port} on ${host}`;
    if (code === 'EADDRINUSE') throw new DynnError(`${where} is in use; choose another with --port`, { cause: err });
    if (code === 'EACCES') throw new DynnError(`${where} needs privileges this process lacks; choose a port above 1023 with --port`, { cause: err });
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL' || code === 'EAI_NONAME') {
      throw new DynnError(`cannot resolve the host ${JSON.stringify(host)} to listen on; give an address of this machine with --host (e.g. 127.0.0.1)`, { cause: err });
    }
    if (code === 'EADDRNOTAVAIL') throw new DynnError(`${host} is not an address of this machine; choose another with --host (e.g. 127.0.0.1)`, { cause: err });
    throw err;
  }
}
