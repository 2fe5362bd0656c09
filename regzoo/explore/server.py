"""Serve the explorer with uvicorn on a socket bound before the server starts (so the URL,
with the port the system chose for ``--port 0``, is known and printed first)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

from regzoo._errors import RegzooError

__all__ = ["ExplorerServer"]


class ExplorerServer:
    """One web application on one bound socket.

    Args:
        app: the application ([`regzoo.explore.app.create_app`][regzoo.explore.app.create_app]).
        host: address to listen on; loopback by default, so only this machine can connect.
        port: TCP port (0: any free port).

    Raises:
        RegzooError: if the address cannot be bound (e.g. the port is taken).
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise RegzooError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/`` (on a wildcard address such as
        ``0.0.0.0``, this machine's loopback one: a name the Host guard answers)."""
        import ipaddress

        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_unspecified:
                host = "::1" if ":" in host else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until interrupted (Ctrl+C)."""
        self._server.run(sockets=[self.socket])

    @contextmanager
    def running(self, timeout: float = 30.0) -> Iterator[str]:
        """Serve in a background thread while the block runs; yields the page's URL.

        Raises:
            RuntimeError: if the server did not start within ``timeout`` seconds.
        """
        thread = threading.Thread(target=self.run, name="regzoo-explore", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise RuntimeError(f"the explorer's server did not start on {self.url}")
            time.sleep(0.02)
        try:
            yield self.url
        finally:
            self._server.should_exit = True
            thread.join(timeout)
