import { DynnError } from '../util/errors.js';

/** The kinds of error the server answers with (the `error` field of the JSON body and the metrics label). */
export type ErrorKind =
  | 'invalid_input'
  | 'invalid_json'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'not_found'
  | 'forbidden_host'
  | 'non_finite_output'
  | 'overloaded'
  | 'shutting_down'
  | 'internal';

/** A request the server refuses, with its HTTP status and kind; the message goes to the client. */
export class HttpError extends DynnError {
  constructor(
    readonly statusCode: number,
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/** A 400 for input that does not fit the model or the API. */
export function invalidInput(message: string): HttpError {
  return new HttpError(400, 'invalid_input', message);
}
