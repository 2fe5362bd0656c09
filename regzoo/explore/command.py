"""``regzoo explore``: its arguments, and the command that loads the model and serves the page.

This module imports nothing heavy, so the CLI can build its parser without the optional web
dependencies; they are imported when the command runs, with one clear error if missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regzoo._errors import InputError, RegzooError

if TYPE_CHECKING:
    from regzoo.refinement import RefineOptions

__all__ = [
    "DEFAULT_PORT",
    "add_arguments",
    "allowed_hosts",
    "explore_command",
    "require_web",
    "run",
]

DEFAULT_PORT = 8765
INSTALL_HINT = "pip install 'regzoo[explore]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``regzoo explore``'s options to ``parser``."""
    from regzoo.cli.arguments import add_model_argument

    add_model_argument(parser)
    parser.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    parser.add_argument("--moving", required=True, help="moving image (NIfTI, same grid)")
    parser.add_argument(
        "--fixed-seg", metavar="NIFTI", help="fixed mask or label map (contours; Dice)"
    )
    parser.add_argument(
        "--moving-seg",
        metavar="NIFTI",
        help="moving mask or label map, warped with the image (contours; Dice; saved)",
    )
    parser.add_argument(
        "--fixed-labels",
        metavar="NIFTI",
        help="the fixed image's label map, for a model with per-label parameters (its "
        "objective, refinement and parameter maps; as in `regzoo register`)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="starting value of a free parameter, e.g. mu=0.03 (repeatable; defaults otherwise)",
    )
    parser.add_argument(
        "--out",
        default="explore-result",
        help="folder the page's save button writes to, the same files as `regzoo register` "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--refine-steps",
        type=int,
        default=30,
        metavar="N",
        help="refine button's default iterations (default: %(default)s)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import this plugin module or .py file (repeatable): a plugin named in a "
        "checkpoint is never imported unless you name it here",
    )
    parser.add_argument(
        "--native-grid",
        action="store_true",
        help="run the network on the images' own grid instead of at the spacing the model was "
        "trained at",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; e.g. this machine's "
        "network name when --host 0.0.0.0): every other name is refused, on every address",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port (default: %(default)s; 0: any free port)",
    )


def explore_command(
    model: str | Path,
    fixed: str | Path,
    moving: str | Path,
    *,
    fixed_seg: str | Path | None = None,
    moving_seg: str | Path | None = None,
    fixed_labels: str | Path | None = None,
    params: Mapping[str, float] | None = None,
    refine: RefineOptions | Mapping[str, Any] | None = None,
) -> str:
    """The shell-quoted ``regzoo explore`` command for one pair, starting at ``params`` (what
    a sweep report prints to open its best setting in the explorer), its refine button set to
    ``refine`` (`to_flags`; its steps are the button's)."""
    words = ["regzoo", "explore", "--model", str(model), "--fixed", str(fixed)]
    words += ["--moving", str(moving)]
    for flag, path in (
        ("--fixed-seg", fixed_seg),
        ("--moving-seg", moving_seg),
        ("--fixed-labels", fixed_labels),
    ):
        if path is not None:
            words += [flag, str(path)]
    for name, value in (params or {}).items():
        words += ["--param", f"{name}={value:.6g}"]
    from regzoo.cli.refine_flags import to_flags

    words += to_flags(refine or {})
    return shlex.join(words)


def require_web() -> None:
    """Check that the optional web dependencies are installed.

    Raises:
        RegzooError: naming the missing package and the command that installs the extra.
    """
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RegzooError(
            f"the explorer needs the optional web dependencies ({exc.name} is missing): "
            f"{INSTALL_HINT}"
        ) from None


def allowed_hosts(host: str, allow: Sequence[str] = ()) -> list[str]:
    """``Host`` header values to answer for a server on ``host`` (a DNS-rebinding guard that
    holds on every address): the loopback names, ``host`` itself unless it is a wildcard
    (``0.0.0.0``, ``::``), and the names ``allow`` (``--allow-host``) adds; never any name.

    Raises:
        InputError: an ``allow`` entry that is not a host name or address.
    """
    import ipaddress

    from regzoo.explore.app import LOOPBACK_HOSTS, host_name

    names = list(LOOPBACK_HOSTS)
    bound = host_name(host)
    if bound:
        try:
            wildcard = ipaddress.ip_address(bound).is_unspecified
        except ValueError:
            wildcard = False
        if not wildcard and bound not in names:
            names.append(bound)
    for name in allow:
        canonical = host_name(name)
        if not canonical or canonical == "*" or any(c in canonical for c in "*/ \t@?#"):
            raise InputError(f"--allow-host {name!r} is not a host name or address")
        if canonical not in names:
            names.append(canonical)
    return names


def _loopback(host: str) -> bool:
    """``host`` is a loopback address or ``localhost``."""
    import ipaddress

    from regzoo.explore.app import host_name

    name = host_name(host) or ""
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


def run(args: argparse.Namespace, refine: RefineOptions | None = None) -> int:
    """Run ``regzoo explore``: load the model and images, print the URL, serve until Ctrl+C.

    ``refine`` holds the refine button's settings (``regzoo explore --refine-similarity ...``,
    `regzoo.cli.refine_flags.from_flags`).

    Raises:
        RegzooError: without the ``explore`` extra, or when the port cannot be bound.
        InputError: invalid images, parameters or options.
    """
    require_web()
    from regzoo.refinement import check_steps

    check_steps(args.refine_steps, minimum=1, what="--refine-steps")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    hosts = allowed_hosts(args.host, getattr(args, "allow_host", []))
    from regzoo.checkpoint import load_model
    from regzoo.explore.app import create_app
    from regzoo.explore.server import ExplorerServer
    from regzoo.explore.session import REFINE_LEVELS, ExploreSession
    from regzoo.params import parse_params

    params = parse_params(args.param)
    model = load_model(args.model, plugins=args.plugin)
    model.at_training_spacing = not args.native_grid
    session = ExploreSession(
        model,
        args.fixed,
        args.moving,
        fixed_seg=args.fixed_seg,
        moving_seg=args.moving_seg,
        fixed_labels=args.fixed_labels,
        out=args.out,
        params=params,
        checkpoint=args.model,
        refine=None if refine is None else dataclasses.replace(refine, levels=REFINE_LEVELS),
    )
    app = create_app(session, refine_steps=args.refine_steps, allowed_hosts=hosts)
    server = ExplorerServer(app, args.host, args.port)
    if not _loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach it can use the explorer "
            f"(it answers only the Host names {', '.join(hosts)}; add one with --allow-host)",
            file=sys.stderr,
        )
    print(f"regzoo explore: open {server.url} (Ctrl+C stops)", flush=True)
    server.run()
    return 0
