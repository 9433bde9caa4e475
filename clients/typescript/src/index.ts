export { SRLClient, Traces, DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS, type ClientOptions } from './client.js';
export { ReasonStream } from './stream.js';
export type { Fetch, RequestOptions } from './core.js';
export {
  SRLError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  RateLimitError,
  InternalServerError,
  APIConnectionError,
  APIConnectionTimeoutError,
  AbortError,
  APIUserAbortError,
  type ServerError,
} from './errors.js';
export {
  STEP_FIELDS,
  TRACE_FIELDS,
  CHECK_RESULT_FIELDS,
  CONFIDENCE_FIELDS,
  FINISH_REASONS,
  TRACE_SUMMARY_FIELDS,
  type CheckResult,
  type Confidence,
  type FinishReason,
  type ReasonEvent,
  type ReasonParams,
  type Step,
  type TokenDelta,
  type Trace,
  type TraceList,
  type TraceSummary,
} from './types.js';
export { VERSION } from './version.js';
