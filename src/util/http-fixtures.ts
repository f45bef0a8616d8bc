/** Test helpers for dynn's HTTP servers, over real loopback connections. */
import http from 'node:http';
import net from 'node:net';

/** A request with its own Host header (fetch cannot set one) on a fresh connection closed after it. */
export function request(url: string, o: { path?: string; host?: string; method?: string } = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port, path: o.path ?? '/', method: o.method ?? 'GET', agent: false, setHost: o.host === undefined, headers: { connection: 'close', ...(o.host !== undefined ? { host: o.host } : {}) } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function connect(url: string): Promise<net.Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port) }, () => resolve(s));
    s.once('error', reject);
  });
}

/**
 * A slowloris client: sends a request's headers one byte every `intervalMs` and never finishes them.
 * Resolves when the server closes the connection, or after `maxMs` (then `closedAfterMs` is null).
 */
export async function slowClient(url: string, o: { intervalMs: number; maxMs: number }): Promise<{ closedAfterMs: number | null; response: string; bytesSent: number }> {
  const socket = await connect(url);
  const text = `GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ${'a'.repeat(Math.ceil(o.maxMs / o.intervalMs) + 10)}`;
  const start = performance.now();
  let response = '';
  let sent = 0;
  socket.setEncoding('utf8');
  socket.on('data', (d) => (response += d));
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  let open = true;
  void closed.then(() => (open = false));
  while (open && performance.now() - start < o.maxMs) {
    socket.write(text[sent++]);
    await Promise.race([closed, new Promise((r) => setTimeout(r, o.intervalMs))]);
  }
  const closedAfterMs = open ? null : performance.now() - start;
  socket.destroy();
  return { closedAfterMs, response, bytesSent: sent };
}

/** Polls `server`'s connection count until `want` holds, for at most `maxMs`; returns the last count. */
export async function connectionsBecome(server: net.Server, want: (n: number) => boolean, maxMs = 5000): Promise<number> {
  const count = () => new Promise<number>((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
  const start = performance.now();
  let n = await count();
  while (!want(n) && performance.now() - start < maxMs) {
    await new Promise((r) => setTimeout(r, 20));
    n = await count();
  }
  return n;
}

/**
 * Opens `hold` idle connections (all accepted), then one more, and reports whether the server closed that one
 * within `maxMs`; the held connections are closed before it resolves.
 */
export async function overLimit(url: string, server: net.Server, hold: number, maxMs = 3000): Promise<{ held: number; extraClosed: boolean }> {
  const sockets: net.Socket[] = [];
  // Connections of earlier requests still closing would count against the bound.
  await connectionsBecome(server, (n) => n === 0);
  try {
    for (let i = 0; i < hold; i++) {
      const s = await connect(url);
      s.on('error', () => {});
      sockets.push(s);
    }
    const held = await connectionsBecome(server, (n) => n >= hold);
    const extra = await connect(url).catch(() => null);
    if (!extra) return { held, extraClosed: true };
    extra.on('error', () => {});
    sockets.push(extra);
    const extraClosed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), maxMs);
      extra.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    return { held, extraClosed };
  } finally {
    for (const s of sockets) s.destroy();
    await connectionsBecome(server, (n) => n === 0);
  }
}
