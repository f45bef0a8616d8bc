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
  | 'unknown_session'
  | 'too_many_sessions'
  | 'session_busy'
  | 'no_temporal_controller'
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

/**
 * A 422 when a model's scores are not finite (JSON has no NaN or Infinity): values far outside the range the
 * model was trained on are the input's fault, so the client hears which sample, not a serializer's 500.
 */
export function nonFiniteScores(scores: Float32Array, numClasses: number): HttpError | null {
  const bad = scores.findIndex((s) => !Number.isFinite(s));
  if (bad < 0) return null;
  return new HttpError(
    422,
    'non_finite_output',
    `the model produced non-finite scores for sample ${Math.floor(bad / numClasses)} (class ${bad % numClasses} is ${scores[bad]}): its input values are likely far outside the range the model was trained on`,
  );
}
