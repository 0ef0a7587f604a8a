"""The explore server (no browser): every endpoint through urllib, the CLI in a subprocess (the Python API it
serves is tested in test_api.py)."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ctgen.api import Generator, load_generator
from ctgen.explorer.explore import MAX_UPLOAD_BYTES, is_loopback, start_server

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE, LATENT = 64, 8  # of the synthetic model


def build_synthetic_model(folder: Path) -> Path:
    """A model folder whose decoder is sigmoid(z @ W + b): b draws a head (air, skull, brain), each row of
    W a smooth pattern, so the image responds to every unit. The encoder projects back onto W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ctgen.runtime.model import sha256_file

    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    y, x = (rows - SIZE / 2 + 0.5) / (SIZE / 2), (cols - SIZE / 2 + 0.5) / (SIZE / 2)
    radius = np.sqrt((x / 0.62) ** 2 + (y / 0.76) ** 2)
    unit = np.where(radius < 0.9, 0.28, 0.0) + np.where((radius >= 0.9) & (radius < 1.0), 0.99, 0.0)
    bias = np.log(np.clip(unit, 0.01, 0.99) / (1 - np.clip(unit, 0.01, 0.99)))
    patterns = [x, y, radius - 0.5, np.cos(np.pi * x) * np.cos(np.pi * y), x * y, np.sin(2 * np.pi * radius),
                np.cos(3 * x), np.sin(3 * y)]
    weights = np.stack([0.8 * p * (radius < 1.0) for p in patterns]).reshape(LATENT, -1).astype(np.float32)
    bias = bias.reshape(-1).astype(np.float32)
    projection = np.linalg.pinv(weights).astype(np.float32)  # (S*S, L)

    def save(graph, path: Path) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="ctgen-tests")
        model.ir_version = 9
        onnx.checker.check_model(model)
        onnx.save(model, path)

    shape = numpy_helper.from_array(np.array([-1, 1, SIZE, SIZE], np.int64), "shape")
    flat = numpy_helper.from_array(np.array([-1, SIZE * SIZE], np.int64), "flat")
    decoder = helper.make_graph(
        [helper.make_node("Gemm", ["z", "weights", "bias"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["unit"]),
         helper.make_node("Reshape", ["unit", "shape"], ["image"])],
        "decoder", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", LATENT])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias"), shape])
    encoder = helper.make_graph(
        [helper.make_node("Reshape", ["image", "flat"], ["pixels"]),
         helper.make_node("Gemm", ["pixels", "projection", "offset"], ["mu"]),
         helper.make_node("Gemm", ["pixels", "zeros", "minus_two"], ["logvar"])],
        "encoder", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("mu", TensorProto.FLOAT, ["N", LATENT]),
         helper.make_tensor_value_info("logvar", TensorProto.FLOAT, ["N", LATENT])],
        [numpy_helper.from_array(projection, "projection"),
         numpy_helper.from_array(-(1 / (1 + np.exp(-bias))) @ projection, "offset"),
         numpy_helper.from_array(np.zeros((SIZE * SIZE, LATENT), np.float32), "zeros"),
         numpy_helper.from_array(np.full(LATENT, -2.0, np.float32), "minus_two"), flat])
    folder.mkdir(parents=True)
    save(decoder, folder / "decoder.onnx")
    save(encoder, folder / "encoder.onnx")
    kl = [2.5, 0.4, 3.1, 0.9, 1.7, 0.05, 0.6, 1.2]
    card = {"format": "ctgen-model", "card_version": 1, "name": "synthetic-test", "image_size": SIZE,
            "spacing_mm": 3.75, "window_hu": [-50.0, 250.0], "latent_size": LATENT,
            "metrics": {"kl_per_unit": kl, "units_by_kl": sorted(range(LATENT), key=lambda u: -kl[u]),
                        "unit_factors": {"2": "brain_scale", "0": "shift_x"}},
            "binding": {"units": [{"unit": 4, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 2.0,
                                   "std": 10.0}], "source": "measured", "fraction": 1.0},
            "files": {name: {"sha256": sha256_file(folder / name)} for name in ("encoder.onnx", "decoder.onnx")}}
    (folder / "model.json").write_text(json.dumps(card, indent=1))
    return folder


@pytest.fixture(scope="module")
def synthetic_generator(tmp_path_factory) -> Generator:
    """The tiny exported VAE is random: its images hardly depend on z. This one visibly does."""
    pytest.importorskip("onnx")
    return load_generator(build_synthetic_model(tmp_path_factory.mktemp("synthetic") / "model"), device="cpu")


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> Generator:
    return load_generator(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(generator):
    server = start_server(generator, host="127.0.0.1", port=0, seed=3)
    yield server
    server.shutdown()
    server.server_close()


def request(server, path: str, body: bytes | dict | None = None, headers: dict | None = None):
    """(status, content type, body bytes) of one request; error statuses are returned, not raised."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    call = urllib.request.Request(server.url.rstrip("/") + path, data=body, headers=headers or {},
                                  method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()


def decode_png(server, z, window="brain") -> np.ndarray:
    status, content_type, body = request(server, "/api/decode", {"z": list(map(float, z)), "window": window})
    assert status == 200, body
    assert content_type == "image/png"
    return np.asarray(Image.open(io.BytesIO(body)))


# ------------------------------------------------------------------------------------------ server
def test_page_and_static_files(server):
    status, content_type, body = request(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode()
    for element in ('id="image"', 'id="latency"', 'id="error"', 'id="dicom-file"', 'id="blend"', 'id="export-dcm"'):
        assert element in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline
    for path, kind in (("/explore.js", "text/javascript"), ("/explore.css", "text/css")):
        status, content_type, body = request(server, path)
        assert status == 200 and content_type.startswith(kind) and body
    assert request(server, "/nope")[0] == 404
    assert request(server, "/api/state", {"z": []})[0] == 405


def test_state(server, generator):
    status, _, body = request(server, "/api/state")
    state = json.loads(body)
    assert status == 200
    assert state["latent_size"] == 8 and state["model"]["image_size"] == 64
    assert [unit["unit"] for unit in state["units"]] == generator.units_by_kl
    assert state["units"][0] == {"unit": 0, "rank": 1, "kl": 3.0, "factor": None, "bound": None}
    assert state["windows"]["brain"] == [40.0, 80.0] and set(state["windows"]) == {"brain", "subdural", "bone"}
    assert state["start"] == {"z": [0.0] * 8, "label": "prior mean"} and state["seed"] == 3


def test_unit_factors_from_card(tiny_model_copy):
    card_path = tiny_model_copy / "model.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["unit_factors"] = {"1": "brain_scale", "5": "rotation_deg", "99": "ignored"}
    card_path.write_text(json.dumps(card))
    server = start_server(load_generator(tiny_model_copy, device="cpu"), port=0)
    try:
        units = {unit["unit"]: unit["factor"] for unit in json.loads(request(server, "/api/state")[2])["units"]}
    finally:
        server.shutdown()
        server.server_close()
    assert units[1] == "brain_scale" and units[5] == "rotation_deg" and units[0] is None


def test_bound_units_come_with_their_factor_and_mapping(tiny_model_copy):
    card_path = tiny_model_copy / "model.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["unit_factors"] = {"0": "level"}
    card["binding"] = {"units": [{"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 1.5,
                                  "std": 8.0}]}
    card_path.write_text(json.dumps(card))
    server = start_server(load_generator(tiny_model_copy, device="cpu"), port=0)
    try:
        units = {unit["unit"]: unit for unit in json.loads(request(server, "/api/state")[2])["units"]}
    finally:
        server.shutdown()
        server.server_close()
    assert units[0]["factor"] == "rotation_deg"  # the bound factor before the card's label
    assert units[0]["bound"] == {"unit_of_measure": "deg", "mean": 1.5, "std": 8.0} and units[1]["bound"] is None


def test_decode_png_matches_the_api(server, generator):
    zeros = np.zeros(8)
    image = decode_png(server, zeros)
    assert image.shape == (64, 64) and image.dtype == np.uint8
    from ctgen.images.render import to_uint8

    np.testing.assert_array_equal(image, to_uint8(generator.decode(zeros)[0], (40, 80)))
    np.testing.assert_array_equal(decode_png(server, zeros, window=[40, 80]), image)
    np.testing.assert_array_equal(decode_png(server, zeros, window="75,215"),
                                  to_uint8(generator.decode(zeros)[0], (75, 215)))


def test_decode_png_changes_with_z_and_window(synthetic_generator):
    server = start_server(synthetic_generator, port=0)
    try:
        zeros = np.zeros(LATENT)
        image = decode_png(server, zeros)
        moved = zeros.copy()
        moved[synthetic_generator.units_by_kl[0]] = 1.0
        assert not np.array_equal(decode_png(server, moved), image)
        assert not np.array_equal(decode_png(server, zeros, window="bone"), image)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("payload, message", [
    ({"z": [0.0] * 3}, "8 numbers"),
    ({"z": ["a"] * 8}, "list of numbers"),
    ({"z": [0.0] * 7 + [float("nan")]}, "NaN"),
    ({"z": [0.0] * 8, "window": "lung"}, "bad window"),
])
def test_decode_rejects_bad_requests(server, payload, message):
    status, content_type, body = request(server, "/api/decode", json.dumps(payload).encode())
    assert status == 400 and content_type == "application/json"
    assert message in json.loads(body)["error"]


def test_sample_is_seeded(server, generator):
    first = json.loads(request(server, "/api/sample?seed=5")[2])
    assert first["seed"] == 5
    np.testing.assert_allclose(first["z"], generator.latents(1, seed=5)[0], atol=1e-6)
    assert json.loads(request(server, "/api/sample?seed=5")[2])["z"] == first["z"]
    assert json.loads(request(server, "/api/sample?seed=6")[2])["z"] != first["z"]
    assert json.loads(request(server, "/api/sample")[2])["seed"] == 3  # the server's --seed
    assert request(server, "/api/sample?seed=x")[0] == 400


def test_encode_upload(server, generator):
    status, _, body = request(server, "/api/encode", CT_SMALL.read_bytes(), {"X-Filename": "CT%20small.dcm"})
    assert status == 200, body
    result = json.loads(body)
    assert result["label"] == "CT small.dcm"
    np.testing.assert_allclose(result["z"], generator.encode(CT_SMALL)[0], atol=1e-5)


def test_bad_upload_is_400_and_server_keeps_serving(server):
    status, _, body = request(server, "/api/encode", b"\x00" * 200 + b"garbage", {"X-Filename": "junk.dcm"})
    assert status == 400
    error = json.loads(body)["error"]
    assert error.startswith("junk.dcm: ") and "\n" not in error and "ctgen-upload" not in error
    status, _, body = request(server, "/api/encode", b"", {"X-Filename": "empty.dcm"})
    assert status == 400 and "empty" in json.loads(body)["error"]
    truncated = CT_SMALL.read_bytes()[:3000]
    assert request(server, "/api/encode", truncated)[0] == 400
    assert request(server, "/api/state")[0] == 200
    assert decode_png(server, np.zeros(8)).shape == (64, 64)


def test_oversize_upload_is_413(server):
    status, _, body = request(server, "/api/encode", b"\x00" * (MAX_UPLOAD_BYTES + 1))
    assert status == 413 and "too large" in json.loads(body)["error"]
    assert request(server, "/api/state")[0] == 200


def test_export_formats(server, generator, tmp_path):
    z = generator.latents(1, seed=2)[0].tolist()
    status, content_type, body = request(server, "/api/export", {"z": z, "format": "png", "window": "subdural"})
    assert status == 200 and content_type == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), decode_png(server, z, "subdural"))

    status, content_type, body = request(server, "/api/export", {"z": z, "format": "json"})
    assert status == 200 and content_type == "application/json"
    exported = json.loads(body)
    assert exported["z"] == pytest.approx(z, abs=1e-6) and exported["latent_size"] == 8
    assert exported["encoder_sha256"] == generator.card.encoder_sha256  # the model, as ctgen decode checks it

    status, content_type, body = request(server, "/api/export", {"z": z, "format": "dcm", "window": "brain"})
    assert status == 200 and content_type == "application/dicom"
    path = tmp_path / "export.dcm"
    path.write_bytes(body)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "CT" and "DERIVED" in ds.ImageType and ds.PatientIdentityRemoved == "YES"
    assert float(ds.WindowCenter) == 40 and float(ds.PixelSpacing[0]) == generator.grid.spacing_mm
    from ctgen.io.dicom import read_slice

    np.testing.assert_allclose(read_slice(path).hu, generator.decode(z)[0], atol=0.51)

    status, _, body = request(server, "/api/export", {"z": z, "format": "gif"})
    assert status == 400 and "png, dcm or json" in json.loads(body)["error"]


def test_keep_alive_survives_errors(server):
    import http.client

    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for body in (b"{not json", json.dumps({"z": [0.0] * 8}).encode(), b"[]"):
            connection.request("POST", "/api/decode", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        connection.request("GET", "/api/state")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_other_sites_are_refused(server):
    port = server.server_address[1]
    for headers in ({"Host": f"evil.example:{port}"}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
        status, _, body = request(server, "/api/state", headers=headers)
        assert status == 403 and "refused" in json.loads(body)["error"], headers
    status, _, _ = request(server, "/api/decode", {"z": [0.0] * 8}, {"Origin": "http://evil.example"})
    assert status == 403
    same_site = {"Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"}
    assert request(server, "/api/decode", {"z": [0.0] * 8}, same_site)[0] == 200
    assert request(server, "/api/state", headers={"Host": f"localhost:{port}"})[0] == 200


def test_is_loopback():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.4", "::", "example.org"):
        assert not is_loopback(host), host


# ------------------------------------------------------------------------------------------ command
def run_command(args: list[str], ready: str = "serving on", timeout: float = 60) -> str:
    """Start the explore command in a subprocess, wait for ``ready`` on stderr, stop it; its stderr so far."""
    script = "import sys; from ctgen.cli import main; main(['explore', *sys.argv[1:]])"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, *args], stderr=subprocess.PIPE, text=True, env=env,
                               cwd=REPO_ROOT)
    lines = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if ready in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=10)
    return "".join(lines)


def test_command_loopback_by_default(tiny_model_dir):
    text = run_command(["--model", str(tiny_model_dir), "--port", "0", "--no-browser", "--device", "cpu"])
    assert "serving on http://127.0.0.1:" in text and "(loopback only)" in text
    assert "warning" not in text


def test_command_warns_for_other_hosts(tiny_model_dir):
    text = run_command(["--model", str(tiny_model_dir), "--port", "0", "--no-browser", "--host", "0.0.0.0",
                        "--device", "cpu", str(CT_SMALL)], ready="not loopback")
    assert "serving on http://0.0.0.0:" in text
    assert "ctgen: warning: --host 0.0.0.0 is not loopback" in text
    # CT_small (a neck slice, 85 mm across) is outside what the model was trained on: one line says so
    assert "ctgen: warning: " + str(CT_SMALL) + ": field of view 85 mm" in text


# ------------------------------------------------------------------ hostile clients (issue 15, items 11-13)
def _strict_json(body: bytes):
    """JSON as the standard has it: NaN and Infinity are not numbers."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(body, parse_constant=refuse)


@pytest.mark.parametrize("query, message", [
    ("seed=-1", "seed must be a whole number from 0 to 9223372036854775807"),
    ("seed=" + "9" * 5000, "seed must be a whole number"),
    ("seed=1.5", "seed must be a whole number"),
    ("seed=99999999999999999999", "seed must be a whole number"),
    ("temperature=1e308", "temperature must be a number from 0 to 10"),
    ("temperature=inf", "temperature must be"),
    ("temperature=nan", "temperature must be"),
    ("temperature=-0.5", "temperature must be"),
    ("temperature=" + "1" * 5000, "temperature must be"),
])
def test_sample_parameters_out_of_bounds_are_400(server, query, message):  # item 11
    status, content_type, body = request(server, f"/api/sample?{query}")
    assert status == 400 and content_type == "application/json"
    assert message in _strict_json(body)["error"]


@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (nested too deeply)"),
    (b'{"z": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    (b'{"z": [NaN, 0, 0, 0, 0, 0, 0, 0]}', "NaN is not a number JSON allows"),
    (b'{"z": [1e400, 0, 0, 0, 0, 0, 0, 0]}', "z contains NaN or infinite values"),
    (json.dumps({"z": [1e30] * 8}).encode(), "z values must lie within ±1000"),
    (json.dumps({"z": [0.0] * 8, "window": [1e308, 1e308]}).encode(), "window values must lie within"),
    (json.dumps({"z": [0.0] * 8, "window": [0, 1e-300]}).encode(), "bad window"),
])
def test_hostile_json_bodies_are_400(server, body, message):  # item 11
    status, content_type, answer = request(server, "/api/decode", body, {"Content-Type": "application/json"})
    assert status == 400 and content_type == "application/json"
    assert message in _strict_json(answer)["error"]


def test_answers_are_standard_json_at_the_bounds(server):  # item 11: temperature 1e308 used to give Infinity
    for query in ("seed=9223372036854775807&temperature=10", "seed=0&temperature=0"):
        status, _, body = request(server, f"/api/sample?{query}")
        assert status == 200 and all(math.isfinite(v) for v in _strict_json(body)["z"])
    _strict_json(request(server, "/api/state")[2])


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a browser tab killed mid-upload does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_vanish_mid_request_leave_the_console_quiet(server, capfd):  # item 12
    address = server.server_address[:2]
    capfd.readouterr()
    for index in range(20):
        sock = socket.create_connection(address, timeout=10)
        if index % 4 == 0:  # half a request line
            sock.sendall(b"POST /api/enc")
        elif index % 4 == 1:  # headers, no body
            sock.sendall(b"POST /api/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
        else:  # part of the upload
            sock.sendall(b"POST /api/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
                         + b"\0" * 200_000)
        _abort(sock)
    sock = socket.create_connection(address, timeout=10)  # asks, then leaves before the answer is read
    sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    _abort(sock)
    assert server.wait_until_idle(timeout=20)
    assert capfd.readouterr() == ("", "")
    assert request(server, "/api/state")[0] == 200


def test_idle_and_trickling_connections_are_closed_after_the_timeout(generator):  # item 13
    server = start_server(generator, host="127.0.0.1", port=0, request_timeout_s=0.3)
    try:
        idle = socket.create_connection(server.server_address[:2], timeout=10)
        trickle = socket.create_connection(server.server_address[:2], timeout=10)
        trickle.sendall(b"POST /api/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        started = time.monotonic()
        assert idle.recv(1) == b""  # the server hung up (recv would wait 10 s otherwise)
        assert trickle.recv(1) == b""
        assert time.monotonic() - started < 5
        assert server.wait_until_idle(timeout=5)
        idle.close()
        trickle.close()
    finally:
        server.shutdown()
        server.server_close()


def test_connections_beyond_the_cap_get_503_at_once(generator):  # item 13: a thread each, so a cap
    server = start_server(generator, host="127.0.0.1", port=0, max_connections=3)
    try:
        held = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(3)]
        for sock in held:
            sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive: stays open
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        status, _, body = request(server, "/api/state")
        assert status == 503 and "too many connections" in _strict_json(body)["error"]
        for sock in held:
            sock.close()
        assert server.wait_until_idle(timeout=10)
        assert request(server, "/api/state")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_many_concurrent_clients_are_all_served(server):  # item 13: 2 of 500 were reset under 25 clients
    from concurrent.futures import ThreadPoolExecutor

    def client(index: int) -> list[int]:
        return [request(server, "/api/state")[0] for _ in range(5)]

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = [status for batch in pool.map(client, range(40)) for status in batch]
    assert statuses == [200] * 200


# ------------------------------------------------------------------ strict request fields (issue 23, item 15)
_ZEROS = [0.0] * LATENT


def _post(server, path: str, text: str) -> tuple[int, str]:
    """(status, the error line or "") of a POST whose body is ``text`` as it stands (not re-encoded)."""
    status, content_type, body = request(server, path, text.encode(), {"Content-Type": "application/json"})
    if status == 200:
        return status, ""
    assert content_type == "application/json"
    error = _strict_json(body)["error"]
    assert "\n" not in error
    return status, error


@pytest.mark.parametrize("text, message", [
    ('{"z": [' + "9" * 400 + ', 0, 0, 0, 0, 0, 0, 0]}', "z values must lie within ±1000"),  # was 500 OverflowError
    ('{"z": [-' + "9" * 400 + ', 0, 0, 0, 0, 0, 0, 0]}', "z values must lie within ±1000"),
    (json.dumps({"z": [True] * LATENT}), "z[0] is a boolean"),  # was 200 and an image
    (json.dumps({"z": [0.0] * 7 + [False]}), "z[7] is a boolean"),
    (json.dumps({"z": ["1"] * LATENT}), "z[0] is a string"),  # was 200 and an image
    (json.dumps({"z": [[0.0]] * LATENT}), "z[0] is a list"),
    (json.dumps({"z": [_ZEROS]}), f"z must hold {LATENT} numbers, got 1"),
    (json.dumps({"z": "0" * LATENT}), "z must be a list of 8 numbers, got a string"),
    (json.dumps({"z": None}), "got null"),
    (json.dumps({"window": "brain"}), "z must be a list of 8 numbers, got null"),
    (json.dumps({"z": _ZEROS, "window": True}), "window must be a name"),
    (json.dumps({"z": _ZEROS, "window": 40}), "window must be a name"),
    (json.dumps({"z": _ZEROS, "window": ["40", "80"]}), "window[0] is a string"),
    (json.dumps({"z": _ZEROS, "window": [40, True]}), "window[1] is a boolean"),
    (json.dumps({"z": _ZEROS, "window": [40, 80, 1]}), "window must hold 2 numbers"),
    ('{"z": [0, 0, 0, 0, 0, 0, 0, 0], "window": [' + "9" * 400 + ", 80]}", "window values must lie within"),
    (json.dumps({"z": _ZEROS, "window": "x" * 100_000}), "bad window"),
    (json.dumps({"z": _ZEROS, "windw": "bone"}), "unknown field 'windw' (this request takes z, window)"),
])
def test_decode_fields_are_checked_strictly(server, text, message):
    status, error = _post(server, "/api/decode", text)
    assert status == 400 and message in error, error


@pytest.mark.parametrize("fields, message", [
    ({"format": True}, "export format must be a string, got a boolean"),
    ({"format": ["png"]}, "export format must be a string, got a list"),
    ({"format": "tiff"}, "unknown export format 'tiff': use png, dcm or json"),
    ({"format": "json", "z": [True] * LATENT}, "z[0] is a boolean"),  # json export checked z loosely too
    ({"format": "json", "window": {}}, "window must be a name"),
    ({"format": "png", "slice": 3}, "unknown field 'slice'"),
])
def test_export_fields_are_checked_strictly(server, fields, message):
    status, error = _post(server, "/api/export", json.dumps({"z": _ZEROS, **fields}))
    assert status == 400 and message in error, error


def test_query_parameters_are_checked_strictly(server):
    for path, message in (("/api/sample?sed=1", "unknown parameter 'sed' (this request takes seed, temperature)"),
                          ("/api/sample?seed=", "seed must be a whole number"),
                          ("/api/sample?seed=true", "seed must be a whole number"),
                          ("/api/state?x=1", "unknown parameter 'x' (this request takes none)")):
        status, _, body = request(server, path)
        assert status == 400 and message in _strict_json(body)["error"], (path, body)


_HOSTILE_VALUES = [None, True, False, 0, -1, 1.5, -0.0, 1e308, -1e308, 10**400, "", "1", "brain", "nan", "x" * 5000,
                   [], [True], ["1"], [None], [1e308] * LATENT, [10**400] * LATENT, {}, {"z": _ZEROS}, [[[]]]]


def test_no_field_value_gets_a_500(server):
    """Every field of every endpoint, set to each hostile JSON value: 200 or 400, never 500."""
    for path, fields in (("/api/decode", ("z", "window")), ("/api/export", ("z", "format", "window"))):
        for field in fields:
            for value in _HOSTILE_VALUES:
                status, error = _post(server, path, json.dumps({"z": _ZEROS, field: value}))
                assert status in (200, 400), (path, field, value, status, error)
    assert request(server, "/api/state")[0] == 200


def test_the_start_window_is_accepted(synthetic_generator):  # the page sends the window's name, "start" too
    server = start_server(synthetic_generator, port=0, window=(300.0, 1500.0))
    try:
        assert "start" in json.loads(request(server, "/api/state")[2])["windows"]
        assert np.array_equal(decode_png(server, _ZEROS, window="start"), decode_png(server, _ZEROS, [300, 1500]))
    finally:
        server.shutdown()
        server.server_close()


def _nested_sequences(depth: int) -> bytes:
    """CT_small.dcm with ``depth`` nested undefined-length sequences put before its first data element."""
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    sequence = struct.pack("<HH2sHI", 0x0008, 0x0001, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    raw = CT_SMALL.read_bytes()
    return raw[:meta_end] + (sequence + item) * depth + ends * depth + raw[meta_end:]


def test_an_upload_that_breaks_the_reader_is_400(server):  # was 500 RecursionError
    status, _, body = request(server, "/api/encode", _nested_sequences(1000), {"X-Filename": "nested.dcm"})
    error = _strict_json(body)["error"]
    assert status == 400 and error.startswith("nested.dcm: ") and "\n" not in error, error
    assert "ctgen-upload" not in error
    assert request(server, "/api/state")[0] == 200
