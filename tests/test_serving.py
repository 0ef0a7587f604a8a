"""ctgen.explorer.serving: the strict checkers of a client's JSON fields and query parameters, ``one_line``, and
``GuardedHTTPServer`` with a minimal handler (the connection cap, one line for a handler's bug). The explorer's
endpoints on top of these are tested in test_explore.py."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest

from ctgen.explorer.serving import (
    BadRequest,
    Disconnected,
    GuardedHandler,
    GuardedHTTPServer,
    choice_field,
    disconnects,
    float_parameter,
    int_parameter,
    json_object,
    number_field,
    numbers_field,
    one_line,
    query_parameters,
)


def test_one_line_joins_whitespace_and_caps_at_300_characters():
    assert one_line("  a\n\tb  c\r\n") == "a b c"
    long = one_line("x" * 1000)
    assert len(long) == 300 and long.endswith("...")
    assert one_line("y" * 300) == "y" * 300


def test_number_field_takes_finite_json_numbers_within_the_bound():
    assert number_field(3, "t", bound=5) == 3.0 and isinstance(number_field(3, "t", bound=5), float)
    assert number_field(-5.0, "t", bound=5) == -5.0


@pytest.mark.parametrize("value, message", [
    (True, "t must be a number, got a boolean"),
    ("1", "t must be a number, got a string"),
    (None, "t must be a number, got null"),
    ([1], "t must be a number, got a list"),
    (float("nan"), "t contains NaN or infinite values"),
    (float("inf"), "t contains NaN or infinite values"),
    (5.5, "t values must lie within ±5"),
    (10**400, "t values must lie within ±5"),  # compared as an int: no OverflowError
])
def test_number_field_refuses(value, message):
    with pytest.raises(BadRequest) as caught:
        number_field(value, "t", bound=5)
    assert str(caught.value) == message


def test_numbers_field_takes_exactly_length_numbers():
    assert numbers_field([1, 2.5], "z", length=2, bound=10) == [1.0, 2.5]
    for value, message in [({"a": 1}, "z must be a list of 2 numbers, got an object"),
                           ([1], "z must hold 2 numbers, got 1"),
                           ([1, "2"], "z must be a list of numbers: z[1] is a string"),
                           ([1, 11], "z values must lie within ±10")]:
        with pytest.raises(BadRequest) as caught:
            numbers_field(value, "z", length=2, bound=10)
        assert str(caught.value) == message


def test_choice_field_is_case_blind_and_lists_the_choices():
    assert choice_field(" Brain ", "window", ["brain", "bone", "wide"]) == "brain"
    with pytest.raises(BadRequest, match=r"^unknown window 'lung': use brain, bone or wide$"):
        choice_field("lung", "window", ["brain", "bone", "wide"])
    with pytest.raises(BadRequest, match="window must be a string, got a number"):
        choice_field(1, "window", ["brain", "bone"])


def test_json_object_is_strict_json_with_known_fields_only():
    assert json_object(b'{"z": [1, 2]}', ["z", "window"]) == {"z": [1, 2]}
    for data, message in [(b'{"z": NaN}', "not valid JSON (NaN is not a number JSON allows"),
                          (b"[1]", "request must be a JSON object"),
                          (b'{"x": 1}', "unknown field 'x' (this request takes z, window)"),
                          (b"\xff", "not valid JSON"),
                          (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")]:
        with pytest.raises(BadRequest) as caught:
            json_object(data, ["z", "window"])
        assert message in str(caught.value)


def test_query_parameters_and_their_numbers():
    query = query_parameters("n=4&n=7&temperature=0.5&seed=", ["n", "temperature", "seed"])
    assert query == {"n": ["4", "7"], "temperature": ["0.5"], "seed": [""]}
    assert int_parameter(query, "n", 1, high=64) == 7  # the last value
    assert int_parameter(query, "other", 3, high=64) == 3
    assert float_parameter(query, "temperature", 1.0, high=3.0) == 0.5
    assert float_parameter({}, "temperature", 1.0, high=3.0) == 1.0
    with pytest.raises(BadRequest, match=r"unknown parameter 'x' \(this request takes none\)"):
        query_parameters("x=1", [])
    for text in ("-1", "65", "1.5", "9" * 30, ""):
        with pytest.raises(BadRequest, match="n must be a whole number from 0 to 64"):
            int_parameter({"n": [text]}, "n", 1, high=64)
    for text in ("nan", "-0.1", "3.5", "1e400", "x"):
        with pytest.raises(BadRequest, match="temperature must be a number from 0 to 3"):
            float_parameter({"temperature": [text]}, "temperature", 1.0, high=3.0)


def test_disconnects_turns_socket_errors_into_disconnected():
    with pytest.raises(Disconnected), disconnects():
        raise ConnectionResetError
    with pytest.raises(ValueError), disconnects():
        raise ValueError


class _Hello(GuardedHandler):
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/bug":
            raise RuntimeError("a bug\nover two lines")
        if self.path == "/hold":
            self.release.wait(10)
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hello_server():
    server = GuardedHTTPServer(("127.0.0.1", 0), _Hello, request_timeout_s=5, max_connections=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    _Hello.release.set()
    server.shutdown()
    server.server_close()


def test_connections_beyond_the_cap_get_503_and_the_server_recovers(hello_server):
    url, server = hello_server
    _Hello.release.clear()
    held = socket.create_connection(server.server_address[:2], timeout=10)
    held.sendall(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            for _ in range(50):  # until the held connection is counted
                urllib.request.urlopen(url + "/", timeout=10).read()
        assert caught.value.code == 503 and b"too many connections" in caught.value.read()
    finally:
        _Hello.release.set()
        held.close()
    assert server.wait_until_idle(timeout=10)
    assert urllib.request.urlopen(url + "/", timeout=10).read() == b"hello"


def test_a_bug_in_a_handler_is_one_line_on_stderr(hello_server, capfd):
    url, server = hello_server
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url + "/bug", timeout=10).read()
    assert server.wait_until_idle(timeout=10)
    err = capfd.readouterr().err
    assert err == "ctgen: internal error serving 127.0.0.1: RuntimeError: a bug over two lines\n"
