// Stream SRL steps from `srl serve` in Node 18+ (fetch + ReadableStream, no dependencies).
//   node clients/reason_client.mjs "Tom has 3 apples and buys 5 more. How many apples does he have?"
// SRL_URL (default http://127.0.0.1:8000) and SRL_API_KEY are read from the environment.

const url = process.env.SRL_URL ?? "http://127.0.0.1:8000";
const problem = process.argv[2];
if (!problem) {
  console.error('usage: node reason_client.mjs "problem text" [max_steps]');
  process.exit(2);
}
const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
if (process.env.SRL_API_KEY) headers.Authorization = `Bearer ${process.env.SRL_API_KEY}`;

/** Yield {event, id, data} for each Server-Sent Event of a fetch response body. */
async function* readEvents(body) {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: "message", id: null, data: "" };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue; // comments and blank lines
        const field = line.slice(0, colon);
        const value = line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") message.event = value;
        else if (field === "id") message.id = value;
        else if (field === "data") message.data += (message.data ? "\n" : "") + value;
      }
      yield message;
    }
  }
}

const response = await fetch(`${url}/v1/reason`, {
  method: "POST",
  headers,
  body: JSON.stringify({ problem, limits: { max_steps: Number(process.argv[3] ?? 4) } }),
});
if (!response.ok) {
  const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
  console.error(`HTTP ${response.status}: ${error.error?.message}`);
  process.exit(1);
}
let lastId = null; // send it back as Last-Event-ID to resume if the connection drops
for await (const { event, id, data } of readEvents(response.body)) {
  lastId = id ?? lastId;
  const payload = JSON.parse(data);
  if (event === "step") {
    console.log(`Step ${payload.index}: ${payload.action}`);
    if (payload.thought) console.log(`  (thought) ${payload.thought.replace(/\n/g, " ")}`);
  } else if (event === "done") {
    console.log(`Answer: ${payload.answer ?? "(none)"}  [${payload.finish_reason}, trace ${payload.id}]`);
  } else if (event === "error") {
    console.error(`error: ${payload.type}: ${payload.message} (last event ${lastId})`);
    process.exit(1);
  }
}
