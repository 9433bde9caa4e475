/** examples/stream.mjs (the package's example, built package) against the test server. */
import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, inject, test } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, ['examples/stream.mjs', ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => done({ code, out, err }));
  });
}

test('the example streams steps and prints the answer', async () => {
  const { code, out, err } = await run(['Tom has 3 apples and buys 5 more. How many apples does he have?', '2'],
    { SRL_BASE_URL: inject('srlURL') });
  expect(code, err).toBe(0);
  expect(out).toMatch(/^Step 1: /m);
  expect(out).toMatch(/^Answer: .*\[[a-z_]+, trace [0-9a-f]{32}\]$/m);
});

test('the example reports a server error and exits 1', async () => {
  const { code, err } = await run(['What is 2 + 3?', '999'], { SRL_BASE_URL: inject('srlURL') });
  expect(code).toBe(1);
  expect(err).toMatch(/UnprocessableEntityError: 422 invalid_request: .*max_steps/);
});
