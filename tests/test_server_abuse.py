"""The server under abuse: bodies without a key or without an end, memory-heavy images in
parallel, URLs that drip, JSON and metadata nested without end, a catalogue deleted during an
upload, headers and special addresses.

The memory and latency checks run a real uvicorn server in a subprocess on 127.0.0.1, so its
resident memory (``/proc/PID/status``) is the server's alone; every loop is bounded in count
and time.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from lookalike.images import ImageError, decode, decode_cost  # noqa: E402
from lookalike.server.catalogs import Catalogs, Upload  # noqa: E402
from lookalike.server.fetch import check_url, is_public_address  # noqa: E402
from lookalike.server.limits import Gate  # noqa: E402

from .conftest import skimage_photo  # noqa: E402
from .test_server import ADMIN, MODEL, auth, jpeg, make_app, new_catalog, upload  # noqa: E402

MB = 1 << 20


# -- helpers --------------------------------------------------------------------------------------
def heavy_png(width: int = 7000, height: int = 7000) -> bytes:
    """A 16-bit RGBA PNG of zeros: about 380 KB on disk, 196 MB of pixels in Pillow, about
    400 MB at the peak of its decode (0.94 GB before the decode was bounded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" * (1 + width * 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def heavy() -> bytes:
    return heavy_png()


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """The peak resident memory of a process, sampled every 20 ms while in a ``with``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> Sampler:
        self.idle = rss(self.pid)
        self.peak = self.idle
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.idle


PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    import httpx
    url, key, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    times, end = [], time.monotonic() + 60
    with httpx.Client(timeout=30) as client:
        while not os.path.exists(stop) and time.monotonic() < end:
            start = time.perf_counter()
            r = client.get(url + "/me", headers={"Authorization": "Bearer " + key})
            assert r.status_code == 200, r.text
            times.append(time.perf_counter() - start)
            time.sleep(0.1)
    print(json.dumps(times))
    """
)


class MeProbe:
    """``GET /me`` every 100 ms while in a ``with``, from a process of its own (the test's
    client threads would otherwise slow the probe itself): ``slowest`` answer in seconds."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url, self.stop = url, folder / "probe.stop"
        self.script = folder / "probe.py"
        self.script.write_text(PROBE)
        self.stop.unlink(missing_ok=True)

    def __enter__(self) -> MeProbe:
        self._process = subprocess.Popen(
            [sys.executable, str(self.script), self.url, ADMIN, str(self.stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.touch()
        out, _ = self._process.communicate(timeout=40)
        assert self._process.returncode == 0
        times = json.loads(out)
        self.count, self.slowest = len(times), max(times, default=0.0)


SERVER = textwrap.dedent(
    """
    import json, os, sys
    import uvicorn
    from lookalike.models import load_embedder
    from lookalike.server import create_app

    embedder = load_embedder(os.environ["TEST_MODEL"])
    settings = json.loads(os.environ["TEST_SETTINGS"])
    app = create_app(
        os.environ["TEST_DATA"], admin_key=os.environ["TEST_ADMIN"],
        embedder_factory=lambda _: embedder, models=[os.environ["TEST_MODEL"]], **settings
    )
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["TEST_PORT"]), log_level="warning")
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server in a subprocess on loopback, with the default decode budget (1 GiB),
    a 2 s fetch deadline and 3 fetch slots (small, so the test is fast), and a 64 MB cap on
    multipart bodies."""
    folder = tmp_path_factory.mktemp("abuse")
    port = free_port()
    settings = {
        "allow_private_urls": True,
        "fetch_deadline": 2.0,
        "max_fetches": 3,
        "max_request_bytes": 64 * MB,
    }
    env = {
        **os.environ,
        "TEST_MODEL": MODEL,
        "TEST_SETTINGS": json.dumps(settings),
        "TEST_DATA": str(folder / "data"),
        "TEST_ADMIN": ADMIN,
        "TEST_PORT": str(port),
    }
    (folder / "server.py").write_text(SERVER)
    log = open(folder / "server.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(folder / "server.py")], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=60) as client:
            catalog = new_catalog(client)
            r = upload(client, catalog, {"coffee": jpeg(skimage_photo("coffee"))})
            assert r.status_code == 200, r.text
        yield {"url": url, "pid": process.pid, "catalog": catalog, "folder": folder}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


#: The start of a multipart body whose one file then never ends.
ENDLESS_FILE = (
    b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)


def stream_body(
    url: str, path: str, headers: dict[str, str], total: int, first: bytes = b"", chunk: int = MB
) -> tuple[int | None, int, float]:
    """POST ``first`` and then ``total`` bytes chunked (``Transfer-Encoding: chunked``, no
    length) over a raw socket, watching for the answer after every chunk: (status or None,
    bytes sent before the answer came, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    sent = 0
    block = b"x" * chunk
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        if first:
            sock.sendall(b"%x\r\n" % len(first) + first + b"\r\n")
        answer = b""
        while sent < total and time.perf_counter() - start < 30:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there
            try:
                sock.sendall(b"%x\r\n" % chunk + block + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk
        else:
            with contextlib.suppress(OSError):
                sock.sendall(b"0\r\n\r\n")
        try:
            sock.settimeout(30)
            answer = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent, time.perf_counter() - start


# -- 7: bodies ------------------------------------------------------------------------------------
def test_bodies_without_a_key_or_an_end_cost_nothing(server):
    """A 200 MB chunked body without a key is answered 401 before it is read; with the admin
    key, a JSON body is cut at its 8 MB cap and a multipart one at 64 MB (413), while it
    streams. The server's memory grows by less than 50 MB through all of it."""
    url, pid, catalog = server["url"], server["pid"], server["catalog"]
    json_type = {"Content-Type": "application/json"}
    with Sampler(pid) as memory:
        status, sent, _ = stream_body(url, "/keys", json_type, 200 * MB)
        assert status == 401 and sent < 20 * MB, (status, sent)
        status, sent, _ = stream_body(
            url,
            f"/catalogs/{catalog}/images",
            {"Content-Type": "multipart/form-data; boundary=b"},
            200 * MB,
            ENDLESS_FILE,
        )
        assert status == 401 and sent < 20 * MB, (status, sent)
        status, sent, _ = stream_body(url, "/keys", {**json_type, **auth(ADMIN)}, 200 * MB)
        assert status == 413 and sent < 40 * MB, (status, sent)
        multipart = {"Content-Type": "multipart/form-data; boundary=b", **auth(ADMIN)}
        status, sent, _ = stream_body(
            url, f"/catalogs/{catalog}/images", multipart, 200 * MB, ENDLESS_FILE
        )
        assert status == 413 and sent < 100 * MB, (status, sent)
    assert memory.growth < 50 * MB, memory.growth / MB
    # A declared length over the cap is refused before anything is read.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST /keys HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 700000000\r\n\r\n{")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")


# -- 8: decode memory -----------------------------------------------------------------------------
def test_heavy_decodes_in_parallel_stay_in_the_budget(server, heavy):
    """Ten searches at once with a 372 KB PNG whose decode takes about 400 MB: the decode
    budget (1 GiB) admits two at a time, the others wait up to 2 s and get 503 with
    Retry-After; the server's memory stays within the budget and GET /me answers in under a
    second throughout."""
    url, pid, catalog = server["url"], server["pid"], server["catalog"]
    assert len(heavy) < 500_000

    def send(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.post(
                f"{url}/catalogs/{catalog}/search",
                files={"file": ("big.png", heavy, "image/png")},
                data={"k": "1"},
                headers=auth(ADMIN),
            )

    with (
        Sampler(pid) as memory,
        MeProbe(url, server["folder"]) as me,
        ThreadPoolExecutor(10) as pool,
    ):
        answers = list(pool.map(send, range(10)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, [r.text[:200] for r in answers]
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]
    assert memory.growth < 1024 * MB + 200 * MB, memory.growth / MB
    assert me.count >= 3 and me.slowest < 1.0, (me.count, me.slowest)


def test_decode_cost_is_bounded_and_reduced_to_fit(heavy):
    """The decode of a 16-bit RGBA PNG is estimated from its header; a smaller bound reduces
    it while converting, a bound its pixels alone pass refuses it; a JPEG is decoded at a
    smaller scale to fit."""
    assert 380 * MB < decode_cost(heavy) < 440 * MB  # 7000x7000: from the header alone
    small = heavy_png(3000, 3000)  # 36 MB of RGBA pixels
    assert 100 * MB < decode_cost(small) < 130 * MB
    with pytest.raises(ImageError, match="more than the 50 MB allowed"):
        decode(small, max_bytes=50 * MB)
    assert decode_cost(small, max_bytes=100 * MB) <= 100 * MB
    reduced = decode(small, max_bytes=100 * MB)
    assert reduced.mode == "RGB" and reduced.size == (1500, 1500)
    assert reduced.getpixel((10, 10)) == (255, 255, 255)  # transparent over white
    photo = jpeg(skimage_photo("astronaut").resize((4096, 4096)))
    assert decode_cost(photo, max_bytes=48 * MB) <= 48 * MB < decode_cost(photo)
    assert decode(photo, max_bytes=48 * MB).size == (2048, 2048)
    assert decode(photo).size == (4096, 4096)


def test_an_upload_that_finds_the_budget_taken_answers_503_and_leaves_nothing(
    tmp_path, embedder, monkeypatch
):
    """The second file of an upload finds the decode budget taken for longer than a request
    waits: 503 with Retry-After, and the first file (stored, not committed) is removed; the
    same upload sent again works."""
    data = tmp_path / "data"
    app = make_app(data, embedder, queue_wait_seconds=0.2)
    catalogs: Catalogs = app.state.catalogs
    stage, calls = Catalogs._stage, []

    def then_full(self, *args):
        staged = stage(self, *args)
        calls.append(staged)
        if len(calls) == 1:
            assert self.budget.try_take(self.budget.capacity)  # another request's decodes
        return staged

    monkeypatch.setattr(Catalogs, "_stage", then_full)
    photos = {n: jpeg(skimage_photo(n).resize((96, 96))) for n in ("coffee", "rocket")}
    with TestClient(app) as client:
        catalog = new_catalog(client)
        r = upload(client, catalog, photos)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "busy" in r.json()["error"]
        catalogs.budget.give(catalogs.budget.capacity)
        assert not list((data / "catalogs" / catalog / "files").glob("*"))
        assert not [f for f in (data / "blobs" / catalog).rglob("*") if f.is_file()]
        monkeypatch.setattr(Catalogs, "_stage", stage)
        r = upload(client, catalog, photos)
        assert r.status_code == 200 and r.json()["added"] == 2, r.text


def test_gate_holds_threads_and_coroutines_to_its_capacity():
    import asyncio

    from lookalike.server.errors import OverloadedError

    gate = Gate(100, "test units")
    with gate.hold(70, wait=0):
        with pytest.raises(OverloadedError) as busy, gate.hold(40, wait=0.05):
            pass
        assert busy.value.status == 503 and busy.value.headers["Retry-After"] == "1"

        async def take() -> int:
            async with gate.hold_async(30, wait=0.05):
                return gate.in_use

        assert asyncio.run(take()) == 100
    assert gate.in_use == 0 and gate.peak == 100
    with gate.hold(10**12, wait=0):  # more than the capacity: all of it
        assert gate.in_use == 100


# -- 9: slow URLs ---------------------------------------------------------------------------------
class Drip(http.server.BaseHTTPRequestHandler):
    """Says it sends 1000 bytes, then sends one every 0.3 s (at most 200, so it ends)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_slow_urls_meet_a_deadline_and_a_cap(server):
    """Eight searches of a URL that drips a byte every 0.3 s (no step ever times out): each
    fetch ends at the 2 s deadline (400) or finds the 3 fetch slots taken for 2 s (503 with
    Retry-After); none holds its request longer than a few seconds, and GET /me stays fast."""
    url, catalog = server["url"], server["catalog"]
    drip = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    drip.daemon_threads = True
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    slow = f"http://127.0.0.1:{drip.server_port}/slow.jpg"

    def send(_: int) -> tuple[int, float, httpx.Response]:
        start = time.perf_counter()
        with httpx.Client(timeout=30) as client:
            r = client.post(
                f"{url}/catalogs/{catalog}/search", json={"url": slow}, headers=auth(ADMIN)
            )
        return r.status_code, time.perf_counter() - start, r

    try:
        with MeProbe(url, server["folder"]) as me, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
    finally:
        drip.shutdown()
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {400, 503} and 400 in statuses, statuses
    for status, seconds, r in answers:
        assert seconds < 8, (status, seconds)
        if status == 400:
            assert "longer than 2 s" in r.json()["error"]
        else:
            assert int(r.headers["retry-after"]) >= 1
    assert me.slowest < 1.0, me.slowest


# -- 10, 11: nested and oversized JSON ------------------------------------------------------------
@pytest.fixture
def client(tmp_path, embedder):
    with TestClient(make_app(tmp_path / "data", embedder)) as c:
        yield c


def form_upload(client, catalog, metadata: str):
    files = [("files", ("a.jpg", jpeg(skimage_photo("coffee").resize((64, 64))), "image/jpeg"))]
    return client.post(
        f"/catalogs/{catalog}/images", files=files, data={"metadata": metadata}, headers=auth(ADMIN)
    )


def test_metadata_is_bounded_on_the_way_in(client):
    """Metadata nested deeper than 20, with more than 256 keys or larger than 64 KB is a 400
    that names the limit (multipart and JSON uploads, and search filters alike); what passes
    is stored and shown by every listing, image and search."""
    catalog = new_catalog(client)

    def nested(depth: int) -> str:
        return '{"a": ' * depth + "1" + "}" * depth

    for text, reason in [
        (nested(21), "nested more than 20"),
        (nested(300), "nested more than 20"),
        (nested(1000), "nested"),
        (nested(100_000), "nested"),
        (json.dumps({f"k{i}": i for i in range(300)}), "more than 256 keys"),
        (json.dumps({"text": "x" * 70_000}), "larger than 65,536 bytes"),
        ('{"x": NaN}', "not valid JSON"),
        ('{"x": 1e999}', "too large"),
        ('{"x": 1' + "0" * 5000 + "}", "more than 100 digits"),
    ]:
        r = form_upload(client, catalog, text)
        assert r.status_code == 400 and reason in r.json()["error"], (text[:40], r.text)
    body = {"images": [{"url": "http://127.0.0.1:9/a.jpg", "metadata": json.loads(nested(50))}]}
    r = client.post(f"/catalogs/{catalog}/images", json=body, headers=auth(ADMIN))
    assert r.status_code == 400 and "nested more than 20" in r.json()["error"]
    r = client.post(
        f"/catalogs/{catalog}/search",
        json={"text": "x", "filters": json.loads(nested(200))},
        headers=auth(ADMIN),
    )
    assert r.status_code == 400 and "filters" in r.json()["error"]

    r = form_upload(client, catalog, nested(20))
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]["id"]
    for path in (f"/catalogs/{catalog}/images", f"/catalogs/{catalog}/images/{image}"):
        assert client.get(path, headers=auth(ADMIN)).status_code == 200
    r = client.post(f"/catalogs/{catalog}/search", json={"text": "coffee"}, headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["results"][0]["metadata"]["a"]["a"]


def test_metadata_stored_too_deep_by_another_path_breaks_no_answer(client):
    """Metadata that reached the catalogue some other way (older server, Python API) and is
    too deep to show is left out of answers with a note; the answers stay 200."""
    catalog = new_catalog(client)
    catalogs: Catalogs = client.app.state.catalogs
    deep: dict = {}
    node = deep
    for _ in range(300):
        node["a"] = {}
        node = node["a"]
    data = jpeg(skimage_photo("rocket").resize((64, 64)))
    [result] = catalogs.add_uploads(catalog, [Upload(data, deep)])
    r = client.get(f"/catalogs/{catalog}/images", headers=auth(ADMIN))
    assert r.status_code == 200 and "unshown" in r.json()["images"][0]["metadata"]
    r = client.get(f"/catalogs/{catalog}/images/{result['id']}", headers=auth(ADMIN))
    assert r.status_code == 200
    r = client.post(f"/catalogs/{catalog}/search", json={"text": "rocket"}, headers=auth(ADMIN))
    assert r.status_code == 200


def test_malformed_json_is_a_400_never_a_500(client):
    catalog = new_catalog(client)
    deep = "[" * 100_000 + "]" * 100_000
    huge = "1" + "0" * 5000
    search = f"/catalogs/{catalog}/search"
    cases = [
        ("/keys", deep),
        ("/keys", '{"name": "x", "create": ' + huge + "}"),
        ("/catalogs", deep),
        (search, deep),
        (search, '{"text": "x", "k": ' + huge + "}"),
        (search, '{"text": "x", "k": 1e5000}'),
        (search, '{"text": "x", "k": NaN}'),
        (f"/catalogs/{catalog}/detect", deep),
        (f"/catalogs/{catalog}/detect", '{"url": "http://x/", "k": ' + huge + "}"),
        (f"/catalogs/{catalog}/duplicates", deep),
        (f"/catalogs/{catalog}/duplicates", '{"k": ' + huge + "}"),
        (f"/catalogs/{catalog}/duplicates", '{"threshold": NaN}'),
        (f"/catalogs/{catalog}/images", deep),
        (f"/catalogs/{catalog}/images", '{"images": ' + huge + "}"),
    ]
    headers = {**auth(ADMIN), "Content-Type": "application/json"}
    for path, body in cases:
        r = client.post(path, content=body, headers=headers)
        assert r.status_code in (400, 422), (path, body[:40], r.status_code, r.text[:200])
        assert r.json()["error"]
    # 1.000...0 is the number 1: a valid k.
    r = client.post(search, content='{"text": "x", "k": 1.' + "0" * 5000 + "}", headers=headers)
    assert r.status_code == 200, r.text
    r = client.post(
        search,
        files={"file": ("q.jpg", jpeg(skimage_photo("coffee")), "image/jpeg")},
        data={"k": huge, "filters": deep},
        headers=auth(ADMIN),
    )
    assert r.status_code == 400


# -- 12: delete during an upload -----------------------------------------------------------------
def test_a_catalogue_deleted_during_an_upload_leaves_nothing(tmp_path, embedder, monkeypatch):
    """The upload stores its first file's thumbnail just after the catalogue was deleted
    (the delete waited for nothing: staging holds no lock): the delete wins, the upload
    answers 404, and nothing of the catalogue is left on disk or in storage."""
    data = tmp_path / "data"
    app = make_app(data, embedder)
    catalogs: Catalogs = app.state.catalogs
    storing, deleted = threading.Event(), threading.Event()
    put = catalogs.storage.put

    def slow_put(key: str, blob: bytes) -> None:
        if not storing.is_set():
            storing.set()
            assert deleted.wait(20)
        put(key, blob)

    monkeypatch.setattr(catalogs.storage, "put", slow_put)
    photos = {n: jpeg(skimage_photo(n).resize((128, 128))) for n in ("coffee", "rocket", "chelsea")}
    with TestClient(app) as client:
        catalog = new_catalog(client)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(upload, client, catalog, photos)
            assert storing.wait(20)
            assert client.delete(f"/catalogs/{catalog}", headers=auth(ADMIN)).status_code == 204
            deleted.set()
            r = sent.result(30)
        assert r.status_code == 404, r.text
        assert client.get(f"/catalogs/{catalog}", headers=auth(ADMIN)).status_code == 404
        r = upload(client, catalog, photos)  # later writes find it gone, and create nothing
        assert r.status_code == 404
    assert not (data / "catalogs" / catalog).exists()
    assert not (data / "blobs" / catalog).exists()


# -- 13: headers, documentation, addresses ------------------------------------------------------
def test_security_headers_and_local_api_docs(client):
    for path in ("/", "/static/app.js", "/me", "/docs", "/openapi.json"):
        r = client.get(path, headers=auth(ADMIN))
        assert r.status_code == 200, path
        policy = r.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "<script>" not in page
    if "/docs/assets/swagger-ui-bundle.js" in page:  # fastapi-offline installed
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert client.get("/redoc").status_code in (401, 404)
    assert client.get("/me").status_code == 401  # an API path still wants its key


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of a global address
        ("2002:808:808::1", True),  # 6to4 of a global address
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address 169.254.169.254
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::1", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("ff0e::1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_only_global_addresses_are_fetched(address: str, public: bool):
    assert is_public_address(ipaddress.ip_address(address)) is public
    host = f"[{address}]" if ":" in address else address
    if not public:
        from lookalike.errors import FetchError

        with pytest.raises(FetchError, match="non-public"):
            check_url(f"http://{host}/a.jpg")


def test_large_image_upload_is_bounded_per_decode(client):
    """An upload whose decode would pass ``max_decode_bytes`` is refused with the reason;
    one within it is added, its decodes held in the budget while they run."""
    catalog = new_catalog(client)
    heavy = heavy_png(3000, 3000)
    r = upload(client, catalog, {"heavy": heavy})
    assert r.status_code == 200, r.text
    catalogs: Catalogs = client.app.state.catalogs
    assert catalogs.budget.in_use == 0 and 100 * MB < catalogs.budget.peak <= 1024 * MB
    catalogs.config.max_decode_bytes = 64 * MB
    r = upload(client, catalog, {"wide": heavy_png(3000, 2999)})
    assert r.status_code == 400 and "MB this server allows" in r.json()["error"], r.text
