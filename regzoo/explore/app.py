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
- ``POST /api/save`` ``{"params": {...}}``: write the result at ``params`` (the refined one if
  the setting was refined) into the folder given on the command line.

Requests that would change the registration while a refinement runs are answered ``409``.
Request bodies are validated by pydantic models; a refused request or a user error (an
unknown parameter, a value outside the trained range: :class:`~regzoo.RegzooError`) is
answered ``400`` with ``{"error": message}``. Anything else is a bug: it is not dressed up as
a user error, and Starlette answers ``500`` and logs its traceback. The script and style are
served by Starlette's ``StaticFiles`` from the package, the page is a Jinja template.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from regzoo._errors import RegzooError
from regzoo.explore.session import ExploreSession, RefineJob
from regzoo.params import ParamSpace, ParamSpec

__all__ = [
    "LOOPBACK_HOSTS",
    "RefineRequest",
    "SaveRequest",
    "UpdateRequest",
    "create_app",
    "render_page",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Loopback host names: the only ``Host`` header values the page answers to when served on
loopback (a DNS-rebinding guard), and the addresses ``regzoo explore`` does not warn about."""

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


def render_page(session: ExploreSession, *, refine_steps: int = 30) -> str:
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
        )
    )


async def _body(request: Request, model: type[_Body]) -> _Body:
    """The request's JSON body validated by ``model`` (an empty body: every field unset)."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise _RequestError("request body too large", 413)
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
) -> Starlette:
    """The explorer's web application for one session.

    Args:
        session: the pair, model and current registration.
        refine_steps: the refine button's default iterations.
        allowed_hosts: ``Host`` header values the app answers (``["*"]``: any); the loopback
            names by default, which stops other web pages from reaching the API through DNS
            rebinding.
    """
    state: dict[str, RefineJob | None] = {"job": None}

    def refining() -> bool:
        job = state["job"]
        return job is not None and job.running

    def refuse_while_refining() -> None:
        if refining():
            raise _RequestError("a refinement is running; wait for it to finish", 409)

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(session, refine_steps=refine_steps))

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
            return JSONResponse({"running": False, "fraction": 0.0, "steps": 0, "error": None})
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

    routes = [
        Route("/", page),
        Mount("/static", app=StaticFiles(packages=[("regzoo.explore", "static")]), name="static"),
        Route("/api/state", _api(api_state)),
        Route("/api/update", _api(api_update), methods=["POST"]),
        Route("/api/refine", _api(api_refine_start), methods=["POST"]),
        Route("/api/refine", _api(api_refine_status), methods=["GET"]),
        Route("/api/save", _api(api_save), methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    return Starlette(routes=routes, middleware=middleware)
