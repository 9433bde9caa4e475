/**
 * Retries, timeouts, stream breaks and resume against local stand-in HTTP servers that answer
 * exactly what each case needs (429/503 with retry headers, a stream cut after two steps, ...).
 */
import { afterEach, describe, expect, test } from 'vitest';

import {
  AbortError,
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError,
  SRLClient,
  UnprocessableEntityError,
  type Step,
  type Trace,
} from '../src/index.js';
import { retryDelayMs } from '../src/core.js';
import { countingFetch, sse, standIn } from './helpers.js';

const TID = 'a'.repeat(32);
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

async function server(handle: Parameters<typeof standIn>[0]) {
  const stand = await standIn(handle);
  closers.push(stand.close);
  return stand;
}

function step(index: number): Step {
  return {
    index, thought: `thinking ${index}`, action: `action ${index}`, format_ok: true, is_final: index === 3,
    answer: index === 3 ? '72' : null, source: 'model', tokens: 5, confidence: null, latency_s: 0.1, checks: [],
  };
}

function trace(steps: Step[]): Trace {
  return {
    id: TID, problem: 'p', steps, answer: '72', finish_reason: 'final_answer', mode: 'stepwise', model: 'm',
    engine: 'e', created_at: '2025-01-01T00:00:00Z', duration_s: 1, usage: {}, request: {}, meta: {},
  };
}

const errorBody = (type: string, message: string, code: number) => JSON.stringify({ error: { type, message, code } });

describe('retries before the response starts', () => {
  test('429 with retry-after-ms is retried at most maxRetries times, waiting as told', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after-ms': '200' });
      res.end(errorBody('rate_limited', 'slow down', 429));
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 2 });
    const error = await client.reason({ problem: 'p' }).done.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RateLimitError);
    expect((error as APIError).status).toBe(429);
    expect((error as APIError).type).toBe('rate_limited');
    expect((error as APIError).headers?.get('retry-after-ms')).toBe('200');
    expect(stand.seen).toHaveLength(3);
    for (let i = 1; i < stand.seen.length; i++) {
      expect(stand.seen[i]!.at - stand.seen[i - 1]!.at).toBeGreaterThanOrEqual(190);
      expect(stand.seen[i]!.at - stand.seen[i - 1]!.at).toBeLessThan(2000);
    }
  });

  test('503 with retry-after (seconds) is honoured, then the stream goes through', async () => {
    const stand = await server((_req, res) => {
      if (stand.seen.length === 1) {
        res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
        res.end(errorBody('overloaded', 'busy', 503));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(sse('step', step(1), `${TID}:1`) + sse('done', trace([step(1)]), `${TID}:end`));
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 1 });
    const stream = client.reason({ problem: 'p' });
    const steps: Step[] = [];
    for await (const s of stream) steps.push(s);
    expect(steps).toEqual([step(1)]);
    expect((await stream.done).id).toBe(TID);
    expect(stand.seen).toHaveLength(2);
    expect(stand.seen.every((s) => s.method === 'POST' && s.url === '/v1/reason')).toBe(true);
    expect(stand.seen[1]!.at - stand.seen[0]!.at).toBeGreaterThanOrEqual(990);
  });

  test('503 on every attempt: maxRetries retries, then InternalServerError', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after-ms': '10' });
      res.end(errorBody('overloaded', 'busy', 503));
    });
    for (const maxRetries of [0, 1, 3]) {
      const before = stand.seen.length;
      const client = new SRLClient({ baseURL: stand.url, maxRetries });
      const error = await client.reasonSync({ problem: 'p' }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InternalServerError);
      expect((error as APIError).status).toBe(503);
      expect(stand.seen.length - before).toBe(maxRetries + 1);
    }
  });

  test('retry-after-ms wins over retry-after', async () => {
    const stand = await server((_req, res) => {
      if (stand.seen.length === 1) {
        res.writeHead(429, { 'retry-after-ms': '100', 'retry-after': '30' });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [], limit: 50, offset: 0 }));
    });
    const client = new SRLClient({ baseURL: stand.url });
    const list = await client.traces.list();
    expect(list.data).toEqual([]);
    const gap = stand.seen[1]!.at - stand.seen[0]!.at;
    expect(gap).toBeGreaterThanOrEqual(95);
    expect(gap).toBeLessThan(5000);
  });

  test.each([408, 409, 500, 502, 504])('%i is retried', async (status) => {
    const stand = await server((_req, res) => {
      res.writeHead(status, { 'retry-after-ms': '0' });
      res.end();
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 2 });
    await expect(client.traces.get(TID)).rejects.toBeInstanceOf(APIError);
    expect(stand.seen).toHaveLength(3);
  });

  test.each([
    [400, BadRequestError],
    [401, AuthenticationError],
    [404, NotFoundError],
    [413, APIError],
    [422, UnprocessableEntityError],
  ])('%i is never retried', async (status, Class) => {
    const stand = await server((_req, res) => {
      res.writeHead(status, { 'content-type': 'application/json', 'retry-after-ms': '0' });
      res.end(status === 401 ? JSON.stringify({ detail: 'missing API key' }) : errorBody('bad', 'no', status));
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 3 });
    const error = await client.reason({ problem: 'p' }).done.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Class);
    expect((error as APIError).status).toBe(status);
    expect((error as APIError).message).toMatch(status === 401 ? /missing API key/ : /bad: no/);
    expect(stand.seen).toHaveLength(1);
  });

  test('x-should-retry overrides the status', async () => {
    const stand = await server((_req, res) => {
      const retry = stand.seen.length === 1 ? 'true' : 'false';
      res.writeHead(stand.seen.length === 1 ? 400 : 503, { 'x-should-retry': retry, 'retry-after-ms': '0' });
      res.end();
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 5 });
    await expect(client.traces.get(TID)).rejects.toBeInstanceOf(InternalServerError);
    expect(stand.seen).toHaveLength(2);
  });

  test('connection errors are retried, then APIConnectionError', async () => {
    const stand = await server(() => {});
    const closedURL = stand.url;
    await closers.pop()!(); // nothing listens there any more
    const { fetch, calls } = countingFetch();
    const client = new SRLClient({ baseURL: closedURL, maxRetries: 2, fetch });
    const error = await client.reason({ problem: 'p' }).done.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIConnectionError);
    expect(error).not.toBeInstanceOf(APIConnectionTimeoutError);
    expect((error as APIError).status).toBeUndefined();
    expect(calls).toHaveLength(3);
  });

  test('a server that never answers times out per attempt: APIConnectionTimeoutError', async () => {
    const stand = await server(() => {}); // never responds
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 1, timeout: 300 });
    const started = Date.now();
    const error = await client.traces.get(TID).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIConnectionTimeoutError);
    expect(stand.seen).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  test('aborting during the wait before a retry stops at once with AbortError', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(503, { 'retry-after': '30' }); // 30 s: honoured (under 60 s)
      res.end();
    });
    const controller = new AbortController();
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 2 });
    const started = Date.now();
    const pending = client.reasonSync({ problem: 'p' }, { signal: controller.signal }).catch((e: unknown) => e);
    setTimeout(() => controller.abort(), 200);
    const error = await pending;
    expect(error).toBeInstanceOf(AbortError);
    expect((error as Error).name).toBe('AbortError');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(stand.seen).toHaveLength(1);
  });

  test('the default backoff grows exponentially with up to 25 % jitter, capped at 8 s', () => {
    for (let i = 0; i < 50; i++) {
      const first = retryDelayMs(undefined, 5, 5);
      const third = retryDelayMs(undefined, 3, 5);
      const late = retryDelayMs(undefined, 0, 10);
      expect(first).toBeGreaterThan(375);
      expect(first).toBeLessThanOrEqual(500);
      expect(third).toBeGreaterThan(1500);
      expect(third).toBeLessThanOrEqual(2000);
      expect(late).toBeLessThanOrEqual(8000);
    }
    // a retry-after beyond 60 s is not trusted: the default applies
    expect(retryDelayMs(new Headers({ 'retry-after': '3600' }), 2, 2)).toBeLessThanOrEqual(500);
    expect(retryDelayMs(new Headers({ 'retry-after-ms': '250' }), 2, 2)).toBe(250);
    const date = new Date(Date.now() + 2000).toUTCString();
    expect(retryDelayMs(new Headers({ 'retry-after': date }), 2, 2)).toBeGreaterThan(500);
  });
});

describe('after the response has started', () => {
  test('a stream that breaks before its first event resumes from step 0 when the server named the trace', async () => {
    const stand = await server((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'x-srl-trace-id': TID });
      if (req.method === 'POST') {
        res.write(': warming up\n\n');
        setTimeout(() => res.socket?.destroy(), 50);
      } else {
        res.end(sse('step', step(1), `${TID}:1`) + sse('done', trace([step(1)]), `${TID}:end`));
      }
    });
    const stream = new SRLClient({ baseURL: stand.url }).reason({ problem: 'p' });
    expect((await stream.done).id).toBe(TID);
    expect(stream.steps.map((s) => s.index)).toEqual([1]);
    expect(stand.seen.map((s) => `${s.method} ${s.url}`)).toEqual(['POST /v1/reason', `GET /v1/traces/${TID}/events`]);
    expect(stand.seen[1]!.headers['last-event-id']).toBe(`${TID}:0`);
  });

  test('without a trace id, a stream that breaks before its first event is not sent again', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(': warming up\n\n');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 3 });
    const error = await client.reason({ problem: 'p' }).done.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIConnectionError);
    expect(stand.seen).toHaveLength(1);
  });

  test('a break after some steps resumes from the last step: none repeated, none missing', async () => {
    const stand = await server((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (req.method === 'POST') {
        res.write(sse('step', step(1), `${TID}:1`));
        res.write(sse('token', { step_index: 2, phase: 'thought', text: 'x', logprob: null }, `${TID}:1`));
        res.write(sse('step', step(2), `${TID}:2`));
        res.write('id: half-sent\nevent: st'); // a message cut in the middle is dropped
        setTimeout(() => res.socket?.destroy(), 50);
      } else {
        // the server replays from the Last-Event-ID it got; send step 2 again to prove it is dropped
        res.end(sse('step', step(2), `${TID}:2`) + sse('step', step(3), `${TID}:3`)
          + sse('done', trace([step(1), step(2), step(3)]), `${TID}:end`));
      }
    });
    const client = new SRLClient({ baseURL: stand.url });
    const stream = client.reason({ problem: 'p', tokens: true });
    const steps: Step[] = [];
    for await (const s of stream) steps.push(s);
    expect(steps.map((s) => s.index)).toEqual([1, 2, 3]);
    expect(stream.resumes).toBe(1);
    expect((await stream.done).steps).toHaveLength(3);
    expect(stand.seen.map((s) => `${s.method} ${s.url}`)).toEqual(['POST /v1/reason', `GET /v1/traces/${TID}/events`]);
    expect(stand.seen[1]!.headers['last-event-id']).toBe(`${TID}:2`);
    expect(stand.seen[1]!.headers['accept']).toBe('text/event-stream');
  });

  test('a stream that goes silent longer than timeout is resumed, and gives up after maxRetries silent tries', async () => {
    const stand = await server((req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (req.method === 'POST') res.write(sse('step', step(1), `${TID}:1`));
      // then silence
    });
    const client = new SRLClient({ baseURL: stand.url, timeout: 300, maxRetries: 1 });
    const stream = client.reason({ problem: 'p' });
    const steps: Step[] = [];
    const error = await (async () => {
      for await (const s of stream) steps.push(s);
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIConnectionTimeoutError);
    expect(steps.map((s) => s.index)).toEqual([1]);
    expect(stand.seen.map((s) => s.method)).toEqual(['POST', 'GET', 'GET']);
  });

  test('an error event ends the stream with a typed error and is not retried', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(sse('step', step(1), `${TID}:1`)
        + sse('error', { type: 'EngineError', message: 'the engine died', status: 500 }, `${TID}:end`));
    });
    const client = new SRLClient({ baseURL: stand.url, maxRetries: 3 });
    const stream = client.reason({ problem: 'p' });
    const steps: Step[] = [];
    const error = await (async () => {
      for await (const s of stream) steps.push(s);
    })().catch((e: unknown) => e);
    expect(steps).toHaveLength(1);
    expect(error).toBeInstanceOf(InternalServerError);
    expect((error as APIError).type).toBe('EngineError');
    expect((error as APIError).message).toMatch(/the engine died/);
    await expect(stream.done).rejects.toBe(error);
    expect(stand.seen).toHaveLength(1);
  });

  test('an event whose data is not JSON is an APIError, not a crash or a retry', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`id: ${TID}:1\nevent: step\ndata: {not json\n\n`);
    });
    const error = await new SRLClient({ baseURL: stand.url }).reason({ problem: 'p' }).done.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(APIError);
    expect((error as APIError).message).toMatch(/step event whose data is not a JSON object: \{not json/);
    expect(stand.seen).toHaveLength(1);
  });

  test('apiKey and default headers are sent; an aborted signal sends nothing', async () => {
    const stand = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(trace([step(1)])));
    });
    const client = new SRLClient({ baseURL: `${stand.url}/`, apiKey: 'k'.repeat(16), defaultHeaders: { 'x-team': 'a' } });
    const got = await client.reasonSync({ problem: 'p' });
    expect(got.id).toBe(TID);
    expect(stand.seen[0]!.headers['authorization']).toBe(`Bearer ${'k'.repeat(16)}`);
    expect(stand.seen[0]!.headers['x-team']).toBe('a');
    expect(stand.seen[0]!.headers['content-type']).toBe('application/json');
    const aborted = AbortSignal.abort();
    await expect(client.reason({ problem: 'p' }, { signal: aborted }).done).rejects.toBeInstanceOf(AbortError);
    expect(stand.seen).toHaveLength(1);
  });
});
