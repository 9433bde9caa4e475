/**
 * Sending one request, with the retry policy of openai-node and @anthropic-ai/sdk:
 * - retried: connection errors and timeouts, 408, 409, 429 and 5xx (an `x-should-retry: true|false`
 *   header overrides this); never any other 4xx;
 * - only before the response has started: once headers have arrived, nothing is sent again
 *   (a broken stream is *resumed* by the stream, not retried);
 * - the wait is `retry-after-ms`, else `retry-after` (seconds or an HTTP date), when it is between
 *   0 and 60 s; otherwise exponential backoff (0.5 s doubling, at most 8 s) minus up to 25 % jitter;
 * - at most `maxRetries` retries (so `maxRetries + 1` attempts).
 */

import {
  AbortError,
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
} from './errors.js';

export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

export interface RequestOptions {
  /** Aborts the request (and a stream: the server then cancels the run). */
  signal?: AbortSignal | undefined;
  /** Milliseconds; overrides the client's `timeout` for this call. */
  timeout?: number | undefined;
  /** Overrides the client's `maxRetries` for this call. */
  maxRetries?: number | undefined;
  /** Extra headers for this call. */
  headers?: Record<string, string> | undefined;
}

export interface FinalRequest extends RequestOptions {
  method: 'GET' | 'POST';
  path: string;
  query?: Record<string, string | number | undefined> | undefined;
  body?: unknown;
}

/** What the client hands the request machinery. */
export interface Transport {
  baseURL: string;
  timeout: number;
  maxRetries: number;
  fetch: Fetch;
  headers(): Record<string, string>;
}

/** A response whose headers have arrived. `controller` aborts reading its body. */
export interface Sent {
  response: Response;
  controller: AbortController;
  /** Detach from the caller's signal once the body has been read. */
  release(): void;
}

const INITIAL_RETRY_DELAY_S = 0.5;
const MAX_RETRY_DELAY_S = 8.0;
const MAX_RETRY_AFTER_MS = 60_000;

export function buildURL(baseURL: string, path: string, query?: FinalRequest['query']): string {
  const url = new URL(baseURL.replace(/\/+$/, '') + path);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined) url.searchParams.set(key, String(value));
  }
  return url.toString();
}

export function shouldRetry(response: Response): boolean {
  const header = response.headers.get('x-should-retry');
  if (header === 'true') return true;
  if (header === 'false') return false;
  const status = response.status;
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

/** The wait before retry number `maxRetries - retriesRemaining + 1`, in milliseconds. */
export function retryDelayMs(headers: Headers | undefined, retriesRemaining: number, maxRetries: number): number {
  let ms: number | undefined;
  const afterMs = headers?.get('retry-after-ms');
  if (afterMs) {
    const value = parseFloat(afterMs);
    if (!Number.isNaN(value)) ms = value;
  }
  const after = headers?.get('retry-after');
  if (after && ms === undefined) {
    const seconds = parseFloat(after);
    ms = Number.isNaN(seconds) ? Date.parse(after) - Date.now() : seconds * 1000;
  }
  if (ms !== undefined && !Number.isNaN(ms) && ms >= 0 && ms < MAX_RETRY_AFTER_MS) return ms;
  const retriesDone = maxRetries - retriesRemaining;
  const seconds = Math.min(INITIAL_RETRY_DELAY_S * 2 ** retriesDone, MAX_RETRY_DELAY_S);
  const jitter = 1 - Math.random() * 0.25;
  return seconds * jitter * 1000;
}

/** setTimeout as a promise; rejects with AbortError if `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortError());
    const onAbort = () => {
      clearTimeout(timer);
      reject(new AbortError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function safeJSON(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isTimeoutError(err: unknown): boolean {
  const cause = err && typeof err === 'object' && 'cause' in err ? String((err as { cause: unknown }).cause) : '';
  return /timed? ?out/i.test(String(err) + cause);
}

/**
 * Send `req` until it gets a 2xx (returned, body unread) or an error that is not retried (thrown).
 * The per-attempt timeout covers the wait for the response headers.
 */
export async function send(transport: Transport, req: FinalRequest): Promise<Sent> {
  const maxRetries = Math.max(0, Math.floor(req.maxRetries ?? transport.maxRetries));
  const timeout = req.timeout ?? transport.timeout;
  const url = buildURL(transport.baseURL, req.path, req.query);
  const headers: Record<string, string> = { ...transport.headers(), ...req.headers };
  let body: string | undefined;
  if (req.body !== undefined) {
    body = JSON.stringify(req.body);
    headers['content-type'] = 'application/json';
  }
  let retriesRemaining = maxRetries;
  const signal = req.signal;

  for (;;) {
    if (signal?.aborted) throw new AbortError({ cause: signal.reason });
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const release = () => signal?.removeEventListener('abort', onAbort);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error('timed out'));
    }, timeout);

    let response: Response;
    try {
      response = await transport.fetch.call(undefined, url, {
        method: req.method,
        headers,
        ...(body !== undefined ? { body } : {}),
        signal: controller.signal,
      });
    } catch (err) {
      release();
      if (signal?.aborted) throw new AbortError({ cause: err });
      const isTimeout = timedOut || isTimeoutError(err);
      if (retriesRemaining > 0) {
        await sleep(retryDelayMs(undefined, retriesRemaining, maxRetries), signal);
        retriesRemaining -= 1;
        continue;
      }
      if (isTimeout) throw new APIConnectionTimeoutError({ cause: err });
      throw new APIConnectionError({ message: `Connection error: cannot reach ${url} (${describe(err)})`, cause: err });
    } finally {
      clearTimeout(timer);
    }

    if (response.ok) return { response, controller, release };

    if (retriesRemaining > 0 && shouldRetry(response)) {
      await response.body?.cancel().catch(() => {});
      release();
      await sleep(retryDelayMs(response.headers, retriesRemaining, maxRetries), signal);
      retriesRemaining -= 1;
      continue;
    }
    let text: string | undefined;
    try {
      text = await response.text();
    } catch (err) {
      if (signal?.aborted) throw new AbortError({ cause: err });
      text = undefined;
    } finally {
      release();
    }
    throw APIError.generate(response.status, text === undefined ? undefined : safeJSON(text), text, response.headers);
  }
}

/** Send `req` and parse the JSON body of its 2xx answer. */
export async function sendJSON<T>(transport: Transport, req: FinalRequest): Promise<T> {
  const { response, release } = await send(transport, { ...req, headers: { accept: 'application/json', ...req.headers } });
  try {
    const text = await response.text();
    const data = safeJSON(text);
    if (data === undefined) {
      throw new APIError(response.status, undefined, `the server answered ${response.status} with a body that is not JSON`,
        response.headers);
    }
    return data as T;
  } catch (err) {
    if (err instanceof APIError) throw err;
    if (req.signal?.aborted) throw new AbortError({ cause: err });
    throw new APIConnectionError({ message: `the connection broke while reading the response (${describe(err)})`, cause: err });
  } finally {
    release();
  }
}

export function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const causeText = cause instanceof Error ? `: ${cause.message}` : '';
    return `${err.message}${causeText}`;
  }
  return String(err);
}
