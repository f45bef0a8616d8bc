/**
 * The error dynn throws for anything a user can cause: bad input, a missing file, a corrupt checkpoint.
 * The CLI prints its message without a stack trace; anything else is a bug and keeps its stack.
 */
export class DynnError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DynnError';
  }
}

/** A command stopped early, as a user asked (a signal): its message, and the exit code shells expect (128 + the signal's number). */
export class StoppedError extends DynnError {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'StoppedError';
  }
}
