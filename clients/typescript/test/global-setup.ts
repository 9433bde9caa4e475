/**
 * Starts one real `srl serve` (SmolLM2 on llama.cpp) on 127.0.0.1 for the whole test run, with a
 * throwaway config and trace store, and stops it with SIGTERM afterwards.
 *
 * The Python comes from $SRL_PYTHON, default ../../.venv/bin/python (the repository's venv), and
 * runs `python -m srl_sdk.cli serve`, as srl_sdk/serving/process.py does. Readiness is awaited by
 * polling /health (bounded), never by sleeping a guessed amount.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    srlURL: string;
    srlPython: string;
    srlStore: string;
  }
}

const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const START_TIMEOUT_MS = 300_000;
const STOP_TIMEOUT_MS = 30_000;

// Small caps keep each request to seconds on a CPU; requests lower them further.
const CONFIG = (store: string) => `\
host: 127.0.0.1
model: smollm2
engine: llama.cpp
engine_options: {n_ctx: 1024, n_threads: 1}
store: ${JSON.stringify(store)}
log_level: warning
limits:
  max_steps: 16
  max_step_tokens: 128
  max_total_tokens: 4096
  default_timeout_s: 120
reason:
  max_steps: 2
  max_thought_tokens: 24
  max_action_tokens: 24
  temperature: 0.0
`;

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((done) => {
    const timer = setTimeout(() => done(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      done(true);
    });
  });
}

export default async function setup(project: TestProject) {
  const given = process.env.SRL_PYTHON?.trim() || '../../.venv/bin/python';
  const python = given.includes('/') ? resolve(PACKAGE_ROOT, given) : given; // a bare name is looked up on PATH
  const dir = mkdtempSync(join(tmpdir(), 'srl-ts-client-'));
  const store = join(dir, 'traces.db');
  const config = join(dir, 'server.yaml');
  const logPath = join(dir, 'server.log');
  writeFileSync(config, CONFIG(store));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const log = openSync(logPath, 'a');
  const child = spawn(python, ['-m', 'srl_sdk.cli', 'serve', '--config', config, '--port', String(port)], {
    detached: true, // its own process group: stopping it reaches every worker it starts
    stdio: ['ignore', log, log],
    env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE', SRL_HOME: dir },
  });
  closeSync(log);
  const spawnError = new Promise<Error>((done) => child.once('error', done));

  const tail = () => {
    try {
      return readFileSync(logPath, 'utf8').slice(-3000);
    } catch {
      return '(no log)';
    }
  };

  const stop = async () => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      return; // already gone
    }
    if (!(await exited(child, STOP_TIMEOUT_MS))) {
      console.error(`srl serve did not stop on SIGTERM within ${STOP_TIMEOUT_MS} ms; killing its group`);
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    }
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const failed = await Promise.race([spawnError, new Promise<undefined>((r) => setTimeout(r, 250))]);
    if (failed) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`cannot run ${python} (${failed.message}); set SRL_PYTHON to the Python that has srl-sdk installed`);
    }
    if (child.exitCode !== null) {
      const log = tail();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`srl serve exited with code ${child.exitCode} while starting; log:\n${log}`);
    }
    try {
      const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      if (response.status === 200) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await stop();
      const log = tail();
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`srl serve did not become healthy within ${START_TIMEOUT_MS / 1000} s; log:\n${log}`);
    }
  }

  project.provide('srlURL', url);
  project.provide('srlPython', python);
  project.provide('srlStore', store);

  return async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  };
}
