// The trace viewer of `srl serve` (served at /ui/). Plain ES module, no dependencies.
//
// Every string shown comes from a model or a user, so text only ever reaches the page through
// textContent (never parsed as markup), and styles are set from script (the page's CSP forbids inline
// style attributes). Data calls go to this server's API with the key kept in sessionStorage.
// Live steps are read from SSE through fetch (EventSource cannot send Authorization).

const PAGE = Math.min(100, Math.max(1, Number(new URLSearchParams(location.search).get("page_size")) || 20));
const KEY_NAME = "srl-api-key";
const FINISH_REASONS = ["final_answer", "max_steps", "repeated_step", "length", "stop", "cancelled",
  "timeout", "error", "interrupted", "running"];
const MAX_RECONNECTS = 5;

const view = document.getElementById("view");
let leaving = new AbortController(); // aborted when the user leaves the current view
let pendingRun = null; // {id, response}: a run the Run form started, handed to the trace view
const listState = { offset: 0, finish: "", history: [] };

// -- small helpers ---------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "on") for (const [kind, fn] of Object.entries(value)) node.addEventListener(kind, fn);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso ?? "") : d.toLocaleString();
}

function short(text, n) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length > n ? flat.slice(0, n - 1) + "…" : flat;
}

function showNotice(text) {
  const notice = document.getElementById("notice");
  notice.textContent = text ?? "";
  notice.hidden = !text;
}

// -- API calls, with the key --------------------------------------------------------------------
class KeyNeeded extends Error {}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_NAME);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body?.error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function call(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new KeyNeeded(await errorText(response));
  return response;
}

async function callJson(path, options) {
  const response = await call(path, options);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

function askForKey(message) {
  const panel = document.getElementById("key-panel");
  const hadKey = sessionStorage.getItem(KEY_NAME) !== null;
  document.getElementById("key-error").textContent = hadKey ? `The server refused this key: ${message}` : "";
  panel.hidden = false;
  view.replaceChildren(el("p", { class: "muted", text: "Waiting for an API key…" }));
  document.getElementById("key-input").focus();
}

function setupKeyForm() {
  const form = document.getElementById("key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_NAME, key);
    input.value = "";
    document.getElementById("key-panel").hidden = true;
    route();
  });
  const forget = document.getElementById("forget-key");
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    route();
  });
}

function refreshKeyButton() {
  document.getElementById("forget-key").hidden = sessionStorage.getItem(KEY_NAME) === null;
}

// -- SSE through fetch ------------------------------------------------------------------------
async function* sseEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const message = { id: null, event: "message", data: "" };
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "id") message.id = value;
          else if (field === "event") message.event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) message.data = JSON.parse(data.join("\n"));
        yield message;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Follow a trace's events to its end; `first` is an already-open response (the Run form's POST).
async function follow(traceId, lastIndex, signal, onEvent, first = null) {
  let lastId = `${traceId}:${lastIndex}`;
  let response = first;
  for (let attempt = 0; attempt <= MAX_RECONNECTS && !signal.aborted; attempt++) {
    try {
      if (response === null) {
        response = await call(`/v1/traces/${encodeURIComponent(traceId)}/events`,
          { headers: { "Last-Event-ID": lastId }, signal });
      }
      if (!response.ok) {
        const refused = new Error(await errorText(response));
        refused.final = response.status < 500; // a 4xx will not change by asking again
        throw refused;
      }
      for await (const message of sseEvents(response.body, signal)) {
        if (message.id) lastId = message.id;
        onEvent(message);
        if (message.event === "done" || message.event === "error") return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof KeyNeeded || error.final || attempt === MAX_RECONNECTS) throw error;
    }
    response = null;
    if (!signal.aborted) await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
  }
}

// -- list view --------------------------------------------------------------------------------
async function loadRows(offset, finish, signal) {
  // a page of rows from `offset` (a server position) matching the filter, and where to go on
  const rows = [];
  let at = offset;
  let more = true;
  for (let round = 0; round < 10 && rows.length < PAGE; round++) {
    const want = finish ? 100 : PAGE - rows.length;
    const data = await callJson(`/v1/traces?limit=${want}&offset=${at}`, { signal });
    let consumed = 0;
    for (const row of data.data) {
      consumed += 1;
      at += 1;
      if (!finish || (row.finish_reason ?? "running") === finish) rows.push(row);
      if (rows.length === PAGE) break;
    }
    if (rows.length === PAGE) {
      more = consumed < data.data.length || data.data.length === want;
      break;
    }
    if (data.data.length < want) {
      more = false;
      break;
    }
  }
  return { rows, next: at, more };
}

async function showList(signal) {
  const filter = el("select", { id: "finish-filter", "aria-label": "finish reason" },
    el("option", { value: "", text: "all finish reasons" }),
    ...FINISH_REASONS.map((reason) => el("option", { value: reason, text: reason })));
  filter.value = listState.finish;
  filter.addEventListener("change", () => {
    listState.finish = filter.value;
    listState.offset = 0;
    listState.history = [];
    route();
  });
  const { rows, next, more } = await loadRows(listState.offset, listState.finish, signal);
  const body = el("tbody");
  for (const row of rows) {
    const href = `#/trace/${encodeURIComponent(row.id)}`;
    body.append(el("tr", { class: "trace-row", dataset: { id: row.id } },
      el("td", { class: "time", text: fmtTime(row.created_at) }),
      el("td", { class: "problem" }, el("a", { href, text: short(row.problem, 90) || "(empty)" })),
      el("td", { class: "model", text: row.model }),
      el("td", { class: "finish" }, finishBadge(row.finish_reason)),
      el("td", { class: "steps num", text: row.n_steps }),
      el("td", { class: "answer", text: row.answer ?? "—" })));
  }
  const newer = el("button", { type: "button", id: "page-newer", text: "← Newer", disabled: listState.history.length === 0 });
  newer.addEventListener("click", () => {
    listState.offset = listState.history.pop() ?? 0;
    route();
  });
  const older = el("button", { type: "button", id: "page-older", text: "Older →", disabled: !more });
  older.addEventListener("click", () => {
    listState.history.push(listState.offset);
    listState.offset = next;
    route();
  });
  const table = el("table", { id: "trace-list" },
    el("thead", {}, el("tr", {}, ...["Time", "Problem", "Model", "Finish", "Steps", "Answer"].map((h) => el("th", { text: h })))),
    body);
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", { text: "Traces" }), filter, newer, older),
    rows.length ? table : el("p", { class: "muted", id: "no-traces", text: "No traces here yet." }));
}

function finishBadge(reason) {
  const label = reason ?? "running";
  return el("span", { class: `badge finish-${label}`, text: label });
}

// -- one trace --------------------------------------------------------------------------------
function confidenceView(confidence) {
  if (!confidence) return el("span", { class: "confidence no-logprobs", text: "no logprobs" });
  const mean = Number(confidence.mean_logprob);
  const share = Math.max(0, Math.min(1, Math.exp(mean)));
  const fill = el("span", { class: "fill" });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const level = share >= 0.7 ? "high" : share >= 0.4 ? "mid" : "low";
  return el("span", {
    class: `confidence ${level}`,
    title: `min token log-prob ${Number(confidence.min_logprob).toFixed(3)}`,
    dataset: { mean: String(mean), min: String(confidence.min_logprob) },
  }, el("span", { class: "bar" }, fill), el("span", { class: "value", text: `mean log-prob ${mean.toFixed(3)}` }));
}

function checkItem(check) {
  const mark = check.passed === true ? "✓" : check.passed === false ? "✗" : "?";
  const state = check.passed === true ? "pass" : check.passed === false ? "fail" : "undecided";
  return el("li", { class: `check ${state}`, dataset: { passed: String(check.passed) } },
    el("span", { class: "mark", text: mark }),
    el("span", { class: "claim", text: check.claim }),
    check.detail ? el("span", { class: "detail", text: check.detail }) : null);
}

function stepCard(step) {
  const facts = [];
  if (step.source === "given") facts.push(el("span", { class: "source", text: "given" }));
  facts.push(el("span", { class: "tokens", text: `${step.tokens} tok` }));
  if (step.latency_s !== null && step.latency_s !== undefined) {
    facts.push(el("span", { class: "latency", text: `${Number(step.latency_s).toFixed(2)} s` }));
  }
  if (!step.format_ok) facts.push(el("span", { class: "format-warn", text: "format not followed" }));
  const thought = el("details", { class: "thought" },
    el("summary", { text: "Thought" }),
    el("p", { class: "thought-text", text: step.thought || "(no thought)" }));
  return el("article", { class: `step source-${step.source}`, dataset: { index: String(step.index) } },
    el("header", {}, el("span", { class: "step-no", text: `Step ${step.index}` }), ...facts, confidenceView(step.confidence)),
    thought,
    el("p", { class: "action", text: step.action }),
    step.checks?.length ? el("ul", { class: "checks" }, ...step.checks.map(checkItem)) : null);
}

function renderFinal(box, trace) {
  box.replaceChildren(
    el("span", { class: "label", text: "Answer" }),
    el("span", { id: "final-answer", text: trace.answer ?? "(no final answer)" }),
    el("span", { class: "label", text: "Finish" }),
    el("span", { id: "finish-reason" }, finishBadge(trace.finish_reason)),
    trace.duration_s !== null && trace.duration_s !== undefined
      ? el("span", { class: "muted", text: `${Number(trace.duration_s).toFixed(2)} s` }) : null);
  box.dataset.finish = trace.finish_reason ?? "running";
}

async function showTrace(traceId, signal) {
  const run = pendingRun && pendingRun.id === traceId ? pendingRun : null;
  pendingRun = null;
  let trace;
  if (run) {
    trace = { id: traceId, problem: run.problem, steps: [], answer: null, finish_reason: null, model: "", engine: "",
      mode: "", created_at: new Date().toISOString(), request: { body: { steps: [] } } };
  } else {
    trace = await callJson(`/v1/traces/${encodeURIComponent(traceId)}`, { signal });
  }
  const steps = el("section", { id: "steps" });
  const seen = new Set();
  const addStep = (step) => {
    if (seen.has(step.index)) return;
    seen.add(step.index);
    steps.append(stepCard(step));
  };
  trace.steps.forEach(addStep);
  const final = el("section", { id: "final", class: "final" });
  renderFinal(final, trace);
  const expand = el("button", { type: "button", id: "expand-all", text: "Expand all" });
  expand.addEventListener("click", () => steps.querySelectorAll("details").forEach((d) => { d.open = true; }));
  const collapse = el("button", { type: "button", id: "collapse-all", text: "Collapse all" });
  collapse.addEventListener("click", () => steps.querySelectorAll("details").forEach((d) => { d.open = false; }));
  const live = el("span", { id: "live", class: "live", text: "following live…", hidden: true });
  const meta = [trace.model, trace.engine, trace.mode, trace.created_at ? fmtTime(trace.created_at) : ""].filter(Boolean).join(" · ");
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/", text: "← all traces" })),
    el("h1", { text: "Trace" }),
    el("p", { class: "muted", id: "trace-meta", text: meta, dataset: { id: traceId } }),
    el("pre", { class: "problem", id: "problem", text: trace.problem }),
    el("div", { class: "toolbar" }, expand, collapse, live),
    steps,
    final,
    compareSection(trace));

  if (trace.finish_reason === null || trace.finish_reason === undefined) {
    live.hidden = false;
    const last = trace.steps.length ? trace.steps[trace.steps.length - 1].index : 0;
    try {
      await follow(traceId, last, signal, (message) => {
        if (message.event === "step") addStep(message.data);
        else if (message.event === "done") {
          message.data.steps.forEach(addStep);
          renderFinal(final, message.data);
        } else if (message.event === "error") {
          renderFinal(final, { ...trace, finish_reason: message.data?.type === "interrupted" ? "interrupted" : "error" });
          final.append(el("p", { class: "error", text: message.data?.message ?? "the run failed" }));
        }
      }, run ? run.response : null);
    } finally {
      live.hidden = true;
    }
    if (signal.aborted) return;
    if (final.dataset.finish === "running") {  // the stream ended without its end event
      renderFinal(final, await callJson(`/v1/traces/${encodeURIComponent(traceId)}`, { signal }));
    }
  }
}

// -- compare with the expert ------------------------------------------------------------------
function compareSection(trace) {
  const given = trace.request?.body?.steps ?? [];
  const text = el("textarea", { id: "expert-text", rows: 6, spellcheck: "false",
    placeholder: "The expert's solution: one step per line (or 'Step 1: …' labels); an answer line '#### 42'." });
  text.value = given.join("\n");
  const answer = el("input", { id: "expert-answer", type: "text", placeholder: "expert answer (optional)" });
  const button = el("button", { type: "submit", id: "compare-run", text: "Compare" });
  const result = el("div", { id: "compare-result" });
  const form = el("form", { id: "compare-form" }, text, el("div", { class: "toolbar" }, answer, button));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!text.value.trim()) {
      result.replaceChildren(el("p", { class: "error", text: "The expert solution is empty: paste the expert's steps, one per line." }));
      return;
    }
    const body = { expert_solution: text.value };
    if (answer.value.trim()) body.expert_answer = answer.value.trim();
    result.replaceChildren(el("p", { class: "muted", text: "Comparing…" }));
    try {
      const data = await callJson(`/v1/traces/${encodeURIComponent(trace.id)}/compare`, { method: "POST", body });
      result.replaceChildren(compareTable(data));
    } catch (error) {
      if (error instanceof KeyNeeded) return askForKey(error.message);
      result.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  });
  return el("section", { id: "compare", class: "panel" }, el("h2", { text: "Compare with the expert" }),
    el("p", { class: "muted", text: "Similarity is the SRL step reward's: difflib ratio of the step to the expert step." }),
    form, result);
}

function compareTable(data) {
  const rows = data.rows.map((row) => {
    const sim = row.similarity === null ? "—" : row.similarity.toFixed(3);
    return el("tr", { class: "compare-row", dataset: { index: String(row.index), similarity: row.similarity === null ? "" : String(row.similarity) } },
      el("td", { class: "num", text: row.index }),
      el("td", { class: "model-step", text: row.model_step ?? "—" }),
      el("td", { class: "expert-step", text: row.expert_step ?? "—" }),
      el("td", { class: "similarity num", text: sim, title: row.similarity === null ? null : String(row.similarity) }));
  });
  const verdict = data.answer_correct === null ? "cannot tell (an answer is missing)" : data.answer_correct ? "right" : "wrong";
  const mean = data.mean_similarity === null ? "—" : data.mean_similarity.toFixed(3);
  return el("div", {},
    el("table", { id: "compare-table" },
      el("thead", {}, el("tr", {}, ...["#", "Model step", "Expert step", "Similarity"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)),
    el("p", { id: "compare-summary", dataset: { correct: String(data.answer_correct) } },
      el("span", { text: `Mean similarity ${mean} (${data.step_lines} line). Answer ` }),
      el("strong", { class: `verdict ${verdict.split(" ")[0]}`, text: verdict }),
      el("span", { text: `: model ${data.answer ?? "—"}, expert ${data.expert_answer ?? "—"}` })));
}

// -- run a problem ----------------------------------------------------------------------------
function showRun() {
  const problem = el("textarea", { id: "run-problem", rows: 4, required: true, placeholder: "A math word problem" });
  const steps = el("input", { id: "run-max-steps", type: "number", min: 1, max: 64, value: 4 });
  const status = el("p", { id: "run-status", class: "error" });
  const form = el("form", { id: "run-form" }, problem,
    el("div", { class: "toolbar" }, el("label", { for: "run-max-steps", text: "max steps" }), steps,
      el("button", { type: "submit", id: "run-submit", text: "Run" })),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    const body = { problem: problem.value, stream: true, limits: { max_steps: Number(steps.value) || 4 } };
    leaving.abort(); // the run's stream belongs to the trace view it opens
    leaving = new AbortController();
    try {
      const response = await call("/v1/reason", { method: "POST", body, signal: leaving.signal });
      if (!response.ok) throw new Error(await errorText(response));
      const id = response.headers.get("X-SRL-Trace-Id");
      pendingRun = { id, response, problem: body.problem };
      location.hash = `#/trace/${encodeURIComponent(id)}`;
    } catch (error) {
      if (error instanceof KeyNeeded) return askForKey(error.message);
      status.textContent = error.message;
    }
  });
  view.replaceChildren(el("h1", { text: "Run a problem" }), form);
  problem.focus();
}

// -- routing ----------------------------------------------------------------------------------
async function route() {
  if (!pendingRun) {
    leaving.abort();
    leaving = new AbortController();
  }
  const signal = leaving.signal;
  showNotice("");
  refreshKeyButton();
  const hash = location.hash || "#/";
  try {
    const match = hash.match(/^#\/trace\/([^/?#]+)$/);
    if (match) await showTrace(decodeURIComponent(match[1]), signal);
    else if (hash === "#/run") showRun();
    else await showList(signal);
  } catch (error) {
    if (signal.aborted) return;
    if (error instanceof KeyNeeded) return askForKey(error.message);
    showNotice(error.message);
  }
}

setupKeyForm();
window.addEventListener("hashchange", route);
window.addEventListener("pagehide", () => leaving.abort());
route();
