// Stream SRL steps from `srl serve` with the TypeScript client (the srl-sdk package in this folder).
//   cd clients/typescript && npm ci && npm run build
//   node examples/stream.mjs "Tom has 3 apples and buys 5 more. How many apples does he have?" [max_steps]
// SRL_BASE_URL (default http://127.0.0.1:8000) and SRL_API_KEY (if the server has keys) are read
// from the environment. Ctrl-C aborts: the connection closes and the server cancels the run.
import { APIError, SRLClient } from 'srl-sdk';

const [problem, maxSteps = '4'] = process.argv.slice(2);
if (!problem) {
  console.error('usage: node examples/stream.mjs "problem text" [max_steps]');
  process.exit(2);
}

const client = new SRLClient(); // baseURL and apiKey from the environment
const stream = client.reason({ problem, limits: { max_steps: Number(maxSteps) } });
process.once('SIGINT', () => stream.abort());

try {
  for await (const step of stream) {
    const checks = step.checks.map((c) => `${c.claim} ${c.passed === false ? '✗' : '✓'}`).join(', ');
    console.log(`Step ${step.index}: ${step.action}${checks ? `   [${checks}]` : ''}`);
    if (step.thought) console.log(`  (thought) ${step.thought.replace(/\n/g, ' ')}`);
  }
  const trace = await stream.done;
  console.log(`Answer: ${trace.answer ?? '(none)'}  [${trace.finish_reason}, trace ${trace.id}]`);
  if (stream.resumes > 0) console.log(`(the connection dropped and was resumed ${stream.resumes} time(s))`);
} catch (error) {
  if (error instanceof APIError) {
    console.error(`${error.name}: ${error.message}${stream.traceId ? ` (trace ${stream.traceId})` : ''}`);
    process.exit(1);
  }
  throw error;
}
