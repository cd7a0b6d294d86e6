"""Run the application under uvicorn, with the connection limits of service/limits.py.

uvicorn closes idle keep-alive connections and caps connections (`limit_concurrency`, beyond which it answers
503), and h11 caps a request head's size; but a client that opens a connection and trickles its header bytes
would hold it forever. `HeaderDeadlineProtocol` closes a connection that has no request in the application
`header_timeout_s` after it opened or after its last answer; the application's RequestDeadline covers the body.
"""
from __future__ import annotations

import socket
from functools import partial
from pathlib import Path
from typing import Sequence

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from protloc.errors import ProtlocError
from protloc.service.limits import ServiceLimits

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
HEALTH_PATH = "/health"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; h11's default, stated because it is a limit we rely on


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the request head (a slowloris defence)."""

    def __init__(self, *args, header_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.head_deadline = None

    # uvicorn answers 503 to every request past its connection limit, /health too, so a monitor would take a
    # busy server for a dead one. It reads `limit_concurrency` right after it has parsed the request line into
    # `self.scope`: for GET /health (no work, no upload) there is then no limit.
    @property
    def limit_concurrency(self) -> int | None:
        scope = getattr(self, "scope", None) or {}
        if scope.get("method") == "GET" and scope.get("path") == HEALTH_PATH:
            return None
        return self._limit_concurrency

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit_concurrency = value

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_head_deadline()

    def connection_lost(self, exc) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _start_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if not self.transport.is_closing():
            self.head_deadline = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_overdue(self) -> None:
        self.head_deadline = None
        in_application = self.cycle is not None and not self.cycle.response_complete
        if not in_application and not self.transport.is_closing():
            if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                self.logger.info("closed a connection that sent no complete request in %g s", self.header_timeout_s)
            self.transport.close()


def default_allowed_hosts(host: str) -> list[str]:
    """Host headers that name this server: the bound address, plus this machine's names when bound to all
    interfaces. Anything else (a DNS-rebinding page, say) gets 400."""
    if host in LOOPBACK_HOSTS:
        return list(LOOPBACK_HOSTS)
    if host not in WILDCARD_HOSTS:
        return [host]
    names = {*LOOPBACK_HOSTS, socket.gethostname(), socket.getfqdn()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass  # a machine whose own name does not resolve: its names above still count
    return sorted(name for name in names if name)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); a ProtlocError when the address cannot be had."""
    if not 0 <= port <= 65535:
        raise ProtlocError(f"port {port}: expected 0..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ProtlocError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, engine: str = "torch",
          onnx_path: str | Path | None = None, device: str = "cpu", precision: str = "auto",
          limits: ServiceLimits | None = None, allowed_hosts: Sequence[str] = (), cors_origins: Sequence[str] = (),
          log_level: str = "info") -> None:
    """Load the run, bind host:port, serve until interrupted. The run is loaded first, so a broken run folder
    fails with a ProtlocError before any port is taken."""
    import uvicorn

    from protloc.inference.predictor import load_predictor
    from protloc.service.app import create_app

    limits = limits or ServiceLimits()
    predictor = load_predictor(run_dir, device=device, engine=engine, onnx_path=onnx_path, precision=precision)
    explainer = load_predictor(run_dir, device=device, engine="torch", precision="fp32") if engine == "onnx" else None
    hosts = ["*"] if "*" in allowed_hosts else [*default_allowed_hosts(host), *allowed_hosts]
    app = create_app(predictor, run_name=Path(run_dir).resolve().name, engine=engine, limits=limits,
                     allowed_hosts=hosts, cors_origins=cors_origins, explainer=explainer)
    sock = bind(host, port)
    config = uvicorn.Config(
        app, http=partial(HeaderDeadlineProtocol, header_timeout_s=limits.header_timeout_s),
        limit_concurrency=limits.max_connections, timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, server_header=False, proxy_headers=False,
        log_level=log_level, timeout_graceful_shutdown=5,
    )
    print(f"serving {run_dir} on {url_of(sock)} (Ctrl-C to stop)", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        app.state.runtime.close()
