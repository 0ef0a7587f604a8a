"""The latent explorer behind ``ctgen explore``: a local HTTP server (standard library only) for the page in
``ctgen/explorer/static``.

Endpoints: ``GET /`` (the page) and its static files; ``GET /api/state`` (model summary, units by KL with
the factor of each bound unit and its mapping to physical values, display windows, the start vector);
``POST /api/decode`` {z, window} -> PNG; ``POST /api/encode`` (raw
DICOM bytes) -> {z}; ``GET /api/sample?seed=N[&temperature=T]`` -> {z}; ``POST /api/export``
{z, format: png|dcm|json, window} -> a file. Errors are JSON ``{"error": "<one line>"}`` with status 400
(bad request), 403 (another site's page, or a Host that is not this machine on loopback), 404, 405,
411 (no length), 413 (upload too large), 500 or 503 (too many connections). Every JSON answer is standard
JSON (no NaN or Infinity).

Hostile clients: every request field is checked strictly, in one place per endpoint (``_FIELDS``, ``_QUERY``):
unknown fields, wrong JSON types (a bool or a string where a number is due), non-finite numbers, values out
of bounds and deep JSON nesting are a 400, as is an upload the reader cannot read, whatever broke in it;
client input never gets a 500. Each connection has a socket timeout and a deadline for its body, the number
of connections is capped, and clients that vanish mid-request are dropped without a word on the console.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import socketserver
import tempfile
import threading
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from ctgen import __version__
from ctgen.api import Generator
from ctgen.defaults import BRAIN_WINDOW
from ctgen.errors import CtgenError, InputError
from ctgen.explorer.serving import (
    MAX_CONNECTIONS, REQUEST_TIMEOUT_S, BadRequest, Disconnected, GuardedHandler, GuardedHTTPServer, choice_field,
    disconnects, float_parameter, int_parameter, json_object, numbers_field, one_line, query_parameters,
)

__all__ = ["MAX_UPLOAD_BYTES", "ExploreServer", "is_loopback", "start_server"]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # one DICOM slice; larger uploads get 413
MAX_JSON_BYTES = 1024 * 1024  # a latent vector in JSON is a few kB
_DRAIN_LIMIT = 128 * 1024 * 1024  # read and drop an oversize body up to this, so the client sees the 413
VISIBLE_UNITS = 10  # sliders shown unfolded; the rest go into a <details>
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 10.0  # the prior is N(0, T²); beyond this the decoder only sees noise
MAX_LATENT_VALUE = 1000.0  # |z| per unit; the sliders span ±4
MAX_WINDOW_HU = 100_000.0  # |center| and width of a display window given as numbers
MAX_FILENAME = 255
_FIELDS = {"/api/decode": ("z", "window"), "/api/export": ("z", "format", "window")}  # JSON request fields
_QUERY = {"/api/sample": ("seed", "temperature")}  # query parameters; other endpoints take none
_STATIC = {  # URL path -> (file in ctgen/explorer/static, content type)
    "/": ("explore.html", "text/html; charset=utf-8"),
    "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/explore.css": ("explore.css", "text/css; charset=utf-8"),
}
_EXPORT_TYPES = {"png": "image/png", "dcm": "application/dicom", "json": "application/json"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ExploreServer(GuardedHTTPServer):
    """Serves the explorer for one ``Generator``; requests run on threads, inference one at a time.

    ``start``: the latent (L,) the page starts from (None: the prior mean), described by ``start_label``.
    ``seed``: the page's first random-sample seed. ``window``: the first display window (center, width) in HU.
    ``request_timeout_s``, ``max_connections``: see ``ctgen.explorer.serving.GuardedHTTPServer``.
    """

    def __init__(self, generator: Generator, address: tuple[str, int], *, start: np.ndarray | None = None,
                 start_label: str = "prior mean", seed: int = 0, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 window: tuple[float, float] = BRAIN_WINDOW, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.generator = generator
        self.start = np.zeros(generator.latent_size, np.float32) if start is None else np.asarray(start, np.float32)
        self.start_label = start_label
        self.seed = seed
        self.window = (float(window[0]), float(window[1]))
        self.max_upload_bytes = max_upload_bytes
        self.inference_lock = threading.Lock()
        super().__init__(address, _Handler, request_timeout_s=request_timeout_s, max_connections=max_connections)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version does a reverse DNS lookup (getfqdn)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def state(self) -> dict[str, Any]:
        """What the page needs to build itself (JSON-ready)."""
        from ctgen.images.render import WINDOWS

        generator = self.generator
        kl = generator.kl_per_unit
        factors = generator.unit_factors
        windows = {name: list(window) for name, window in WINDOWS.items()}
        if self.window not in WINDOWS.values():
            windows["start"] = list(self.window)
        bound_of = {bound.unit: bound for bound in generator.bound_units}
        units = [{"unit": unit, "rank": rank, "kl": None if kl is None else kl[unit],
                  "factor": bound_of[unit].factor if unit in bound_of else factors.get(unit),
                  "bound": ({"unit_of_measure": bound_of[unit].unit_of_measure, "mean": bound_of[unit].mean,
                             "std": bound_of[unit].std} if unit in bound_of else None)}
                 for rank, unit in enumerate(generator.units_by_kl, start=1)]
        return {
            "ctgen": __version__,
            "model": {"name": generator.card.get("name"), "image_size": generator.image_size,
                      "spacing_mm": generator.grid.spacing_mm, "window_hu": list(generator.grid.window_hu),
                      "provider": generator.model.provider},
            "latent_size": generator.latent_size,
            "units": units,
            "visible_units": VISIBLE_UNITS,
            "windows": windows,
            "window": next(name for name, window in windows.items() if tuple(window) == self.window),
            "start": {"z": self.start.tolist(), "label": self.start_label},
            "seed": self.seed,
            "max_upload_bytes": self.max_upload_bytes,
        }

    def decode_hu(self, z: np.ndarray) -> np.ndarray:
        """One latent (L,) -> HU float32 (S, S)."""
        with self.inference_lock:
            return self.generator.decode(z[None])[0]

    def encode_upload(self, data: bytes, name: str) -> np.ndarray:
        """Raw DICOM bytes -> mu (L,). Raises InputError naming the upload, never the temporary file."""
        handle, temporary = tempfile.mkstemp(prefix="ctgen-upload-", suffix=".dcm")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            try:
                image = self.generator.load(temporary, source=name)
            except CtgenError as error:
                reason = getattr(error, "reason", None) or str(error)
            except Exception as error:  # noqa: BLE001 - a hostile upload may break the reader in any way: a 400
                reason = f"cannot read: {type(error).__name__}: {error}"
            else:
                with self.inference_lock:
                    return self.generator.encode(image)[0]
            raise InputError(name, one_line(reason.replace(temporary, name)))
        finally:
            Path(temporary).unlink(missing_ok=True)


def start_server(generator: Generator, *, host: str = "127.0.0.1", port: int = 8765, **options: Any) -> ExploreServer:
    """Bind an ``ExploreServer`` and serve it on a daemon thread; returns it (``shutdown()`` to stop).

    ``port`` 0 picks a free port (see ``server.url``). Options as ``ExploreServer``.
    """
    server = ExploreServer(generator, (host, port), **options)
    threading.Thread(target=server.serve_forever, name="ctgen-explore", daemon=True).start()
    return server


class _Handler(GuardedHandler):
    server: ExploreServer
    server_version = f"ctgen-explore/{__version__}"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: Nagle + delayed ACK would add 40 ms
    # no access log (GuardedHandler's): a dragged slider makes dozens of requests a second

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch({"/api/state": self._state, "/api/sample": self._sample})

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/api/decode": self._decode, "/api/encode": self._encode, "/api/export": self._export})

    def _dispatch(self, routes: dict[str, Any]) -> None:
        url = urlsplit(self.path)
        self._body_read = self.command != "POST"
        try:
            self._check_site()
            route = routes.get(url.path)
            if route is not None:
                self._fields = _FIELDS.get(url.path, ())
                route(query_parameters(url.query, _QUERY.get(url.path, ())))
            elif self.command == "GET" and url.path in _STATIC:
                self._static(*_STATIC[url.path])
            elif url.path in _STATIC or url.path.startswith("/api/"):
                raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on {url.path}")
            else:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except Disconnected:
            self.close_connection = True
        except _HttpError as error:
            self._fail(error.message, error.status)
        except BadRequest as error:
            self._fail(str(error), HTTPStatus.BAD_REQUEST)
        except CtgenError as error:
            self._fail(str(error), HTTPStatus.BAD_REQUEST)
        except Exception as error:  # noqa: BLE001 - one bad request must never stop the server
            self._fail(f"internal error: {type(error).__name__}: {error}", HTTPStatus.INTERNAL_SERVER_ERROR)

    def _fail(self, message: str, status: HTTPStatus) -> None:
        if not self._body_read:
            self.close_connection = True  # an unread request body would garble the next request
        try:
            self._json({"error": one_line(message)}, status)
        except Disconnected:
            self.close_connection = True

    def _check_site(self) -> None:
        """Refuse other web sites' pages: a foreign Origin (cross-site requests) and, on loopback, a foreign
        Host (DNS rebinding: evil.example resolving to 127.0.0.1). Scripts send neither and pass."""
        host = self.headers.get("Host", "")
        if is_loopback(str(self.server.server_address[0])) and host and not is_loopback(_hostname(host)):
            raise _HttpError(HTTPStatus.FORBIDDEN, f"refused: Host {host!r} is not this machine")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != host:
            raise _HttpError(HTTPStatus.FORBIDDEN, f"refused: a page from {origin!r} may not use the explorer")

    # ------------------------------------------------------------------------------------ endpoints
    def _static(self, filename: str, content_type: str) -> None:
        body = resources.files("ctgen.explorer").joinpath("static", filename).read_bytes()
        self._send(body, content_type, headers={"Cache-Control": "no-cache"})

    def _state(self, query: dict[str, list[str]]) -> None:
        self._json(self.server.state())

    def _sample(self, query: dict[str, list[str]]) -> None:
        seed = int_parameter(query, "seed", self.server.seed, high=MAX_SEED)
        temperature = float_parameter(query, "temperature", 1.0, high=MAX_TEMPERATURE)
        z = self.server.generator.latents(1, seed=seed, temperature=temperature)[0]
        self._json({"z": z.tolist(), "seed": seed, "temperature": temperature})

    def _decode(self, query: dict[str, list[str]]) -> None:
        request = self._read_json()
        z, window = self._latent(request), self._window(request)
        self._send(_png(self.server.decode_hu(z), window), "image/png")

    def _encode(self, query: dict[str, list[str]]) -> None:
        name = Path(unquote(self.headers.get("X-Filename") or "")).name or "upload.dcm"  # the page URL-encodes it
        name = one_line(name)[:MAX_FILENAME]
        data = self._read_body(self.server.max_upload_bytes, what="DICOM upload")
        if not data:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{name}: empty upload")
        z = self.server.encode_upload(data, name)
        self._json({"z": z.tolist(), "label": name})

    def _export(self, query: dict[str, list[str]]) -> None:
        request = self._read_json()
        file_format = choice_field(request.get("format", "png"), "export format", list(_EXPORT_TYPES))
        z, window = self._latent(request), self._window(request)
        generator = self.server.generator
        if file_format == "json":
            body = json.dumps({"model": generator.card.get("name"), "encoder_sha256": generator.card.encoder_sha256,
                               "latent_size": generator.latent_size,
                               "z": z.tolist(), "ctgen": __version__}, indent=1).encode() + b"\n"
        else:
            hu = self.server.decode_hu(z)
            body = _png(hu, window) if file_format == "png" else _dicom(generator, hu, window)
        self._send(body, _EXPORT_TYPES[file_format],
                   headers={"Content-Disposition": f'attachment; filename="ctgen-explore.{file_format}"'})

    # ------------------------------------------------------------------------------------ helpers
    def _latent(self, request: dict[str, Any]) -> np.ndarray:
        """The request's ``z``: a JSON array of exactly L numbers, each finite and within ±MAX_LATENT_VALUE."""
        size = self.server.generator.latent_size
        return np.asarray(numbers_field(request.get("z"), "z", length=size, bound=MAX_LATENT_VALUE), np.float32)

    def _window(self, request: dict[str, Any]) -> tuple[float, float]:
        """The request's display window: a name from the state's windows ("start" too), "C,W", or [center,
        width] in HU; brain when absent."""
        from ctgen.images.render import parse_window

        spec = request.get("window", "brain")
        if isinstance(spec, list):
            center, width = numbers_field(spec, "window", length=2, bound=MAX_WINDOW_HU)
            return parse_window(f"{center!r},{width!r}")
        if not isinstance(spec, str):
            raise BadRequest(f"window must be a name, \"C,W\" or [center, width], got {type(spec).__name__}")
        if spec.strip().lower() == "start":
            return self.server.window
        return parse_window(spec[:80])

    def _read_body(self, limit: int, *, what: str) -> bytes:
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self.close_connection = True
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, f"{what}: send a Content-Length")
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{what}: bad Content-Length {length_text!r}")
        if length > limit:
            self.close_connection = True
            if length <= _DRAIN_LIMIT:  # otherwise the client may see a reset instead of the answer
                self.receive(length, keep=False)
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"{what} too large: {length / 2**20:.1f} MiB (limit {limit / 2**20:g} MiB)")
        data = self.receive(length, keep=True)
        self._body_read = True
        if len(data) != length:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{what}: connection closed after {len(data)} of {length} bytes")
        return data

    def _read_json(self) -> dict[str, Any]:
        return json_object(self._read_body(MAX_JSON_BYTES, what="JSON request"), self._fields)

    def _json(self, payload: dict[str, Any], status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(payload, allow_nan=False).encode(), "application/json", status)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        with disconnects():
            self.end_headers()
            self.wfile.write(body)


def _hostname(host: str) -> str:
    return urlsplit(f"//{host}").hostname or ""


def _png(hu: np.ndarray, window: tuple[float, float]) -> bytes:
    from PIL import Image

    from ctgen.images.render import to_uint8

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(hu, window), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _dicom(generator: Generator, hu: np.ndarray, window: tuple[float, float]) -> bytes:
    """One derived, de-identified CT image of ``hu`` (``ctgen.io.writers.derived_series``), as bytes; the same
    image gives the same bytes (UIDs derive from the model, the pixels and the window)."""
    import hashlib
    import warnings

    import pydicom

    from ctgen.io.writers import derived_series

    writer = derived_series((1, *hu.shape), "explore export", card=generator.card,
                            spacing_mm=generator.grid.spacing_mm, action="explore", window=window,
                            key=[hashlib.sha256(hu.tobytes()).hexdigest(), str(window)])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buffer, writer.dataset(0, hu), enforce_file_format=True)
    return buffer.getvalue()
