"""The explorer's HTTP interface (Starlette): the page, its script and style, and a JSON API.

Routes (nothing else is served; no path and no code comes from the browser):

- ``GET /``: the page, with one range input per free parameter;
- ``GET /static/explore.js``, ``GET /static/explore.css``: its script and style (package
  data);
- ``GET /api/state``: the parameters, image shape and what the session can do;
- ``POST /api/update`` ``{"params": {name: value}, "slices": [i, j, k]}``: re-register (one
  network forward, skipped when the parameters did not change) and return the view;
- ``POST /api/refine`` ``{"params": {...}, "steps": N}``: move to ``params`` and start
  refining that setting in the background; ``GET /api/refine``: its progress;
- ``POST /api/refine/cancel``: stop a running refinement (the setting stays unrefined);
- ``POST /api/save`` ``{"params": {...}}``: write the result at ``params`` (the refined one if
  the setting was refined) into the folder given on the command line.

Requests that would change the registration while a refinement runs are answered ``409``.
Request bodies are validated by pydantic models; a refused request or a user error (an
unknown parameter, a value outside the trained range: [`RegzooError`][regzoo._errors.RegzooError])
is answered ``400`` with ``{"error": message}``. Anything else is a bug: it is not dressed up as
a user error, and Starlette answers ``500`` and logs its traceback. The script and style are
served by Starlette's ``StaticFiles`` from the package, the page is a Jinja template.

No other web page can drive the API: every request must name this server in its ``Host``
header (a DNS-rebinding guard that holds on every bind address; only the names given with
``--allow-host`` widen it), and every ``POST`` must carry the session's token
(``X-Regzoo-Token``, which only the page served here knows), an ``application/json`` body of at
most `MAX_BODY` bytes, and no ``Origin`` but this server's. A cross-site form or
``text/plain`` request (the kinds a page can send without a CORS preflight) is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from regzoo._errors import RegzooError
from regzoo.explore.session import ExploreSession, RefineJob
from regzoo.params import ParamSpace, ParamSpec

__all__ = [
    "LOOPBACK_HOSTS",
    "TOKEN_HEADER",
    "CancelRequest",
    "RefineRequest",
    "SaveRequest",
    "UpdateRequest",
    "create_app",
    "host_name",
    "render_page",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Loopback addresses: on these the page answers only to these ``Host`` names (a DNS-rebinding
guard); the one list ``--host`` is compared with."""

TOKEN_HEADER = "X-Regzoo-Token"
"""Header carrying the session's token on every state-changing request."""

SLIDER_STEPS = 1000
"""Positions of a parameter slider, evenly spaced on the parameter's own scale."""

MAX_BODY = 64 * 1024
MAX_REFINE_STEPS = 10_000

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Number] | None = Field(
        None, description="free parameter values by short or full name (defaults fill the rest)"
    )


class UpdateRequest(_Request):
    """``POST /api/update``: move to ``params`` and show the planes through ``slices``."""

    slices: tuple[StrictInt, StrictInt, StrictInt] | None = Field(
        None, description="the voxel (i, j, k) the three planes pass through"
    )


class RefineRequest(_Request):
    """``POST /api/refine``: move to ``params`` and refine for ``steps`` iterations."""

    steps: Annotated[int, Field(strict=True, ge=1, le=MAX_REFINE_STEPS)] | None = None


class SaveRequest(_Request):
    """``POST /api/save``: write the result at ``params``."""


class CancelRequest(BaseModel):
    """``POST /api/refine/cancel``: an empty object (or no body)."""

    model_config = ConfigDict(extra="forbid")


_Body = TypeVar("_Body", bound=BaseModel)


class _RequestError(Exception):
    """A request the API refuses, with the status code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@cache
def _templates() -> jinja2.Environment:
    """The page templates (package data), compiled once, every value HTML-escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("regzoo.explore", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


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
        return _canonical(header[1:end])
    if header.count(":") > 1:  # a bare IPv6 address (``--host ::1``)
        return _canonical(header)
    return _canonical(header.split(":", 1)[0])


def _canonical(host: str) -> str:
    """An IP address in its one spelling (``0:0:0:0:0:0:0:1`` -> ``::1``, an IPv4-mapped
    IPv6 address -> the IPv4 one); a name as given."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped if mapped is not None else address)


def render_page(session: ExploreSession, *, refine_steps: int = 30, token: str = "") -> str:
    """The page's HTML: one range input per free parameter (log-spaced where the parameter's
    scale is log; the value is shown in the parameter's own units), three slice-position
    controls, the overlay switches, the refine and save buttons and the readouts."""
    current = session.params
    specs = session.model.objective.space
    parameters = [
        {
            **p,
            "value": current[p["name"]],
            "position": _slider_position(spec, current[p["name"]]),
            "low_repr": repr(p["low"]),
            "high_repr": repr(p["high"]),
        }
        for p, spec in zip(session.parameters(), specs, strict=True)
    ]
    return (
        _templates()
        .get_template("index.html")
        .render(
            parameters=parameters,
            shape=list(session.shape),
            slider_steps=SLIDER_STEPS,
            refine_steps=refine_steps,
            out=str(session.out) if session.out else "off (no --out)",
            token=token,
        )
    )


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
    """The body, refused with 413 as soon as it exceeds `MAX_BODY` (by its announced
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


async def _body(request: Request, model: type[_Body]) -> _Body:
    """The request's JSON body validated by ``model`` (an empty body: every field unset)."""
    body = await _read_body(request)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise _RequestError(f"invalid request: {problems}") from None


Endpoint = Callable[[Request], Awaitable[Response]]


def _api(endpoint: Endpoint) -> Endpoint:
    """Answer refused requests and user errors with ``{"error": message}``; a bug keeps its
    traceback (Starlette answers 500)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except RegzooError as exc:
            message = exc.args[0] if exc.args else str(exc)
            return JSONResponse({"error": str(message)}, status_code=400)

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
        allowed_hosts: ``Host`` header values the app answers (IP addresses in any spelling);
            the loopback names by default, which stops other web pages from reaching the API
            through DNS rebinding. There is no wildcard: the guard holds on every address.
        token: the session's token ([`TOKEN_HEADER`][regzoo.explore.app.TOKEN_HEADER]; random by
            default). The page carries it; the app keeps it in ``app.state.token``.
    """
    state: dict[str, RefineJob | None] = {"job": None}
    token = token or secrets.token_urlsafe(24)
    hosts = {h for h in map(host_name, allowed_hosts) if h}

    def check_host(request: Request) -> None:
        if host_name(request.headers.get("host")) not in hosts:
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

    static = StaticFiles(packages=[("regzoo.explore", "static")])

    def host_checked(files: StaticFiles) -> ASGIApp:
        """The script and style, answered only to a request naming this server."""

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                check_host(Request(scope))
            except _RequestError as exc:
                response = Response(str(exc), status_code=exc.status, media_type="text/plain")
                await response(scope, receive, send)
                return
            await files(scope, receive, send)

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
        update = await _body(request, UpdateRequest)
        params, slices = update.params, update.slices
        refuse_while_refining()

        def work() -> dict[str, Any]:
            if params is not None:
                session.update(params)
            return session.view(slices)

        return JSONResponse(await run_in_threadpool(work))

    async def api_refine_start(request: Request) -> Response:
        refine = await _body(request, RefineRequest)
        params, steps = refine.params, refine.steps or refine_steps
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
        await _body(request, CancelRequest)
        job = state["job"]
        if job is None or not job.running:
            return JSONResponse({"running": False, "cancelled": False})
        await run_in_threadpool(job.cancel)
        return JSONResponse(job.status())

    async def api_save(request: Request) -> Response:
        params = (await _body(request, SaveRequest)).params
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
        Mount("/static", app=host_checked(static), name="static"),
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
