/**
 * Typed errors, shaped like openai-node's and @anthropic-ai/sdk's so code written for them reads
 * the same here:
 *
 *   SRLError
 *   └─ APIError                      status, type, error (the server's JSON error), headers
 *      ├─ BadRequestError            400 (malformed JSON, bad Last-Event-ID)
 *      ├─ AuthenticationError        401
 *      ├─ PermissionDeniedError      403
 *      ├─ NotFoundError              404 (unknown trace or model)
 *      ├─ ConflictError              409
 *      ├─ UnprocessableEntityError   422 (the body failed validation)
 *      ├─ RateLimitError             429
 *      ├─ InternalServerError        >= 500
 *      ├─ APIConnectionError         no response (refused, reset, cut mid-stream beyond resume)
 *      │  └─ APIConnectionTimeoutError
 *      └─ AbortError                 the caller aborted (signal, stream.abort(), leaving the loop)
 *
 * The server answers errors as `{"error": {"type", "message", "code"}}`; an `error` event in a
 * stream carries `{"type", "message", "status"}`; both become the same APIError subclasses.
 */

export class SRLError extends Error {
  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SRLError';
  }
}

/** The server's error object: `{"type", "message", "code"}` (HTTP) or `{"type", "message", "status"}` (event). */
export interface ServerError {
  type?: string;
  message?: string;
  code?: number | string;
  status?: number;
  [key: string]: unknown;
}

export class APIError extends SRLError {
  /** HTTP status of the response (or of the stream's `error` event); undefined without a response. */
  readonly status: number | undefined;
  /** The server's error type, e.g. `invalid_request`, `trace_not_found`, `timeout`. */
  readonly type: string | undefined;
  /** The server's error object (the `error` member of the JSON body, or the whole body). */
  readonly error: ServerError | undefined;
  /** Headers of the response that caused the error. */
  readonly headers: Headers | undefined;

  constructor(
    status: number | undefined,
    error: ServerError | undefined,
    message: string | undefined,
    headers: Headers | undefined,
    options?: { cause?: unknown },
  ) {
    super(APIError.makeMessage(status, error, message), options);
    this.name = 'APIError';
    this.status = status;
    this.error = error;
    this.type = typeof error?.type === 'string' ? error.type : undefined;
    this.headers = headers;
  }

  private static makeMessage(status: number | undefined, error: ServerError | undefined, message: string | undefined) {
    const detail = typeof error?.message === 'string' ? error.message : message;
    const text = error?.type && detail ? `${error.type}: ${detail}` : detail;
    if (status && text) return `${status} ${text}`;
    if (status) return `${status} status code (no body)`;
    return text || '(no status code or body)';
  }

  /**
   * The subclass for `status`. `body` is the parsed JSON body: the server's `{"error": {...}}`,
   * FastAPI's `{"detail": "..."}` (401 from the key check), or the error object itself.
   */
  static generate(status: number, body: unknown, text: string | undefined, headers: Headers | undefined): APIError {
    const error = toServerError(body, text);
    const Class =
      status === 400 ? BadRequestError
      : status === 401 ? AuthenticationError
      : status === 403 ? PermissionDeniedError
      : status === 404 ? NotFoundError
      : status === 409 ? ConflictError
      : status === 422 ? UnprocessableEntityError
      : status === 429 ? RateLimitError
      : status >= 500 ? InternalServerError
      : APIError;
    return new Class(status, error, text, headers);
  }
}

function toServerError(body: unknown, text: string | undefined): ServerError | undefined {
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    const record = body as Record<string, unknown>;
    const inner = record['error'];
    if (inner && typeof inner === 'object' && !Array.isArray(inner)) return inner as ServerError;
    if (typeof inner === 'string') return { message: inner };
    const detail = record['detail'];
    if (typeof detail === 'string') return { message: detail };
    if (detail !== undefined) return { message: JSON.stringify(detail) };
    return record as ServerError;
  }
  return text ? { message: text } : undefined;
}

export class BadRequestError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'BadRequestError';
  }
}

export class AuthenticationError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'AuthenticationError';
  }
}

export class PermissionDeniedError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'PermissionDeniedError';
  }
}

export class NotFoundError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'ConflictError';
  }
}

export class UnprocessableEntityError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'UnprocessableEntityError';
  }
}

export class RateLimitError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'RateLimitError';
  }
}

export class InternalServerError extends APIError {
  constructor(...args: ConstructorParameters<typeof APIError>) {
    super(...args);
    this.name = 'InternalServerError';
  }
}

/** No usable response: the server could not be reached, or the connection broke and could not be resumed. */
export class APIConnectionError extends APIError {
  constructor({ message, cause }: { message?: string; cause?: unknown } = {}) {
    super(undefined, undefined, message || 'Connection error.', undefined, cause === undefined ? undefined : { cause });
    this.name = 'APIConnectionError';
  }
}

/** The server sent nothing for `timeout` ms (before the response, or between two chunks of a stream). */
export class APIConnectionTimeoutError extends APIConnectionError {
  constructor({ message, cause }: { message?: string; cause?: unknown } = {}) {
    super({ message: message ?? 'Request timed out.', cause });
    this.name = 'APIConnectionTimeoutError';
  }
}

/**
 * The caller gave up: `signal` aborted, `stream.abort()`, or the `for await` loop was left early.
 * Its `name` is `"AbortError"`, like the DOMException fetch throws, so `err.name === 'AbortError'`
 * checks keep working.
 */
export class AbortError extends APIError {
  constructor({ message, cause }: { message?: string; cause?: unknown } = {}) {
    super(undefined, undefined, message || 'Request was aborted.', undefined, cause === undefined ? undefined : { cause });
    this.name = 'AbortError';
  }
}

/** openai-node's name for {@link AbortError}. */
export { AbortError as APIUserAbortError };
