import type { Command } from 'cac';
import type { HttpSafetyOptions } from '../util/http.js';
import { numberOption } from './io.js';
import { DynnError } from '../util/errors.js';

type Opts = Record<string, unknown>;

/** The HTTP safety flags of `dynn serve` and `dynn dashboard`: flag, cac option key, option field, help. */
const HTTP_FLAGS: [flag: string, key: string, field: Exclude<keyof HttpSafetyOptions, 'allowedHosts'>, help: string][] = [
  ['--max-connections <n>', 'maxConnections', 'maxConnections', 'most open connections; more are closed at once [default: 512]'],
  ['--headers-timeout-ms <ms>', 'headersTimeoutMs', 'headersTimeoutMs', 'most time to receive a request’s headers [default: 10000]'],
  ['--request-timeout-ms <ms>', 'requestTimeoutMs', 'requestTimeoutMs', 'most time to receive a whole request [default: 60000]'],
  ['--idle-timeout-ms <ms>', 'idleTimeoutMs', 'idleTimeoutMs', 'close a connection idle this long [default: 60000]'],
  ['--keep-alive-timeout-ms <ms>', 'keepAliveTimeoutMs', 'keepAliveTimeoutMs', 'how long a keep-alive connection waits for its next request [default: 5000]'],
];

/** Declares the HTTP safety flags on a command. */
export function httpFlags(command: Command): Command {
  command.option(
    '--allowed-hosts <list>',
    'host names besides localhost the server answers to, comma-separated (.example.com: its subdomains too; *: any) [default: loopback names only]',
  );
  for (const [flag, , , help] of HTTP_FLAGS) command.option(flag, help);
  return command;
}

/** Reads the HTTP safety flags (declared by `httpFlags`) into server options. */
export function httpOptions(o: Opts): HttpSafetyOptions {
  const out: HttpSafetyOptions = {};
  if (o.allowedHosts !== undefined) {
    const hosts = String(o.allowedHosts).split(',').map((h) => h.trim()).filter(Boolean);
    if (!hosts.length || typeof o.allowedHosts === 'boolean') throw new DynnError('--allowed-hosts needs a comma-separated list of host names');
    out.allowedHosts = hosts;
  }
  for (const [flag, key, field] of HTTP_FLAGS) {
    const name = flag.slice(2, flag.indexOf(' '));
    const v = numberOption(o[key], name, { int: true, min: 1 });
    if (v !== undefined) out[field] = v;
  }
  return out;
}
