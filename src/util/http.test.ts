import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import type { FastifyInstance } from 'fastify';
import { createHttpApp, hostName, isLoopbackHost, listenHttp, HTTP_DEFAULTS, type HttpSafetyOptions } from './http.js';
import { DynnError } from './errors.js';
import { overLimit, request, slowClient } from './http-fixtures.js';
import { httpOptions } from '../cli/http-options.js';

async function app(safety: HttpSafetyOptions = {}): Promise<{ app: FastifyInstance; url: string }> {
  const a = createHttpApp({ logger: false }, safety);
  a.setErrorHandler((err, _req, reply) => reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ error: err instanceof Error ? err.message : String(err) }));
  a.get('/', async () => ({ ok: true }));
  return { app: a, url: await listenHttp(a, 0, '127.0.0.1') };
}

test('Host names are read as a browser sends them, and loopback ones recognised', () => {
  assert.equal(hostName('LocalHost:8080'), 'localhost');
  assert.equal(hostName('127.1'), '127.0.0.1');
  assert.equal(hostName('[0:0::1]:80'), '[::1]');
  assert.equal(hostName('example.com.'), 'example.com');
  for (const bad of ['evil.com@localhost', 'localhost/x', 'a b', '', 'localhost:port']) assert.equal(hostName(bad), null, bad);
  for (const h of ['localhost', 'app.localhost', '127.0.0.1', '127.9.8.7', '[::1]', '[::ffff:127.0.0.1]']) assert.ok(isLoopbackHost(hostName(h)!), h);
  for (const h of ['example.com', 'localhost.example.com', '10.0.0.1', '0.0.0.0', '[::]', '[::2]', '128.0.0.1']) assert.ok(!isLoopbackHost(hostName(h)!), h);
});

test('a request naming a host that is neither loopback, an address literal nor listed gets 403 with a clear message (DNS rebinding), whatever the bind', async () => {
  const { app: a, url } = await app();
  try {
    const port = new URL(url).port;
    // Twice: the second time the Hosts that passed are remembered ones, and the refused are refused again.
    for (let round = 0; round < 2; round++) {
      // An address literal cannot be rebound: a browser sends it only to that address.
      for (const host of [`localhost:${port}`, 'localhost', `127.0.0.1:${port}`, '127.0.0.2', `[::1]:${port}`, 'dash.localhost', '192.168.1.5', '[fe80::1]:8080']) {
        const r = await request(url, { host });
        assert.equal(r.status, 200, `${host}: ${r.body}`);
        assert.equal(r.headers['x-content-type-options'], 'nosniff');
      }
      for (const host of ['attacker.example', `attacker.example:${port}`, 'box.lan', 'localhost.attacker.example', 'x@localhost']) {
        const r = await request(url, { host });
        assert.equal(r.status, 403, host);
        assert.match(JSON.parse(r.body).error, /^Host ".*" is not allowed: this server answers only to localhost, 127\.0\.0\.1, \[::1\] \(a guard against DNS rebinding\)/, host);
      }
    }
    assert.match(JSON.parse((await request(url, { host: 'attacker.example:1' })).body).error, /start the server with --allowed-hosts attacker\.example$/);
    assert.equal((await request(url, { host: '' })).status, 403, 'an empty Host');
  } finally {
    await a.close();
  }
});

test('allowedHosts lets real deployments name their hosts; * allows any; bad entries are refused', async () => {
  const { app: a, url } = await app({ allowedHosts: ['dynn.example.com', '.corp.example'] });
  try {
    for (const host of ['dynn.example.com', 'DYNN.example.com:443', 'corp.example', 'a.b.corp.example', 'localhost']) assert.equal((await request(url, { host })).status, 200, host);
    for (const host of ['example.com', 'xcorp.example', 'dynn.example.com.evil']) assert.equal((await request(url, { host })).status, 403, host);
  } finally {
    await a.close();
  }
  const any = await app({ allowedHosts: ['*'] });
  assert.equal((await request(any.url, { host: 'anything.example' })).status, 200);
  await any.app.close();
  assert.throws(() => createHttpApp({}, { allowedHosts: ['a/b'] }), /allowed host "a\/b" is not a host name/);
  assert.throws(() => createHttpApp({}, { headersTimeoutMs: 5000, requestTimeoutMs: 1000 }), /headers timeout \(5000 ms\) must not exceed the request timeout/);
  assert.throws(() => createHttpApp({}, { maxConnections: 0 }), DynnError);
  assert.deepEqual(httpOptions({ allowedHosts: 'a.example, .b.example', maxConnections: '7', headersTimeoutMs: '100' }), { allowedHosts: ['a.example', '.b.example'], maxConnections: 7, headersTimeoutMs: 100 });
  assert.throws(() => httpOptions({ allowedHosts: true }), /--allowed-hosts needs a comma-separated list/);
  assert.throws(() => httpOptions({ requestTimeoutMs: 'soon' }), /--request-timeout-ms must be an integer >= 1/);
});

test('defaults bound the timeouts and the connections', async () => {
  const a = createHttpApp({ logger: false });
  assert.equal(a.server.headersTimeout, HTTP_DEFAULTS.headersTimeoutMs);
  assert.equal(a.server.requestTimeout, HTTP_DEFAULTS.requestTimeoutMs);
  assert.equal(a.server.keepAliveTimeout, HTTP_DEFAULTS.keepAliveTimeoutMs);
  assert.equal(a.server.timeout, HTTP_DEFAULTS.idleTimeoutMs);
  assert.equal(a.server.maxConnections, HTTP_DEFAULTS.maxConnections);
  await a.close();
});

test('a slowloris client is cut off at the headers timeout while others are served; extra connections are closed', async () => {
  const { app: a, url } = await app({ headersTimeoutMs: 300, requestTimeoutMs: 600, maxConnections: 4 });
  try {
    const slow = slowClient(url, { intervalMs: 40, maxMs: 8000 });
    // Meanwhile other clients are served.
    for (let i = 0; i < 3; i++) assert.equal((await request(url)).status, 200);
    const s = await slow;
    assert.ok(s.closedAfterMs !== null && s.closedAfterMs < 4000, `closed after ${s.closedAfterMs} ms, ${s.bytesSent} bytes`);
    assert.match(s.response, /^(HTTP\/1\.1 408 |$)/);
    const { held, extraClosed } = await overLimit(url, a.server, 4);
    assert.equal(held, 4);
    assert.ok(extraClosed, 'the connection over the bound was closed');
    assert.equal((await request(url)).status, 200, 'the server stays up');
  } finally {
    await a.close();
  }
});

test('a port in use and a host that does not resolve are DynnErrors that say what to do', async () => {
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as net.AddressInfo).port;
  try {
    const a = createHttpApp({ logger: false });
    await assert.rejects(listenHttp(a, port, '127.0.0.1'), (err: Error) => err instanceof DynnError && err.message === `port ${port} on 127.0.0.1 is in use; choose another with --port`);
    await a.close();
  } finally {
    busy.close();
  }
  const b = createHttpApp({ logger: false });
  await assert.rejects(listenHttp(b, 0, 'no.such.host.invalid'), (err: Error) => err instanceof DynnError && /cannot resolve the host "no\.such\.host\.invalid" to listen on; give an address of this machine with --host/.test(err.message));
  await b.close();
});
