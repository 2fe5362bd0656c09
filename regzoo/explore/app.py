"""The explorer's HTTP interface (Starlette): the page, its script and style, and a JSON API.

Routes (nothing else is served; no path and no code comes from the browser):

- ``GET /``: the page, with one range input per free parameter;
- ``GET /explore.js``, ``GET /explore.css``: its script and style (package data);
- ``GET /api/state``: the parameters, image shape and what the session can do;
- ``POST /api/update`` ``{"params": {name: value}, "slices": [i, j, k]}``: re-register (one
  network forward, skipped when the parameters did not change) and return the view;
- ``POST /api/refine`` ``{"params": {...}, "steps": N}``: move to ``params`` and start
  refining that setting in the background; ``GET /api/refine``: its progress;
- ``POST /api/refine/cancel``: stop a running refinement (the setting stays unrefined);
- ``POST /api/save`` ``{"params": {...}}``: write the result at ``params`` (the refined one if
  the setting was refined) into the folder given on the command line.

Requests that would change the registration while a refinement runs are answered ``409``.

No other web page can drive the API: every request must name this server in its ``Host``
header (on loopback: a DNS-rebinding guard), and every ``POST`` must carry the session's token
(``X-Regzoo-Token``, which only the page served here knows), an ``application/json`` body of at
most :data:`MAX_BODY` bytes, and no ``Origin`` but this server's. A cross-site form or
``text/plain`` request (the kinds a page can send without a CORS preflight) is refused.
"""

from __future__ import annotations

import html
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from regzoo.explore.session import ExploreSession, RefineJob
from regzoo.params import ParamSpace, ParamSpec

__all__ = ["LOOPBACK_HOSTS", "TOKEN_HEADER", "create_app", "host_name", "render_page"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Loopback addresses: on these the page answers only to these ``Host`` names (a DNS-rebinding
guard); the one list ``--host`` is compared with."""

TOKEN_HEADER = "X-Regzoo-Token"
"""Header carrying the session's token on every state-changing request."""

SLIDER_STEPS = 1000
"""Positions of a parameter slider, evenly spaced on the parameter's own scale."""

MAX_BODY = 64 * 1024
MAX_REFINE_STEPS = 10_000
ASSETS = {"explore.js": "text/javascript", "explore.css": "text/css"}


class _RequestError(ValueError):
    """A request the API refuses, with the status code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _asset(name: str) -> str:
    return (files("regzoo.explore") / "static" / name).read_text(encoding="utf-8")


def _slider_position(spec: ParamSpec, value: float) -> int:
    """The slider position of ``value``: its place in ``[low, high]`` on the spec's scale."""
    unit = ParamSpace.of(spec).normalize(torch.tensor([[value]], dtype=torch.float64))
    return round(float(unit[0, 0]) * SLIDER_STEPS)


def host_name(header: str | None) -> str | None:
    """The host of a ``Host`` header or ``--host`` value, lower case, without port or IPv6
    brackets (``"[::1]:8765"`` -> ``"::1"``); ``None`` when malformed."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1 :] and not header[end + 1 :].startswith(":")):
            return None
        return header[1:end]
    if header.count(":") > 1:  # a bare IPv6 address (``--host ::1``)
        return header
    return header.split(":", 1)[0]


def render_page(session: ExploreSession, *, refine_steps: int = 30, token: str = "") -> str:
    """The page's HTML: one range input per free parameter (log-spaced where the parameter's
    scale is log; the value is shown in the parameter's own units), three slice-position
    controls, the overlay switches, the refine and save buttons and the readouts."""
    current = session.params
    rows = []
    specs = session.model.objective.free_space
    for i, (p, spec) in enumerate(zip(session.parameters(), specs, strict=True)):
        value = current[p["name"]]
        attrs = {
            "type": "range",
            "class": "param",
            "id": f"param-{i}",
            "min": "0",
            "max": str(SLIDER_STEPS),
            "step": "1",
            "value": str(_slider_position(spec, value)),
            "data-name": p["name"],
            "data-low": repr(p["low"]),
            "data-high": repr(p["high"]),
            "data-scale": p["scale"],
        }
        slider = "<input " + " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items()) + ">"
        rows.append(
            '<div class="control">'
            f'<label for="param-{i}"><b>{html.escape(p["short"])}</b> '
            f'<span class="muted">{html.escape(p["description"])}</span></label>'
            f'<div class="row">{slider}'
            f'<input type="number" class="value" data-for="param-{i}" '
            f'value="{value:.4g}" step="any" aria-label="{html.escape(p["name"])}"></div>'
            f'<div class="muted small">{html.escape(p["name"])}: [{p["low"]:g}, {p["high"]:g}],'
            f" {html.escape(p['scale'])} scale</div></div>"
        )
    if not rows:
        rows.append('<p class="muted">This model has no free parameters.</p>')
    slices = []
    for axis, n in enumerate(session.shape):
        slices.append(
            '<div class="row"><label class="axis" for="slice-{a}">axis {a}</label>'
            '<input type="range" class="slice" id="slice-{a}" data-axis="{a}" min="0" '
            'max="{m}" step="1" value="{v}"><output id="slice-{a}-value">{v}</output></div>'.format(
                a=axis, m=n - 1, v=n // 2
            )
        )
    replacements = {
        "{{parameters}}": "\n".join(rows),
        "{{slices}}": "\n".join(slices),
        "{{refine_steps}}": str(refine_steps),
        "{{shape}}": html.escape(" x ".join(str(n) for n in session.shape)),
        "{{out}}": html.escape(str(session.out) if session.out else "off (no --out)"),
        "{{token}}": html.escape(token),
    }
    page = _asset("index.html")
    for key, value in replacements.items():
        page = page.replace(key, value)
    return page


def _check_post(request: Request, token: str) -> None:
    """Refuse a state-changing request that another web page could have sent."""
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin.lower() not in (f"http://{host.lower()}", f"https://{host.lower()}"):
            raise _RequestError(f"cross-site request refused (Origin {origin})", 403)
    if not secrets.compare_digest(request.headers.get(TOKEN_HEADER.lower(), ""), token):
        raise _RequestError(
            f"missing or wrong {TOKEN_HEADER} header (only the explorer's page may change it)",
            403,
        )
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise _RequestError(f"the request body must be application/json, got {kind!r}", 415)


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it exceeds :data:`MAX_BODY` (by its announced
    ``Content-Length`` before anything is read, else while it streams in)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > MAX_BODY):
        raise _RequestError("request body too large", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _RequestError("request body too large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _read_body(request)
    if not body:
        return {}
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _RequestError(f"request body is not JSON: {exc}") from exc
    except RecursionError:
        raise _RequestError("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise _RequestError("request body must be a JSON object")
    return data


def _params(data: dict[str, Any]) -> dict[str, float] | None:
    params = data.get("params")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise _RequestError("'params' must be an object {name: number}")
    checked = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _RequestError(f"parameter '{name}' must be a number, got {value!r}")
        number = float(value) if isinstance(value, float) or abs(value) < 2**63 else math.inf
        if not math.isfinite(number):
            raise _RequestError(f"parameter '{name}' must be finite")
        checked[str(name)] = number
    return checked


def _slices(data: dict[str, Any]) -> list[int] | None:
    slices = data.get("slices")
    if slices is None:
        return None
    if (
        not isinstance(slices, list)
        or len(slices) != 3
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in slices)
    ):
        raise _RequestError("'slices' must be three integers [i, j, k]")
    return slices


def _steps(data: dict[str, Any], default: int) -> int:
    steps = data.get("steps", default)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise _RequestError(f"'steps' must be an integer, got {steps!r}")
    if not 1 <= steps <= MAX_REFINE_STEPS:
        raise _RequestError(f"'steps' must be in [1, {MAX_REFINE_STEPS}], got {steps}")
    return steps


Endpoint = Callable[[Request], Awaitable[Response]]


def _api(endpoint: Endpoint) -> Endpoint:
    """Answer refused requests and invalid parameters with ``{"error": message}``."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except KeyError as exc:
            return JSONResponse({"error": str(exc.args[0]) if exc.args else "unknown name"}, 400)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapped


def create_app(
    session: ExploreSession,
    *,
    refine_steps: int = 30,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    token: str | None = None,
) -> Starlette:
    """The explorer's web application for one session.

    Args:
        session: the pair, model and current registration.
        refine_steps: the refine button's default iterations.
        allowed_hosts: ``Host`` header values the app answers (``["*"]``: any); the loopback
            names by default, which stops other web pages from reaching the API through DNS
            rebinding.
        token: the session's token (:data:`TOKEN_HEADER`; random by default). The page
            carries it; the app keeps it in ``app.state.token``.
    """
    state: dict[str, RefineJob | None] = {"job": None}
    token = token or secrets.token_urlsafe(24)
    hosts = {h for h in (host_name(a) if a != "*" else "*" for a in allowed_hosts) if h}

    def check_host(request: Request) -> None:
        if "*" not in hosts and host_name(request.headers.get("host")) not in hosts:
            raise _RequestError("Invalid host header", 400)

    def refining() -> bool:
        job = state["job"]
        return job is not None and job.running

    def refuse_while_refining() -> None:
        if refining():
            raise _RequestError("a refinement is running; wait for it to finish", 409)

    async def page(request: Request) -> Response:
        try:
            check_host(request)
        except _RequestError as exc:
            return Response(str(exc), status_code=exc.status, media_type="text/plain")
        return HTMLResponse(render_page(session, refine_steps=refine_steps, token=token))

    def asset(name: str) -> Endpoint:
        async def serve(request: Request) -> Response:
            try:
                check_host(request)
            except _RequestError as exc:
                return Response(str(exc), status_code=exc.status, media_type="text/plain")
            return Response(_asset(name), media_type=ASSETS[name])

        return serve

    async def api_state(request: Request) -> Response:
        return JSONResponse(
            {
                "parameters": session.parameters(),
                "params": session.params,
                "refined": session.refined,
                "shape": list(session.shape),
                "spacing": session.spacing,
                "segmentations": {
                    "fixed": session.fixed_seg is not None,
                    "moving": session.moving_seg is not None,
                },
                "refine_steps": refine_steps,
                "save": session.out is not None,
            }
        )

    async def api_update(request: Request) -> Response:
        data = await _json_body(request)
        params, slices = _params(data), _slices(data)
        refuse_while_refining()

        def work() -> dict[str, Any]:
            if params is not None:
                session.update(params)
            return session.view(slices)

        return JSONResponse(await run_in_threadpool(work))

    async def api_refine_start(request: Request) -> Response:
        data = await _json_body(request)
        params, steps = _params(data), _steps(data, refine_steps)
        refuse_while_refining()
        if params is not None:
            await run_in_threadpool(session.update, params)
            refuse_while_refining()  # another request may have started one meanwhile
        job = RefineJob(session, steps)
        state["job"] = job
        return JSONResponse(job.status(), status_code=202)

    async def api_refine_status(request: Request) -> Response:
        job = state["job"]
        if job is None:
            return JSONResponse(
                {"running": False, "fraction": 0.0, "steps": 0, "error": None, "cancelled": False}
            )
        return JSONResponse(job.status())

    async def api_refine_cancel(request: Request) -> Response:
        await _json_body(request)
        job = state["job"]
        if job is None or not job.running:
            return JSONResponse({"running": False, "cancelled": False})
        await run_in_threadpool(job.cancel)
        return JSONResponse(job.status())

    async def api_save(request: Request) -> Response:
        params = _params(await _json_body(request))
        refuse_while_refining()

        def work() -> list[Path]:
            if params is not None:
                session.update(params)
            return session.save()

        written = await run_in_threadpool(work)
        return JSONResponse(
            {
                "written": [str(p) for p in written],
                "params": session.params,
                "refined": session.refined,
                "command": session.register_command(),
            }
        )

    def get(endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            check_host(request)
            return await endpoint(request)

        return _api(checked)

    def post(endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            check_host(request)
            _check_post(request, token)
            return await endpoint(request)

        return _api(checked)

    routes = [
        Route("/", page),
        *(Route(f"/{name}", asset(name)) for name in ASSETS),
        Route("/api/state", get(api_state)),
        Route("/api/update", post(api_update), methods=["POST"]),
        Route("/api/refine", post(api_refine_start), methods=["POST"]),
        Route("/api/refine", get(api_refine_status), methods=["GET"]),
        Route("/api/refine/cancel", post(api_refine_cancel), methods=["POST"]),
        Route("/api/save", post(api_save), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.token = token
    return app
