import type { Io } from './io.js';

/** An Io that keeps what a command prints, for tests and for programs that run the CLI in-process. */
export function captureIo(): Io & { stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  return { out: (t) => void (out += t), err: (t) => void (err += t), errIsTTY: false, stdout: () => out, stderr: () => err };
}
