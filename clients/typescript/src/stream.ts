/**
 * ReasonStream: one `POST /v1/reason` run, read as Server-Sent Events.
 *
 * Event ids are `<trace_id>:<n>` with n the index of the last step the client holds (`:end` on
 * `done` / `error`). If the connection breaks after the first event, the stream reconnects to
 * `GET /v1/traces/{id}/events` with `Last-Event-ID: <trace_id>:<last step index>`; the server
 * replays the stored steps after it and follows the run to its end. Steps at or below the last
 * index already delivered are dropped, so the caller sees every step exactly once, in order.
 * The trace id comes from the `X-SRL-Trace-Id` response header (or, from servers without it, the
 * first event id); without one a break cannot be resumed and, the response having started, is
 * not retried: it is an APIConnectionError.
 *
 * The request starts when the stream is created and events are buffered, so `await stream.done`
 * works without iterating. Leaving a `for await` loop early, `stream.abort()` or the caller's
 * `signal` closes the connection, which makes the server cancel the run.
 */

import { createParser, type EventSourceMessage } from 'eventsource-parser';

import {
  AbortError,
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  type ServerError,
} from './errors.js';
import { describe, retryDelayMs, safeJSON, send, sleep, type FinalRequest, type RequestOptions, type Transport } from './core.js';
import type { ReasonEvent, ReasonParams, Step, TokenDelta, Trace } from './types.js';

/** Sent by the server with the response headers, before any event (servers that predate it send none). */
const TRACE_ID_HEADER = 'x-srl-trace-id';

/** How long the best-effort cancel request after an abort may take. */
const CANCEL_TIMEOUT_MS = 5_000;

type QueueItem = { event: ReasonEvent } | { end: true } | { error: unknown };

/** A single-consumer async queue of events. */
class EventQueue {
  private items: QueueItem[] = [];
  private waiting: ((item: QueueItem) => void) | undefined;
  private closed = false;

  /** End the queue with `error` now, dropping events not read yet (an abort). */
  fail(error: unknown): void {
    if (this.closed) return;
    this.items.length = 0;
    this.push({ error });
  }

  push(item: QueueItem): void {
    if (this.closed) return;
    if ('end' in item || 'error' in item) this.closed = true;
    const waiting = this.waiting;
    if (waiting) {
      this.waiting = undefined;
      waiting(item);
    } else {
      this.items.push(item);
    }
  }

  next(): Promise<QueueItem> {
    const item = this.items.shift();
    if (item) {
      // an end / error stays at the head so every later read sees it too
      if (!('event' in item)) this.items.unshift(item);
      return Promise.resolve(item);
    }
    return new Promise((resolve) => {
      this.waiting = (received) => {
        if (!('event' in received)) this.items.unshift(received);
        resolve(received);
      };
    });
  }
}

export class ReasonStream implements AsyncIterable<Step> {
  /** Resolves to the whole trace when the run ends; rejects with the error that ended the stream. */
  readonly done: Promise<Trace>;

  readonly #transport: Transport;
  readonly #options: RequestOptions;
  readonly #controller = new AbortController();
  readonly #queue = new EventQueue();
  readonly #steps: Step[] = [];
  #traceId: string | undefined;
  #lastEventId: string | undefined;
  #lastStep = 0;
  #finished = false;
  #iterating = false;
  #resumes = 0;
  #abortError: AbortError | undefined;

  constructor(transport: Transport, params: ReasonParams, options: RequestOptions = {}) {
    this.#transport = transport;
    this.#options = options;
    const signal = options.signal;
    let detach = () => {};
    if (signal) {
      if (signal.aborted) this.#controller.abort(signal.reason);
      const onAbort = () => this.abort(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.done = this.#run({ ...params, stream: true });
    this.done.then(detach, detach);
    this.done.catch(() => {}); // a caller that only iterates must not get an unhandled rejection
  }

  /** The trace id: from the response's `X-SRL-Trace-Id` header, else the first event (`undefined` before). */
  get traceId(): string | undefined {
    return this.#traceId;
  }

  /** The id of the last event received: what a reconnect sends as `Last-Event-ID`. */
  get lastEventId(): string | undefined {
    return this.#lastEventId;
  }

  /** The steps received so far, in order. */
  get steps(): readonly Step[] {
    return this.#steps;
  }

  /** How many times the stream reconnected after its connection broke. */
  get resumes(): number {
    return this.#resumes;
  }

  /**
   * Close the connection; the server then cancels the run and stores it as `cancelled`.
   * Iteration and `done` reject with AbortError. Does nothing once the run has ended.
   */
  abort(reason?: unknown): void {
    if (this.#finished || this.#controller.signal.aborted) return;
    this.#controller.abort(reason);
    this.#abortError = reason instanceof AbortError ? reason : new AbortError({ cause: reason });
    this.#queue.fail(this.#abortError);
    this.#requestCancel();
  }

  /** Every event: `step`, `token` (when the request set `tokens: true`) and finally `done`. */
  events(): AsyncIterableIterator<ReasonEvent> {
    this.#claim();
    return this.#iterate((event) => event);
  }

  /** The steps, in order; the loop ends after the last one (then `await stream.done` for the trace). */
  [Symbol.asyncIterator](): AsyncIterator<Step> {
    this.#claim();
    return this.#iterate((event) => (event.type === 'step' ? event.step : undefined));
  }

  #claim(): void {
    if (this.#iterating) throw new Error('a ReasonStream can be iterated once (use either the stream itself or events())');
    this.#iterating = true;
  }

  #iterate<T>(pick: (event: ReasonEvent) => T | undefined): AsyncIterableIterator<T> {
    const queue = this.#queue;
    const iterator: AsyncIterableIterator<T> = {
      next: async (): Promise<IteratorResult<T>> => {
        for (;;) {
          const item = await queue.next();
          if ('error' in item) throw item.error;
          if ('end' in item) return { done: true, value: undefined };
          const value = pick(item.event);
          if (value !== undefined) return { done: false, value };
        }
      },
      return: async (): Promise<IteratorResult<T>> => {
        this.abort(new AbortError({ message: 'the stream was left before its end' }));
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  async #run(body: ReasonParams & { stream: true }): Promise<Trace> {
    try {
      const trace = await this.#pump(body);
      this.#finished = true;
      this.#queue.push({ end: true });
      return trace;
    } catch (err) {
      const error = this.#controller.signal.aborted ? this.#abortError ?? new AbortError({ cause: err }) : err;
      this.#finished = true;
      this.#queue.push({ error });
      throw error;
    }
  }

  async #pump(body: ReasonParams & { stream: true }): Promise<Trace> {
    const maxRetries = Math.max(0, Math.floor(this.#options.maxRetries ?? this.#transport.maxRetries));
    const idleMs = this.#options.timeout ?? this.#transport.timeout;
    let req: FinalRequest = {
      method: 'POST',
      path: '/v1/reason',
      body,
      headers: { accept: 'text/event-stream', ...this.#options.headers },
      signal: this.#controller.signal,
      timeout: this.#options.timeout,
      maxRetries,
    };
    let failures = 0; // broken connections in a row that brought no new event

    for (;;) {
      const { response, controller, release } = await send(this.#transport, req);
      this.#traceId ??= response.headers.get(TRACE_ID_HEADER)?.trim() || undefined;
      let progressed = false;
      let broken: APIError;
      try {
        for await (const message of readEvents(response, controller, idleMs)) {
          progressed = this.#onId(message.id) || progressed;
          const data = message.data ? safeJSON(message.data) : undefined;
          if (['step', 'token', 'done'].includes(message.event ?? '') && (data === null || typeof data !== 'object')) {
            throw new APIError(undefined, undefined, `the server sent a ${message.event} event whose data is not a JSON object: `
              + message.data.slice(0, 200), undefined);
          }
          if (message.event === 'step') {
            const step = data as Step;
            if (step.index <= this.#lastStep) continue; // a replayed step the caller already has
            this.#lastStep = step.index;
            this.#steps.push(step);
            progressed = true;
            this.#queue.push({ event: { type: 'step', step } });
          } else if (message.event === 'token') {
            const token = data as TokenDelta;
            if (token.step_index <= this.#lastStep) continue;
            this.#queue.push({ event: { type: 'token', token } });
          } else if (message.event === 'done') {
            const trace = data as Trace;
            this.#traceId ??= trace.id;
            this.#finished = true;
            this.#queue.push({ event: { type: 'done', trace } });
            return trace;
          } else if (message.event === 'error') {
            const error = (data && typeof data === 'object' ? data : { message: message.data }) as ServerError;
            const status = Number(error.status ?? 500) || 500;
            throw APIError.generate(status, error, `the run failed: ${error.message ?? message.data}`, undefined);
          }
        }
        broken = new APIConnectionError({ message: 'the stream ended before its done event' });
      } catch (err) {
        if (this.#controller.signal.aborted) throw new AbortError({ cause: err });
        if (!(err instanceof APIConnectionError)) throw err;
        broken = err;
      } finally {
        release();
      }

      if (this.#traceId === undefined) throw broken; // no trace id (no header, no event): nothing to resume
      failures = progressed ? 0 : failures + 1;
      if (failures > maxRetries) throw broken;
      if (failures > 0) await sleep(retryDelayMs(undefined, maxRetries - failures + 1, maxRetries), this.#controller.signal);
      this.#resumes += 1;
      req = {
        method: 'GET',
        path: `/v1/traces/${encodeURIComponent(this.#traceId)}/events`,
        headers: { accept: 'text/event-stream', ...this.#options.headers, 'last-event-id': `${this.#traceId}:${this.#lastStep}` },
        signal: this.#controller.signal,
        timeout: this.#options.timeout,
        maxRetries,
      };
    }
  }

  /** Record an event id; true if it is new. */
  #onId(id: string | undefined): boolean {
    if (!id) return false;
    const colon = id.lastIndexOf(':');
    if (colon > 0) this.#traceId ??= id.slice(0, colon);
    const isNew = id !== this.#lastEventId;
    this.#lastEventId = id;
    return isNew;
  }

  /**
   * Tell the server to stop the run now. Closing the connection already does this on servers that
   * cancel on disconnect; a server that keeps a disconnected run alive for a resume grace period
   * needs the explicit request. Best effort: no retries, errors (404/405 from servers without the
   * route) are ignored.
   */
  #requestCancel(): void {
    const traceId = this.#traceId;
    if (traceId === undefined) return;
    send(this.#transport, {
      method: 'POST',
      path: `/v1/traces/${encodeURIComponent(traceId)}/cancel`,
      headers: { ...this.#options.headers },
      timeout: CANCEL_TIMEOUT_MS,
      maxRetries: 0,
    }).then(
      ({ response, release }) => {
        release();
        return response.body?.cancel();
      },
      () => {},
    ).catch(() => {});
  }
}

/**
 * The SSE messages of a response body. Each read waits at most `idleMs`; a longer silence aborts
 * the connection and throws APIConnectionTimeoutError. A broken connection throws APIConnectionError.
 */
async function* readEvents(response: Response, controller: AbortController, idleMs: number): AsyncGenerator<EventSourceMessage> {
  if (!response.body) throw new APIConnectionError({ message: 'the response has no body' });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const pending: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (message) => pending.push(message) });
  let ended = false;
  let timedOut = false;
  try {
    for (;;) {
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new Error('timed out'));
      }, idleMs);
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (timedOut) throw new APIConnectionTimeoutError({ message: `no data for ${idleMs} ms`, cause: err });
        throw new APIConnectionError({ message: `the stream broke (${describe(err)})`, cause: err });
      } finally {
        clearTimeout(timer);
      }
      if (chunk.done) {
        ended = true; // a message without its closing blank line is incomplete: it is dropped
        return;
      }
      parser.feed(decoder.decode(chunk.value, { stream: true }));
      while (pending.length > 0) yield pending.shift()!;
    }
  } finally {
    if (!ended) {
      controller.abort();
      reader.cancel().catch(() => {});
    }
  }
}
