"""An HTTP server for the standard library's ``http.server`` that survives hostile and careless clients.

``GuardedHTTPServer`` serves each connection on a thread, as ``ThreadingHTTPServer`` does, but with a listen
backlog that does not reset clients under modest concurrency, a cap on connections served at once (more
get 503 at once instead of a thread each), a socket timeout on every connection (idle keep-alive ones
too), and no console output for clients that vanish mid-request (one line, never a traceback, for anything
else). ``GuardedHandler`` reads request bodies in chunks within a deadline and turns socket failures into
``Disconnected``. ``json_object``, the ``*_field`` and the ``*_parameter`` functions check a client's JSON
request and query string strictly (only the named fields; a number is a JSON number, never a bool or a string,
finite and within bounds), raising ``BadRequest`` (a 400) otherwise.
``ctgen.explorer.explore`` builds on all of these.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

__all__ = ["BODY_DEADLINE_S", "MAX_CONNECTIONS", "REQUEST_TIMEOUT_S", "BadRequest", "Disconnected",
           "GuardedHTTPServer", "GuardedHandler", "choice_field", "disconnects", "float_parameter", "int_parameter",
           "json_object", "number_field", "numbers_field", "one_line", "query_parameters"]

REQUEST_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed (idle keep-alive too)
BODY_DEADLINE_S = 120.0  # a request body must arrive within this, however it trickles in
MAX_CONNECTIONS = 64  # served at once (one thread each); more get 503


class Disconnected(Exception):
    """The client went away (reset, closed, or silent past the timeout) while we read or wrote."""


class BadRequest(Exception):
    """The client's request is malformed: answered 400 with this one-line message."""


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


# ---------------------------------------------------------------------------------------- request fields
def _kind(value: Any) -> str:
    """What a JSON value is, for error messages (never the value itself: it may be huge)."""
    kinds = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return kinds.get(type(value), "a number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_field(value: Any, name: str, *, bound: float) -> float:
    """A JSON number (int or float, not a bool or a string), finite, within ±``bound``; as a float.

    Raises BadRequest. Huge integers are compared before they are converted, so they never overflow."""
    if not _is_number(value):
        raise BadRequest(f"{name} must be a number, got {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name} contains NaN or infinite values")
    if not -bound <= value <= bound:
        raise BadRequest(f"{name} values must lie within ±{bound:g}")
    return float(value)


def numbers_field(value: Any, name: str, *, length: int, bound: float) -> list[float]:
    """A JSON array of exactly ``length`` numbers, each as ``number_field``. Raises BadRequest."""
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of {length} numbers, got {_kind(value)}")
    if len(value) != length:
        raise BadRequest(f"{name} must hold {length} numbers, got {len(value)}")
    for index, item in enumerate(value):
        if not _is_number(item):
            raise BadRequest(f"{name} must be a list of numbers: {name}[{index}] is {_kind(item)}")
    return [number_field(item, name, bound=bound) for item in value]


def choice_field(value: Any, name: str, choices: Sequence[str]) -> str:
    """A JSON string among ``choices`` (compared in lower case). Raises BadRequest."""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, got {_kind(value)}")
    text = value.strip().lower()
    if text not in choices:
        *others, last = choices
        raise BadRequest(f"unknown {name} {one_line(value)[:40]!r}: use {', '.join(others)} or {last}")
    return text


def json_object(data: bytes, fields: Sequence[str]) -> dict[str, Any]:
    """A request body that is a JSON object with no fields but ``fields`` (standard JSON: no NaN or Infinity,
    nesting within the parser's recursion limit). Raises BadRequest."""
    try:
        request = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("request is not valid JSON (nested too deeply)") from None
    except ValueError as error:  # bad JSON or UTF-8, NaN/Infinity, a number of thousands of digits
        raise BadRequest(f"request is not valid JSON ({one_line(str(error))[:120]})") from None
    if not isinstance(request, dict):
        raise BadRequest("request must be a JSON object")
    unknown = [key for key in request if key not in fields]
    if unknown:
        raise BadRequest(f"unknown field {one_line(unknown[0])[:40]!r} (this request takes {', '.join(fields)})")
    return request


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def query_parameters(text: str, allowed: Sequence[str]) -> dict[str, list[str]]:
    """A query string's parameters (blank ones kept); any not in ``allowed`` is a BadRequest."""
    query = parse_qs(text, keep_blank_values=True)
    unknown = [key for key in query if key not in allowed]
    if unknown:
        takes = f"this request takes {', '.join(allowed)}" if allowed else "this request takes none"
        raise BadRequest(f"unknown parameter {one_line(unknown[0])[:40]!r} ({takes})")
    return query


def int_parameter(query: dict[str, list[str]], name: str, default: int, *, high: int) -> int:
    """Query parameter ``name`` (its last value) as a whole number from 0 to ``high``; ``default`` when absent."""
    values = query.get(name)
    if not values:
        return default
    text = values[-1].strip()
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > high:
        raise BadRequest(f"{name} must be a whole number from 0 to {high}, got {one_line(text)[:40]!r}")
    return int(text)


def float_parameter(query: dict[str, list[str]], name: str, default: float, *, high: float) -> float:
    """Query parameter ``name`` (its last value) as a number from 0 to ``high``; ``default`` when absent."""
    values = query.get(name)
    if not values:
        return default
    text = values[-1].strip()
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= high:  # NaN fails too
        raise BadRequest(f"{name} must be a number from 0 to {high:g}, got {one_line(text)[:40]!r}")
    return value
