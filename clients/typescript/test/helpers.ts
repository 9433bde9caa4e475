import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

import type { Fetch } from '../src/index.js';

export const PROBLEM = 'Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?';
export const EGGS = 'A box holds 6 eggs. How many eggs are in 4 boxes?';
export const SARA = 'Sara had 20 dollars and spent 8. How much money is left?';

/** Limits that keep a run long enough to abort or cut in the middle of it. */
export const LONG_RUN = { max_steps: 12, max_thought_tokens: 128, max_action_tokens: 128 };

/** A fetch that records every request it sends. */
export function countingFetch(): { fetch: Fetch; calls: { method: string; url: string; headers: Headers; at: number }[] } {
  const calls: { method: string; url: string; headers: Headers; at: number }[] = [];
  const fetchImpl: Fetch = (input, init) => {
    calls.push({ method: init?.method ?? 'GET', url: String(input), headers: new Headers(init?.headers), at: Date.now() });
    return fetch(input, init);
  };
  return { fetch: fetchImpl, calls };
}

export interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  at: number;
}

/** A local HTTP stand-in: `handle` answers each request; every request is recorded. */
export async function standIn(
  handle: (req: IncomingMessage, res: ServerResponse, seen: Seen[]) => void,
): Promise<{ url: string; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  const server: Server = createHttpServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, at: Date.now() });
    req.resume();
    req.on('end', () => handle(req, res, seen));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export function sse(event: string, data: unknown, id?: string): string {
  return `${id ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * A TCP proxy to `target` that cuts the first connection whose request starts with `cutPrefix`
 * right after it has passed on the first complete `step` event; every other connection is relayed
 * untouched. The server sees the client go away, exactly as when a network drops. It also records
 * which side closed each connection first (a `cutPrefix` that matches nothing: a plain relay).
 */
export async function cuttingProxy(target: string, cutPrefix: string) {
  const upstreamURL = new URL(target);
  const requests: string[] = [];
  /** Per connection: its request line, and which side closed it first (and when). */
  const connections: { request: string; closedBy?: 'client' | 'server'; closedAt?: number }[] = [];
  let cuts = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(upstreamURL.port), upstreamURL.hostname);
    sockets.add(client);
    sockets.add(upstream);
    let decided = false;
    let cut = false;
    let held = '';
    let severed = false;
    const record: (typeof connections)[number] = { request: '' };
    connections.push(record);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    const closedBy = (side: 'client' | 'server') => () => {
      if (!record.closedBy) Object.assign(record, { closedBy: side, closedAt: Date.now() });
      end();
    };
    client.on('error', closedBy('client'));
    upstream.on('error', closedBy('server'));
    client.on('close', closedBy('client'));
    upstream.on('close', closedBy('server'));
    client.on('end', closedBy('client'));
    upstream.on('end', closedBy('server'));
    client.on('data', (chunk: Buffer) => {
      if (!decided) {
        decided = true;
        const head = chunk.toString('latin1');
        record.request = head.split('\r\n')[0] ?? '';
        requests.push(record.request);
        cut = cuts === 0 && head.startsWith(cutPrefix);
        if (cut) cuts += 1;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!cut) {
        client.write(chunk);
        return;
      }
      if (severed) return;
      held += chunk.toString('latin1');
      const at = held.indexOf('event: step\n');
      const frameEnd = at < 0 ? -1 : held.indexOf('\n\n', at);
      if (frameEnd < 0) return;
      let upTo = frameEnd + 2;
      if (held.startsWith('\r\n', upTo)) upTo += 2; // the end of the HTTP chunk, if it came with it
      severed = true;
      Object.assign(record, { closedBy: 'server', closedAt: Date.now() }); // the "network" cut it
      client.write(Buffer.from(held.slice(0, upTo), 'latin1'), () => end());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    connections,
    get cuts() {
      return cuts;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => r());
      }),
  };
}
