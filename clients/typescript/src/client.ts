import { sendJSON, type Fetch, type RequestOptions, type Transport } from './core.js';
import { SRLError } from './errors.js';
import { ReasonStream } from './stream.js';
import type { ReasonParams, Trace, TraceList } from './types.js';

export interface ClientOptions {
  /** Where `srl serve` listens. Default: `$SRL_BASE_URL`, else `$SRL_URL`, else `http://127.0.0.1:8000`. */
  baseURL?: string | undefined;
  /** Sent as `Authorization: Bearer <key>` when the server has keys. Default: `$SRL_API_KEY`. */
  apiKey?: string | null | undefined;
  /**
   * Milliseconds to wait for a response's headers and, while a stream is open, for its next chunk.
   * Default 10 minutes (a CPU server can take a while per step). Timeouts are retried like
   * connection errors.
   */
  timeout?: number | undefined;
  /** Retries of a request that failed before its response started (default 2). */
  maxRetries?: number | undefined;
  /** A `fetch` implementation (default: the global one). */
  fetch?: Fetch | undefined;
  /** Headers sent with every request. */
  defaultHeaders?: Record<string, string> | undefined;
}

export const DEFAULT_BASE_URL = 'http://127.0.0.1:8000';
export const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;
export const DEFAULT_MAX_RETRIES = 2;

function readEnv(name: string): string | undefined {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  const value = env?.[name]?.trim();
  return value ? value : undefined;
}

/** `GET /v1/traces/{id}` and `GET /v1/traces`: the server's trace store. */
export class Traces {
  readonly #transport: Transport;

  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /** One stored trace: request, steps, checks, timings, how it ended (`finish_reason` null while running). */
  get(id: string, options: RequestOptions = {}): Promise<Trace> {
    return sendJSON<Trace>(this.#transport, { ...options, method: 'GET', path: `/v1/traces/${encodeURIComponent(id)}` });
  }

  /** Stored traces, newest first (`limit` 1..1000, default 50). */
  list(params: { limit?: number; offset?: number } = {}, options: RequestOptions = {}): Promise<TraceList> {
    return sendJSON<TraceList>(this.#transport, {
      ...options,
      method: 'GET',
      path: '/v1/traces',
      query: { limit: params.limit, offset: params.offset },
    });
  }
}

/**
 * A client of `srl serve`.
 *
 * ```ts
 * const client = new SRLClient({ baseURL: 'http://127.0.0.1:8000' });
 * const stream = client.reason({ problem: 'Tom has 3 apples and buys 4 more. How many does he have?' });
 * for await (const step of stream) console.log(step.index, step.action);
 * const trace = await stream.done;
 * ```
 */
export class SRLClient {
  readonly baseURL: string;
  readonly timeout: number;
  readonly maxRetries: number;
  readonly traces: Traces;
  readonly #apiKey: string | null;
  readonly #transport: Transport;

  constructor(options: ClientOptions = {}) {
    const baseURL = options.baseURL ?? readEnv('SRL_BASE_URL') ?? readEnv('SRL_URL') ?? DEFAULT_BASE_URL;
    try {
      new URL(baseURL);
    } catch {
      throw new SRLError(`baseURL ${JSON.stringify(baseURL)} is not a URL; pass e.g. "http://127.0.0.1:8000"`);
    }
    const timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    if (!(timeout > 0)) throw new SRLError(`timeout must be a positive number of milliseconds, not ${timeout}`);
    const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!(Number.isInteger(maxRetries) && maxRetries >= 0)) {
      throw new SRLError(`maxRetries must be a whole number >= 0, not ${maxRetries}`);
    }
    const fetchImpl = options.fetch ?? (globalThis as { fetch?: Fetch }).fetch;
    if (!fetchImpl) throw new SRLError('no fetch: run on Node 20+ or pass `fetch` in the options');

    this.baseURL = baseURL.replace(/\/+$/, '');
    this.timeout = timeout;
    this.maxRetries = maxRetries;
    this.#apiKey = options.apiKey === undefined ? readEnv('SRL_API_KEY') ?? null : options.apiKey;
    const defaultHeaders = { ...options.defaultHeaders };
    const apiKey = this.#apiKey;
    this.#transport = {
      baseURL: this.baseURL,
      timeout,
      maxRetries,
      fetch: fetchImpl,
      headers: () => ({
        ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
        ...defaultHeaders,
      }),
    };
    this.traces = new Traces(this.#transport);
  }

  /**
   * Start a run and stream its steps (`POST /v1/reason`). Iterate the returned stream for typed
   * steps; `stream.done` resolves to the whole trace. A connection that breaks after the first
   * event is resumed with `Last-Event-ID`; leaving the loop or aborting cancels the run.
   */
  reason(params: ReasonParams, options: RequestOptions = {}): ReasonStream {
    return new ReasonStream(this.#transport, params, options);
  }

  /** Run to the end and return the trace (`POST /v1/reason` with `stream: false`). */
  reasonSync(params: ReasonParams, options: RequestOptions = {}): Promise<Trace> {
    return sendJSON<Trace>(this.#transport, {
      ...options,
      method: 'POST',
      path: '/v1/reason',
      body: { ...params, stream: false },
    });
  }
}
