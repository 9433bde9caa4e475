"""The trace viewer at `/ui/` and the compare endpoint it (and any client) calls.

The page is three static files shipped inside the package (`srl_sdk/serving/ui/`): plain HTML, one
ES-module script, one stylesheet; no build step and nothing fetched from elsewhere, so it works
offline and behind a firewall. Like `/docs`, the files are open (they hold no data and no
secret); every data call the page makes goes to the API routes, which keep their key check. The
page is served with `Content-Security-Policy: default-src 'self'`, so even a string the page
failed to escape could neither run a script nor load anything from another origin.

`POST /v1/traces/{id}/compare` scores a stored trace against expert steps with
`core.compare.compare_trace`, the SRL reward's step similarity, so the page, `Reasoner.compare`,
`srl traces compare` and training agree to the last bit.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from srl_sdk.core.compare import MAX_EXPERT_STEPS

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from srl_sdk.core.compare import Comparison
    from srl_sdk.core.steps import Trace

UI_PATH = "/ui"
# name -> media type: only these files are served (no path from the URL ever reaches the disk)
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'"
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def ui_file(name: str) -> bytes:
    """One of the page's files from the installed package (wheel or source tree)."""
    return resources.files("srl_sdk.serving").joinpath("ui").joinpath(name).read_bytes()


def install_ui(app: "FastAPI") -> None:
    """Add GET /ui, /ui/ and /ui/<file> to the server's app: open routes, like /docs."""
    from fastapi.responses import RedirectResponse, Response

    files = {name: (ui_file(name), media) for name, media in UI_FILES.items()}  # read once, at start

    async def page_file(name: str) -> Response:
        if name not in files:
            from fastapi import HTTPException

            raise HTTPException(status_code=404, detail=f"no file {name[:100]!r} in the trace viewer")
        body, media = files[name]
        return Response(body, media_type=media, headers=UI_HEADERS)

    async def index() -> Response:
        return await page_file("index.html")

    async def to_index() -> Response:
        return RedirectResponse(f"{UI_PATH}/", status_code=308)

    for route in app.routes:  # the compare body is read raw (size cap first), so declare it for /openapi.json
        if getattr(route, "path", "") == "/v1/traces/{trace_id}/compare":
            schema = CompareRequest.model_json_schema()
            route.openapi_extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    app.add_api_route(UI_PATH, to_index, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{UI_PATH}/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route(UI_PATH + "/{name}", page_file, methods=["GET"], include_in_schema=False)


class CompareRequest(BaseModel):
    """POST /v1/traces/{id}/compare. Give the expert's steps as a list or as pasted text; with
    neither, the steps the trace's request gave are used."""

    model_config = ConfigDict(extra="forbid")

    expert_steps: list[str] | None = Field(default=None, max_length=MAX_EXPERT_STEPS)
    expert_solution: str | None = Field(default=None, max_length=200_000,
                                        description="pasted text, cut like training data (numbered, else lines)")
    expert_answer: str | None = Field(default=None, max_length=10_000)
    step_lines: Literal["first", "all"] | None = None
    verifier: Literal["exact", "math"] = "exact"


def compare_stored(trace: "Trace", body: CompareRequest) -> "Comparison":
    """The endpoint's work once its trace is found (StepSpec.compare does the HTTP, the key check
    and the store lookup, as for GET /v1/traces/{id}): choose the expert steps (the body's list,
    its pasted text, else the steps the trace's request gave) and compare. Raises InputError, or
    MissingDependencyError for verifier "math" without math-verify."""
    from srl_sdk.core.compare import compare_trace, expert_from_text
    from srl_sdk.errors import InputError

    answer = body.expert_answer
    if body.expert_steps is not None and body.expert_solution is not None:
        raise InputError("give expert_steps or expert_solution, not both")
    if body.expert_steps is not None:
        steps = body.expert_steps
    elif body.expert_solution is not None:
        steps, found = expert_from_text(body.expert_solution)
        answer = answer if answer is not None else found
    else:
        steps = list((trace.request.get("body") or {}).get("steps") or [])
        if not steps:
            raise InputError("this trace's request gave no steps: send expert_steps or expert_solution")
    return compare_trace(trace, steps, expert_answer=answer, step_lines=body.step_lines, verifier=body.verifier)
