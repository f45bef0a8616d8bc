import type { FastifyError } from 'fastify';
import { DynnError } from '../util/errors.js';
import { ForbiddenHostError } from '../util/http.js';

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

/** The 503 for a request that comes while the server shuts down. */
export function shuttingDown(): HttpError {
  return new HttpError(503, 'shutting_down', 'the server is shutting down');
}

/** A 400 for input that does not fit the model or the API. */
export function invalidInput(message: string): HttpError {
  return new HttpError(400, 'invalid_input', message);
}

/**
 * A 422 when a model's scores (`count` rows of `classes`) are not all finite, else null. JSON has no NaN or
 * Infinity: scores that overflowed are the input's fault (values far outside the range the model was trained on),
 * so the client hears which sample, not a serializer's 500.
 */
export function nonFiniteScores(scores: ArrayLike<number>, classes: number): HttpError | null {
  let bad = -1;
  for (let i = 0; i < scores.length; i++) {
    if (!Number.isFinite(scores[i])) {
      bad = i;
      break;
    }
  }
  if (bad < 0) return null;
  return new HttpError(
    422,
    'non_finite_output',
    `the model produced non-finite scores for sample ${Math.floor(bad / classes)} (class ${bad % classes} is ${scores[bad]}): its input values are likely far outside the range the model was trained on`,
  );
}

/** Fastify's own errors, by code: status and kind. */
const FASTIFY_ERRORS: Record<string, [number, ErrorKind]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'payload_too_large'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_input'],
};

/** Maps any error to the status, kind and message the client gets; `accepts` names the bodies a 415 asks for. */
export function classify(err: FastifyError | Error, accepts: string): { status: number; kind: ErrorKind; message: string } {
  if (err instanceof HttpError) return { status: err.statusCode, kind: err.kind, message: err.message };
  if (err instanceof ForbiddenHostError) return { status: 403, kind: 'forbidden_host', message: err.message };
  const code = (err as FastifyError).code;
  const known = code ? FASTIFY_ERRORS[code] : undefined;
  if (known) {
    // Fastify's parser refuses prototype-poisoning keys with the same error as broken JSON: say both.
    const message =
      known[1] === 'unsupported_media_type'
        ? `${err.message}; send ${accepts}`
        : code === 'FST_ERR_CTP_INVALID_JSON_BODY'
          ? 'the body is not valid JSON, or it has a "__proto__" key or a "constructor" key holding "prototype" (refused)'
          : err.message;
    return { status: known[0], kind: known[1], message };
  }
  const status = (err as FastifyError).statusCode;
  if (err instanceof SyntaxError && status === 400) return { status, kind: 'invalid_json', message: `the body is not valid JSON: ${err.message}` };
  if (status !== undefined && status >= 400 && status < 500) return { status, kind: 'invalid_input', message: err.message };
  if (err instanceof DynnError) return { status: 400, kind: 'invalid_input', message: err.message };
  return { status: 500, kind: 'internal', message: 'internal error' };
}
