/**
 * The TypeScript types name the same fields as the Python models they mirror (read from the
 * Python that runs the test server, so a field added in Python fails here until it is added in
 * src/types.ts), and the rows the live server lists have exactly those fields.
 */
import { spawnSync } from 'node:child_process';
import { expect, inject, test } from 'vitest';

import {
  CHECK_RESULT_FIELDS,
  CONFIDENCE_FIELDS,
  FINISH_REASONS,
  SRLClient,
  STEP_FIELDS,
  TRACE_FIELDS,
  TRACE_SUMMARY_FIELDS,
} from '../src/index.js';

const SCRIPT = `
import json, typing
from srl_sdk.core.steps import CheckResult, Confidence, FinishReason, Step, Trace
from srl_sdk.store import TraceSummary
models = {"Step": Step, "Trace": Trace, "CheckResult": CheckResult, "Confidence": Confidence, "TraceSummary": TraceSummary}
out = {name: list(model.model_fields) for name, model in models.items()}
out["FinishReason"] = list(typing.get_args(FinishReason))
print(json.dumps(out))
`;

test('the types have the Python models\u2019 fields', () => {
  const run = spawnSync(inject('srlPython'), ['-c', SCRIPT], { encoding: 'utf8' });
  expect(run.status, run.stderr).toBe(0);
  const python = JSON.parse(run.stdout) as Record<string, string[]>;
  expect([...STEP_FIELDS]).toEqual(python['Step']);
  expect([...TRACE_FIELDS]).toEqual(python['Trace']);
  expect([...CHECK_RESULT_FIELDS]).toEqual(python['CheckResult']);
  expect([...CONFIDENCE_FIELDS]).toEqual(python['Confidence']);
  expect([...TRACE_SUMMARY_FIELDS]).toEqual(python['TraceSummary']);
  expect([...FINISH_REASONS]).toEqual(python['FinishReason']);
});

test('what the server sends has exactly those fields', async () => {
  const client = new SRLClient({ baseURL: inject('srlURL') });
  const trace = await client.reasonSync({ problem: 'What is 2 + 3?', limits: { max_steps: 1, max_thought_tokens: 8, max_action_tokens: 8 } });
  expect(Object.keys(trace).sort()).toEqual([...TRACE_FIELDS].sort());
  for (const step of trace.steps) expect(Object.keys(step).sort()).toEqual([...STEP_FIELDS].sort());
  expect(FINISH_REASONS).toContain(trace.finish_reason);
  const list = await client.traces.list({ limit: 1 });
  expect(list.data).toHaveLength(1);
  expect(Object.keys(list.data[0]!).sort()).toEqual([...TRACE_SUMMARY_FIELDS].sort());
});
