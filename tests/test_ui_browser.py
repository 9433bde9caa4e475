"""The trace viewer at /ui/ (issue 16), in a real browser against a real `srl serve`.

One server for the module (real SmolLM2 on llama.cpp, API keys on, short runs) and Debian's
`chromium` driven by Python playwright (`executable_path`: playwright's own browser download
cannot work offline). Every page is watched: a request to any other origin, a console error or an
uncaught page error fails the test that caused it. Screenshots go to each test's tmp folder;
`SRL_UI_SCREENSHOT=docs/img/trace-viewer.png` also writes the README's screenshot from
`test_trace_view_renders_steps_checks_and_answer`.

Skipped only when /usr/bin/chromium is missing outside CI; in CI (`CI` set) a missing browser fails.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import httpx
import pytest

from srl_sdk.core.compare import compare_trace, pair_similarity
from srl_sdk.core.format import THINK_CLOSE
from srl_sdk.core.steps import Trace
from srl_sdk.training.rewards import score_step

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y --no-install-recommends chromium); "
                "in CI this test runs and fails instead", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

KEY = "viewer-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
EVIL = '<img src=x onerror="document.title=\'pwned\'">'
PROBLEM = "Tom has 3 apples and buys 4 more. Then he eats 2. How many apples does he have?"
GIVEN = [f"Tom has 3 + 4 = 8 apples after buying. {EVIL}"]  # a failing check, and HTML that must stay text
EXPERT = "Tom has 3 + 4 = 7 apples after buying.\nHe eats 2, so 7 - 2 = 5 apples are left.\n#### 5"
TIMEOUT_MS = 120_000  # a run on a loaded 2-core machine can take a while


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from servers import serving

    with serving(tmp_path_factory.mktemp("ui"), api_keys=[KEY], limits={"resume_grace_s": 1},
                 reason={"max_steps": 3, "max_thought_tokens": 16, "max_action_tokens": 24}) as srl:
        yield srl


@pytest.fixture(scope="module")
def given_trace(server) -> Trace:
    """A finished trace that starts with a person's step (a wrong sum with HTML in it)."""
    response = httpx.post(server.url + "/v1/reason", headers=AUTH, timeout=300,
                          json={"problem": PROBLEM, "steps": GIVEN, "stream": False, "limits": {"max_steps": 2}})
    assert response.status_code == 200, response.text
    return Trace.model_validate(response.json())


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Watched:
    """A page with everything it does recorded: requests, console errors, page errors."""

    def __init__(self, browser, origin: str, key: str | None) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.page = self.context.new_page()
        self.origin = origin
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.allowed_errors: list[re.Pattern] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.set_default_timeout(TIMEOUT_MS)
        if key is not None:  # as if the user had typed it in this tab (the key test types it)
            self.page.add_init_script(f"sessionStorage.setItem('srl-api-key', {key!r})")

    def open(self, fragment: str = "#/") -> None:
        self.page.goto(f"{self.origin}/ui/{fragment}")

    def check_clean(self) -> None:
        foreign = [u for u in self.requests if not u.startswith(self.origin + "/")]
        assert not foreign, f"requests left the page's origin: {foreign}"
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.allowed_errors)]
        assert not unexpected, f"the console showed errors: {unexpected}"
        assert self.page.title() != "pwned", "model text ran as HTML"


@pytest.fixture
def watched(browser, server):
    pages: list[Watched] = []

    def open_page(key: str | None = KEY) -> Watched:
        page = Watched(browser, server.url, key)
        pages.append(page)
        return page

    yield open_page
    for page in pages:
        try:
            page.check_clean()
        finally:
            page.context.close()


def cards(page):
    return page.locator("#steps article.step")


def test_ui_is_static_open_and_locked_down(server):
    page = httpx.get(server.url + "/ui/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server.url + "/ui", timeout=30, follow_redirects=False).headers["location"] == "/ui/"
    assert httpx.get(server.url + "/ui/../serving/spec.py", timeout=30).status_code == 404
    assert httpx.get(server.url + "/ui/nothing.js", timeout=30).status_code == 404
    assert httpx.get(server.url + "/v1/traces", timeout=30).status_code == 401  # the data keeps its key check
    assert httpx.post(server.url + "/v1/traces/x/compare", json={"expert_steps": ["a"]}, timeout=30).status_code == 401
    script = httpx.get(server.url + "/ui/app.js", timeout=30).text
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"app.js uses {sink}"
    assert not re.search(r"\sstyle=", page.text) and "<script>" not in page.text  # nothing the CSP would block


def test_key_prompt_refuses_a_wrong_key_and_keeps_a_right_one_in_the_tab(watched, given_trace):
    tab = watched(key=None)
    tab.allowed_errors.append(re.compile(r"status of 401"))  # the browser logs each refused request
    tab.open()
    expect(tab.page.locator("#key-panel")).to_be_visible()
    tab.page.fill("#key-input", "wrong-key-000000")
    tab.page.click("#key-submit")
    expect(tab.page.locator("#key-error")).to_contain_text("refused")
    expect(tab.page.locator("#key-panel")).to_be_visible()
    tab.page.fill("#key-input", KEY)
    tab.page.click("#key-submit")
    expect(tab.page.locator("#key-panel")).to_be_hidden()
    expect(tab.page.locator(f'tr.trace-row[data-id="{given_trace.id}"]')).to_be_visible()
    assert tab.page.evaluate("sessionStorage.getItem('srl-api-key')") == KEY
    assert tab.page.evaluate("localStorage.length") == 0  # never kept beyond the tab


def test_list_shows_stored_traces_and_filters_by_finish_reason(watched, server, given_trace, tmp_path):
    stored = httpx.get(server.url + "/v1/traces?limit=50", headers=AUTH, timeout=30).json()["data"]
    tab = watched()
    tab.open()
    rows = tab.page.locator("tr.trace-row")
    expect(rows.first).to_be_visible()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.id)") == [t["id"] for t in stored]  # newest first
    row = tab.page.locator(f'tr.trace-row[data-id="{given_trace.id}"]')
    expect(row.locator("td.finish")).to_have_text(given_trace.finish_reason)
    expect(row.locator("td.steps")).to_have_text(str(len(given_trace.steps)))
    expect(row.locator("td.model")).to_have_text(given_trace.model)
    tab.page.screenshot(path=str(tmp_path / "list.png"))
    other = "cancelled" if given_trace.finish_reason != "cancelled" else "timeout"
    tab.page.select_option("#finish-filter", other)
    expect(tab.page.locator("#no-traces")).to_be_visible()
    tab.page.select_option("#finish-filter", given_trace.finish_reason)
    expect(row).to_be_visible()
    reasons = tab.page.locator("tr.trace-row td.finish").all_inner_texts()
    assert reasons and set(reasons) == {given_trace.finish_reason}
    row.locator("td.problem a").click()
    expect(tab.page.locator("#trace-meta")).to_have_attribute("data-id", given_trace.id)


def test_trace_view_renders_steps_checks_and_answer(watched, given_trace, tmp_path):
    tab = watched()
    tab.open(f"#/trace/{given_trace.id}")
    expect(cards(tab.page)).to_have_count(len(given_trace.steps))
    for step, card in zip(given_trace.steps, cards(tab.page).all()):
        marks = card.locator("li.check .mark").all_inner_texts()
        assert marks == [{True: "✓", False: "✗", None: "?"}[c.passed] for c in step.checks]
        assert card.locator("p.action").inner_text() == step.action
        if step.confidence is None:
            expect(card.locator(".confidence")).to_have_text("no logprobs")
        else:
            bar = card.locator(".confidence")
            assert f"{step.confidence.min_logprob:.3f}" in bar.get_attribute("title")
            assert card.locator(".confidence .fill").evaluate("e => e.style.width").endswith("%")
    first = cards(tab.page).first
    assert first.locator("li.check.fail .mark").inner_text() == "✗"  # the given 3 + 4 = 8
    assert EVIL in first.locator("p.action").inner_text()  # HTML shown as text ...
    assert tab.page.locator("#steps img").count() == 0  # ... never made into an element
    thought = first.locator("details.thought")
    assert thought.evaluate("d => d.open") is False
    thought.locator("summary").click()
    assert thought.evaluate("d => d.open") is True
    tab.page.click("#collapse-all")
    assert tab.page.locator("#steps details[open]").count() == 0
    tab.page.click("#expand-all")
    assert tab.page.locator("#steps details[open]").count() == len(given_trace.steps)
    expect(tab.page.locator("#finish-reason")).to_have_text(given_trace.finish_reason)
    expect(tab.page.locator("#final-answer")).to_have_text(given_trace.answer or "(no final answer)")
    tab.page.screenshot(path=str(tmp_path / "trace.png"), full_page=True)
    target = os.environ.get("SRL_UI_SCREENSHOT")
    if target:  # the README's picture: SRL_UI_SCREENSHOT=docs/img/trace-viewer.png pytest -k trace_view
        tab.page.click("#collapse-all")
        cards(tab.page).last.locator("summary").click()
        tab.page.fill("#expert-text", EXPERT)
        tab.page.click("#compare-run")
        expect(tab.page.locator("#compare-table")).to_be_visible()
        tab.page.screenshot(path=target, full_page=True)


def test_compare_equals_the_srl_step_similarity(watched, server, given_trace):
    tab = watched()
    tab.open(f"#/trace/{given_trace.id}")
    expect(tab.page.locator("#expert-text")).to_have_value(GIVEN[0])  # the request's given steps, to edit
    tab.page.fill("#expert-text", EXPERT)
    tab.page.click("#compare-run")
    rows = tab.page.locator("tr.compare-row")
    expect(rows.first).to_be_visible()
    expected = compare_trace(given_trace, EXPERT.splitlines()[:2], expert_answer="5")
    assert rows.count() == len(expected.rows)
    for row, want in zip(rows.all(), expected.rows):
        shown = row.get_attribute("data-similarity")
        if want.similarity is None:
            assert shown == ""
            continue
        model_step = row.locator("td.model-step").inner_text()
        assert model_step == want.model_step
        reward = score_step(f"t{THINK_CLOSE}\n{model_step}", want.expert_step, expected.step_lines)  # training's
        assert abs(float(shown) - reward) <= 1e-9
        assert abs(float(shown) - pair_similarity(model_step, want.expert_step)) <= 1e-9
    expect(tab.page.locator("#compare-summary")).to_have_attribute("data-correct", str(expected.answer_correct).lower()
                                                                   if expected.answer_correct is not None else "null")
    # the same numbers from the client, over HTTP (the endpoint) and computed locally
    from srl_sdk.client import Reasoner

    with Reasoner(server.url, api_key=KEY) as client:
        local = client.compare(given_trace.id, EXPERT)
    remote = httpx.post(f"{server.url}/v1/traces/{given_trace.id}/compare", headers=AUTH, timeout=30,
                        json={"expert_solution": EXPERT}).json()
    assert remote == local.model_dump(mode="json") == expected.model_dump(mode="json")
    bad = httpx.post(f"{server.url}/v1/traces/{given_trace.id}/compare", headers=AUTH, timeout=30,
                     json={"expert_steps": ["  "]})
    assert bad.status_code == 422 and "expert step 1 is empty" in bad.json()["error"]["message"]
    tab.page.fill("#expert-text", "")
    tab.page.click("#compare-run")
    expect(tab.page.locator("#compare-result .error")).to_contain_text("empty")


def test_a_running_trace_gains_step_cards_without_a_reload(watched, server, tmp_path):
    tab = watched()
    tab.open()
    expect(tab.page.locator("#trace-list, #no-traces").first).to_be_visible()
    tab.page.evaluate("window.__sameDocument = true")
    found: dict[str, str] = {}
    ready = threading.Event()

    def run() -> None:  # another client's run, read to its end
        with httpx.stream("POST", server.url + "/v1/reason", headers=AUTH, timeout=300,
                          json={"problem": PROBLEM, "limits": {"max_steps": 3}}) as response:
            found["id"] = response.headers["x-srl-trace-id"]
            ready.set()
            for _ in response.iter_lines():
                pass

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert ready.wait(120), "the run did not start"
    for _ in range(600):  # as a user would: open it once it is stored (the worker saves it as it starts)
        if httpx.get(f"{server.url}/v1/traces/{found['id']}", headers=AUTH, timeout=30).status_code == 200:
            break
        threading.Event().wait(0.05)
    tab.page.evaluate("id => { location.hash = '#/trace/' + id }", found["id"])
    expect(tab.page.locator("#trace-meta")).to_have_attribute("data-id", found["id"])
    at_open = cards(tab.page).count()
    finish = tab.page.locator("#final").get_attribute("data-finish")
    expect(tab.page.locator("#final")).not_to_have_attribute("data-finish", "running", timeout=TIMEOUT_MS)
    worker.join(120)
    trace = server.wait_finished(found["id"], headers=AUTH)
    expect(cards(tab.page)).to_have_count(len(trace.steps))
    assert finish == "running" and at_open < len(trace.steps), (finish, at_open, len(trace.steps))
    assert tab.page.evaluate("window.__sameDocument") is True  # no reload happened
    expect(tab.page.locator("#finish-reason")).to_have_text(trace.finish_reason)
    assert any(f"/v1/traces/{found['id']}/events" in u for u in tab.requests)  # followed the events route
    tab.page.screenshot(path=str(tmp_path / "live.png"), full_page=True)


def test_run_form_shows_the_run_live_and_leaving_stops_following(watched, server):
    tab = watched()
    tab.open("#/run")
    tab.page.evaluate("window.__sameDocument = true")
    tab.page.fill("#run-problem", "A shop sells 6 pens a day for 5 days. How many pens does it sell?")
    tab.page.fill("#run-max-steps", "3")
    tab.page.click("#run-submit")
    expect(tab.page.locator("#trace-meta")).to_have_attribute("data-id", re.compile(r"^[0-9a-f]{32}$"))
    trace_id = tab.page.locator("#trace-meta").get_attribute("data-id")
    expect(tab.page.locator("#final")).not_to_have_attribute("data-finish", "running", timeout=TIMEOUT_MS)
    trace = server.wait_finished(trace_id, headers=AUTH)
    expect(cards(tab.page)).to_have_count(len(trace.steps))
    expect(tab.page.locator("#finish-reason")).to_have_text(trace.finish_reason)
    assert tab.page.evaluate("window.__sameDocument") is True
    assert tab.page.url.endswith(f"#/trace/{trace_id}")

    # leaving a running trace closes its stream (a run whose only listener left is then cancelled)
    tab.page.goto(f"{server.url}/ui/#/run")
    tab.page.fill("#run-problem", PROBLEM)
    tab.page.click("#run-submit")
    expect(tab.page.locator("#trace-meta")).to_have_attribute("data-id", re.compile(r"^[0-9a-f]{32}$"))
    second = tab.page.locator("#trace-meta").get_attribute("data-id")
    tab.page.click("#nav-list")
    expect(tab.page.locator("tr.trace-row").first).to_be_visible()
    for _ in range(50):  # the abort is reported a moment later
        if any(u.endswith("/v1/reason") for u in tab.failed):
            break
        tab.page.wait_for_timeout(100)
    assert any(u.endswith("/v1/reason") for u in tab.failed), f"the run's stream stayed open: {tab.failed}"
    left = server.wait_finished(second, headers=AUTH, timeout_s=120)  # cancelled after resume_grace_s (1 s)
    assert left.finish_reason in ("cancelled", "final_answer", "max_steps", "repeated_step", "length")



def test_list_pages_newest_first(watched, server, given_trace):
    stored = httpx.get(server.url + "/v1/traces?limit=3", headers=AUTH, timeout=30).json()["data"]
    assert len(stored) >= 2, "the tests before this one stored at least two traces"
    tab = watched()
    tab.page.goto(f"{server.url}/ui/?page_size=1#/")
    row = tab.page.locator("tr.trace-row")
    expect(row).to_have_attribute("data-id", stored[0]["id"])
    expect(tab.page.locator("#page-newer")).to_be_disabled()
    tab.page.click("#page-older")
    expect(row).to_have_attribute("data-id", stored[1]["id"])
    tab.page.click("#page-newer")
    expect(row).to_have_attribute("data-id", stored[0]["id"])
