/**
 * Both builds load under this Node (CI: Node 20) through the package's own `exports` map:
 * `require('srl-sdk')` gets dist/index.cjs and `import('srl-sdk')` dist/index.js, each with the
 * same exports and working classes. Needs `npm run build` first.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';

import { VERSION } from '../src/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const CHECK = `
  const client = new m.SRLClient({ baseURL: 'http://127.0.0.1:9' });
  const timeout = new m.APIConnectionTimeoutError();
  console.log(JSON.stringify({
    resolved: RESOLVED,
    exports: Object.keys(m).filter((k) => k !== 'default' && k !== 'module.exports').sort(),
    client: client instanceof m.SRLClient && client.baseURL === 'http://127.0.0.1:9' && typeof client.traces.get === 'function',
    errors: timeout instanceof m.APIConnectionError && timeout instanceof m.APIError && timeout instanceof Error
      && new m.AbortError().name === 'AbortError' && m.APIUserAbortError === m.AbortError,
    version: m.VERSION,
  }));
`;

function node(args: string[]) {
  const run = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8' });
  expect(run.status, run.stderr).toBe(0);
  return JSON.parse(run.stdout) as { resolved: string; exports: string[]; client: boolean; errors: boolean; version: string };
}

describe('the built package', () => {
  test('is built (npm run build)', () => {
    for (const file of ['index.js', 'index.cjs', 'index.d.ts', 'index.d.cts']) {
      expect(existsSync(join(ROOT, 'dist', file)), `dist/${file} is missing: run npm run build`).toBe(true);
    }
  });

  test('require() loads the CommonJS build and import loads the ESM build, with the same exports', () => {
    const cjs = node(['-e', `const m = require('srl-sdk'); const RESOLVED = require.resolve('srl-sdk');${CHECK}`]);
    const esm = node(['--input-type=module', '-e',
      `import * as m from 'srl-sdk'; import { fileURLToPath } from 'node:url'; const RESOLVED = fileURLToPath(import.meta.resolve('srl-sdk'));${CHECK}`]);
    expect(cjs.resolved).toBe(join(ROOT, 'dist', 'index.cjs'));
    expect(esm.resolved).toBe(join(ROOT, 'dist', 'index.js'));
    expect(cjs.exports).toEqual(esm.exports);
    expect(cjs.exports).toEqual(expect.arrayContaining(['SRLClient', 'ReasonStream', 'APIError', 'AbortError', 'STEP_FIELDS']));
    for (const result of [cjs, esm]) {
      expect(result.client).toBe(true);
      expect(result.errors).toBe(true);
      expect(result.version).toBe(VERSION);
    }
  });

  test('VERSION matches package.json', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(VERSION).toBe(pkg.version);
  });
});
