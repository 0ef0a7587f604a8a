"""An HTTP server for the standard library's ``http.server`` that survives hostile and careless clients.

``GuardedHTTPServer`` serves each connection on a thread, as ``ThreadingHTTPServer`` does, but with a listen
backlog that does not reset clients under modest concurrency, a cap on connections served at once (more
get 503 at once instead of a thread each), a socket timeout on every connection (idle keep-alive ones
too), and no console output for clients that vanish mid-request (one line, never a traceback, for anything
else). ``GuardedHandler`` reads request bodies in chunks within a deadline and turns socket failures into
``Disconnected``. ``ctgen.explore`` builds on both.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["BODY_DEADLINE_S", "MAX_CONNECTIONS", "REQUEST_TIMEOUT_S", "Disconnected", "GuardedHTTPServer",
           "GuardedHandler", "disconnects", "one_line"]

REQUEST_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed (idle keep-alive too)
BODY_DEADLINE_S = 120.0  # a request body must arrive within this, however it trickles in
MAX_CONNECTIONS = 64  # served at once (one thread each); more get 503


class Disconnected(Exception):
    """The client went away (reset, closed, or silent past the timeout) while we read or wrote."""


@contextlib.contextmanager
def disconnects() -> Iterator[None]:
    """Socket errors inside the block become ``Disconnected``."""
    try:
        yield
    except OSError as error:
        raise Disconnected() from error


class GuardedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a backlog, a connection cap, socket timeouts and quiet disconnects.

    ``request_timeout_s``: seconds a connection may stay silent (handlers deriving from ``GuardedHandler``
    apply it). ``max_connections``: connections served at once; more are answered 503 and closed.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the listen backlog: socketserver's 5 reset clients under modest concurrency

    def __init__(self, address: tuple[str, int], handler: type, *, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._connections = 0
        self._connections_changed = threading.Condition()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        with self._connections_changed:
            full = self._connections >= self.max_connections
            if not full:
                self._connections += 1
        if full:  # answer at once instead of queueing a thread
            _refuse(request, self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_done()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done()

    def _connection_done(self) -> None:
        with self._connections_changed:
            self._connections -= 1
            self._connections_changed.notify_all()

    def wait_until_idle(self, timeout: float) -> bool:
        """Wait until no connection is being served (or ``timeout`` seconds pass); True when idle."""
        with self._connections_changed:
            return self._connections_changed.wait_for(lambda: self._connections == 0, timeout)

    def handle_error(self, request, client_address) -> None:
        """Clients that vanish (reset, timeout, closed pipe) are not news: nothing is printed for them.

        Anything else escaping a handler is a bug in ctgen: one line on stderr, never a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (OSError, Disconnected)):
            return
        sys.stderr.write(f"ctgen: internal error serving {client_address[0]}: "
                         f"{one_line(f'{type(error).__name__}: {error}')}\n")


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler whose socket times out after the server's ``request_timeout_s``; silent logs."""

    server: GuardedHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # StreamRequestHandler sets it on the socket
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature is http.server's
        pass  # no access log: errors reach the client instead

    def receive(self, length: int, *, keep: bool) -> bytes:
        """Up to ``length`` body bytes (fewer if the client closes), in chunks, within BODY_DEADLINE_S."""
        chunks, received, deadline = [], 0, time.monotonic() + BODY_DEADLINE_S
        while received < length:
            if time.monotonic() > deadline:
                raise Disconnected()
            try:
                chunk = self.rfile.read1(min(length - received, 1 << 20))
            except OSError as error:  # reset, or nothing for request_timeout_s
                raise Disconnected() from error
            if not chunk:
                break
            received += len(chunk)
            if keep:
                chunks.append(chunk)
        return b"".join(chunks)


def _refuse(connection: socket.socket, limit: int) -> None:
    body = json.dumps({"error": f"too many connections (this server serves {limit} at once); try again"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nRetry-After: 1\r\n\r\n").encode()
    try:
        connection.settimeout(1.0)
        connection.sendall(head + body)
    except OSError:
        pass


def one_line(text: str) -> str:
    """Text as one line of at most 300 characters (for JSON error bodies and logs)."""
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."
