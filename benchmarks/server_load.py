"""Server load: users searching by image while one client uploads, against `lookalike serve`.

What it does (issue #6):

1. **Catalogue.** Builds once, and caches under ``$LOOKALIKE_CACHE/bench/server-load-N/`` (by
   default ``~/.cache/lookalike/bench/``), a server data folder holding one catalogue of N real
   images from ``../shared/datasets/tiny-imagenet-val``, uploaded **through the REST API**
   (multipart batches of 250 files, ``?wait=true``), so originals, thumbnails and the collection
   are exactly what a server makes. Each run works on a fresh copy of that folder.
2. **Server.** Starts ``python -m lookalike serve --workers W`` on 127.0.0.1 (a free port) as a
   subprocess, waits until every worker has answered warm-up searches, runs the load, stops it.
3. **Load** (an asyncio + httpx client in this process, on the same machine):
   - ``--users`` simulated users, each with its own keep-alive connection, in a closed loop:
     search by image (a held-out Corel-1k photo, multipart upload, ``k=10``), read the answer,
     then *think* for ``uniform(lo, hi)`` seconds (like locust's ``between(0.5, 1.5)``). So 32
     users are **not** 32 requests in flight: at ~1 s think time they offer ~30 requests/s and
     usually have only a few in flight. A second phase without think time keeps all 32 in flight
     (saturation) to show the real throughput ceiling;
   - one uploader adding one image per request, back to back, for the whole phase (Corel-1k
     photos not used as queries, then mirrored/cropped re-encodings of them: every upload is a
     distinct image);
   - every ``--probe-every``-th upload is followed by *visibility probes*: searches with the
     uploaded image (``k=1``), each on a fresh connection (so on any worker), until the image
     comes back at rank 1; the delay from the upload's answer to that search's answer is recorded,
     with which worker process served the upload and the probe (from ``/proc``).
4. **Checks.** After the phases, every upload that answered 2xx must be listed by
   ``GET /catalogs/{id}/images`` (with its metadata) and a sample must find itself at rank 1.
5. **Profile** (in-process, no HTTP): where a query's time goes (decode, embedding, index search
   with query expansion, JSON) alone and with 32 threads, and the cost of the index reload that
   every upload causes in every worker.

Timings are taken on the same machine as the server (the client's CPU is reported) and, on a
shared machine, next to other jobs: the load average and the CPU used by other processes during
each phase are in the report.

Usage:
    python benchmarks/server_load.py --quick                 # 1000 images, 10 s phases (dev)
    python benchmarks/server_load.py --workers 1 2           # the issue's run: 10,000 images, 60 s
    python benchmarks/server_load.py --think 0 --duration 30 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import contextvars
import functools
import inspect
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED, table, write_section

from lookalike.models.efficientnet import cache_dir

TINY = SHARED / "tiny-imagenet-val"
COREL = SHARED / "corel1k"
BUILD_BATCH = 250
GOAL_P99_MS = 250.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- data -------------------------------------------------------------------------------------
def image_files(root: Path) -> list[Path]:
    """The images under ``root``, sorted."""
    suffixes = {".jpg", ".jpeg", ".png"}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes)


def spread(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread evenly over ``files`` (every class of a class-sorted list)."""
    if n >= len(files):
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def upload_bytes(pool: list[Path], n: int) -> bytes:
    """The ``n``-th upload: a pool file, then distinct mirrored/cropped re-encodings of them."""
    path = pool[n % len(pool)]
    generation = n // len(pool)
    data = path.read_bytes()
    if generation == 0:
        return data
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if generation % 2:
        image = ImageOps.mirror(image)
    cut = generation // 2 + 1
    image = image.crop((cut, cut, image.width - cut, image.height - cut))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


# -- /proc: CPU time, worker processes, which process owns a connection ------------------------
def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the live processes among ``pids``."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _cpus() -> int:
    return sum(1 for line in Path("/proc/stat").read_text().splitlines() if line[:3] == "cpu") - 1


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def socket_owner(client_port: int, server_port: int, pids: list[int]) -> int | None:
    """The process among ``pids`` holding the server side of the loopback connection whose
    client end is ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote = parts[1], parts[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inode = parts[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def client_port(response: httpx.Response) -> int | None:
    stream = response.extensions.get("network_stream")
    addr = stream.get_extra_info("client_addr") if stream is not None else None
    return int(addr[1]) if addr else None


# -- the server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``lookalike serve`` in a subprocess (its own process group), stopped on exit."""

    def __init__(
        self, data: Path, workers: int, admin_key: str, log: Path, stats: Path | None = None
    ) -> None:
        self.data, self.workers, self.admin_key, self.log = data, workers, admin_key, log
        self.stats = stats  # a folder: run the instrumented app, which writes its timings there
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def __enter__(self) -> Server:
        env = {**os.environ, "LOOKALIKE_ADMIN_KEY": self.admin_key}
        command = [sys.executable, "-m", "lookalike", "serve", "--data", str(self.data)]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        if self.stats is not None:  # what `lookalike serve` does, with the instrumented app
            self.stats.mkdir(parents=True, exist_ok=True)
            here = str(Path(__file__).resolve().parent)
            env |= {
                "LOOKALIKE_DATA": str(self.data.resolve()),
                STATS_ENV: str(self.stats),
                "PYTHONPATH": os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")])),
            }
            command = [
                sys.executable,
                "-c",
                f"import server_load; server_load.serve_instrumented({self.port}, {self.workers})",
            ]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/me", headers=self.headers, timeout=2).is_success:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the server did not start in 180 s: {self.tail()}")
        kids = children(self.proc.pid) if self.workers > 1 else []
        while self.workers > 1 and len(kids) < self.workers and time.monotonic() < deadline:
            time.sleep(0.3)
            kids = children(self.proc.pid)
        self.pids = [self.proc.pid, *kids]
        return self

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def owner(self, port: int | None) -> int | None:
        return None if port is None else socket_owner(port, self.port, self.pids)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
                self.proc.wait(10)
        self._log.close()


# -- instrumented server (--instrument): the same app with timing wrappers -----------------------
STATS_ENV = "LOOKALIKE_BENCH_STATS"
_CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("bench", default=None)


def serve_instrumented(port: int, workers: int) -> None:
    """Run :func:`instrumented_app` as ``lookalike serve`` runs its app (uvicorn, workers)."""
    import uvicorn

    uvicorn.run(
        "server_load:instrumented_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="info",
    )


def instrumented_app() -> object:
    """``lookalike.server.app.app_from_env()`` with per-request timings: each worker appends
    one JSON line per POST to ``$LOOKALIKE_BENCH_STATS/stats-PID.jsonl``."""
    import lookalike.collection.core
    from lookalike.collection import Collection
    from lookalike.server.app import app_from_env
    from lookalike.server.catalogs import Catalogs

    _patch(lookalike.collection.core, "load_index", "reload")  # an index file read after an upload
    _patch(Collection, "_build_index", "rebuild")  # ... or rebuilt from the stored vectors
    _patch(Collection, "index", "index")
    _patch(Collection, "embed", "embed")
    _patch(Collection, "search_vectors", "knn")
    _patch(Catalogs, "search", "thread")
    _patch(Catalogs, "add_uploads", "thread")
    return _Timing(app_from_env(), Path(os.environ[STATS_ENV]))


def _patch(owner: object, name: str, key: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        rec = _CURRENT.get()
        if rec is None:
            return original(*args, **kwargs)
        nested = rec.get("index", 0.0)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            if key == "knn":  # search_vectors calls index(): count that time once, as index
                seconds -= rec.get("index", 0.0) - nested
            if key == "thread":
                rec["pre"] = start - rec["t0"]
            rec[key] = rec.get(key, 0.0) + seconds
            rec[key + "_n"] = rec.get(key + "_n", 0) + 1

    setattr(owner, name, timed)


class _Timing:
    """ASGI wrapper: times each POST from its arrival to its last byte sent."""

    def __init__(self, app: object, folder: Path) -> None:
        self.app = app
        self.file = folder / f"stats-{os.getpid()}.jsonl"
        self.lock = threading.Lock()
        self.buffer: list[dict] = []
        threading.Thread(target=self._flush_loop, daemon=True).start()
        atexit.register(self.flush)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        rec = {"t0": time.perf_counter(), "wall": time.time(), "route": scope["path"][-6:]}
        status = [0]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        token = _CURRENT.set(rec)
        try:
            await self.app(scope, receive, sending)
        finally:
            _CURRENT.reset(token)
            rec["total"] = time.perf_counter() - rec.pop("t0")
            rec["status"], rec["pid"] = status[0], os.getpid()
            with self.lock:
                self.buffer.append(rec)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(1.0)
            self.flush()

    def flush(self) -> None:
        with self.lock:
            items, self.buffer = self.buffer, []
        if items:
            with open(self.file, "a") as out:
                out.write("".join(json.dumps(r) + "\n" for r in items))


def server_stages(folder: Path, phase: Phase) -> dict:
    """Server-side time of the searches of ``phase`` (from an instrumented server), by stage."""
    recs = []
    for file in folder.glob("stats-*.jsonl"):
        for line in file.read_text().splitlines():
            rec = json.loads(line)
            if rec["route"] == "search" and phase.wall[0] <= rec["wall"] <= phase.wall[1]:
                recs.append(rec)
    if not recs:
        return {}
    out: dict = {"searches": len(recs)}
    for key in ("total", "pre", "index", "reload", "rebuild", "embed", "knn", "other", "post"):
        values = []
        for rec in recs:
            if key == "other":
                value = rec.get("thread", 0) - sum(rec.get(k, 0) for k in ("index", "embed", "knn"))
            elif key == "post":
                value = rec["total"] - rec.get("pre", 0) - rec.get("thread", 0)
            else:
                value = rec.get(key, 0.0)
            values.append(value)
        out[key] = (ms(values, 50), ms(values, 99))
    out["reloads_per_search"] = sum(r.get("reload_n", 0) for r in recs) / len(recs)
    out["rebuilds_per_search"] = sum(r.get("rebuild_n", 0) for r in recs) / len(recs)
    uploads = []
    for file in folder.glob("stats-*.jsonl"):
        for line in file.read_text().splitlines():
            rec = json.loads(line)
            if rec["route"] == "images" and phase.wall[0] <= rec["wall"] <= phase.wall[1]:
                uploads.append(rec["total"])
    out["upload_total"] = (ms(uploads, 50), ms(uploads, 99))
    return out


# -- the catalogue -----------------------------------------------------------------------------
@dataclass
class Catalogue:
    data: Path
    catalog_id: str
    images: int
    meta: dict


def prepare_catalogue(n_images: int, rebuild: bool = False) -> Catalogue:
    """A server data folder with one catalogue of ``n_images`` Tiny ImageNet images (cached)."""
    from lookalike.models import load_embedder

    home = cache_dir() / "bench" / f"server-load-{n_images}"
    meta_file = home / "meta.json"
    version = load_embedder("efficientnet-lite0").version
    if meta_file.exists() and not rebuild:
        meta = json.loads(meta_file.read_text())
        if meta.get("model_version") == version:
            print(f"catalogue: cached in {home} ({meta['images']} images)", flush=True)
            return Catalogue(home / "data", meta["catalog"], meta["images"], meta)
    shutil.rmtree(home, ignore_errors=True)
    files = spread(image_files(TINY), n_images)
    staging = home.with_name(home.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    print(f"catalogue: uploading {len(files)} images to a new server in {staging}", flush=True)
    start = time.perf_counter()
    added = 0
    with Server(staging / "data", 1, secrets.token_urlsafe(24), staging / "build.log") as server:
        client = httpx.Client(base_url=server.base, headers=server.headers, timeout=600)
        answer = client.post("/catalogs", json={"name": f"bench-{n_images}"})
        answer.raise_for_status()
        catalog_id = answer.json()["id"]
        for at in range(0, len(files), BUILD_BATCH):
            batch = files[at : at + BUILD_BATCH]
            parts = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in batch]
            metadata = [{"source": str(p.relative_to(TINY))} for p in batch]
            answer = client.post(
                f"/catalogs/{catalog_id}/images",
                params={"wait": "true"},
                files=parts,
                data={"metadata": json.dumps(metadata)},
            )
            answer.raise_for_status()
            added += answer.json()["added"]
            done = at + len(batch)
            rate = done / (time.perf_counter() - start)
            print(f"  {done}/{len(files)} uploaded, {added} added, {rate:.0f} images/s", flush=True)
        images = client.get(f"/catalogs/{catalog_id}").json()["images"]
        client.close()
    seconds = time.perf_counter() - start
    meta = {
        "catalog": catalog_id,
        "images": images,
        "files": len(files),
        "model_version": version,
        "built": time.strftime("%Y-%m-%d %H:%M"),
        "build_seconds": round(seconds, 1),
        "how": f"POST /catalogs/{{id}}/images, multipart batches of {BUILD_BATCH}, ?wait=true",
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    staging.rename(home)
    print(f"catalogue: {images} images in {seconds:.0f} s", flush=True)
    return Catalogue(home / "data", catalog_id, images, meta)


# -- the load ------------------------------------------------------------------------------
@dataclass
class Sample:
    kind: str  # "search", "upload" or "probe"
    start: float  # seconds from the phase start
    seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    error: str = ""


@dataclass
class Uploaded:
    n: int
    image_id: int
    returned: float  # perf_counter when the upload answered
    data: bytes = field(repr=False)
    worker: int | None = None


@dataclass
class Visibility:
    n: int
    delay: float | None  # upload answer -> answer of the first search that found it
    attempts: int
    upload_worker: int | None
    probe_worker: int | None


@dataclass
class Phase:
    name: str
    duration: float
    think: tuple[float, float] | None
    samples: list[Sample] = field(default_factory=list)
    uploads: list[Uploaded] = field(default_factory=list)
    visibility: list[Visibility] = field(default_factory=list)
    user_workers: list[int | None] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0  # CPU seconds used by every process on the machine
    load: tuple[float, float] = (0.0, 0.0)
    elapsed: float = 0.0  # until the last request (and probe) ended
    wall: tuple[float, float] = (0.0, 0.0)  # time.time() at the start and the end


_SSL: ssl.SSLContext | None = None


def _client(server: Server, **options) -> httpx.AsyncClient:
    """A client of ``server``; clients made per request share one SSL context (httpx would
    otherwise load the CA bundle for each, ~10 ms of the client's CPU, although we speak http)."""
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return httpx.AsyncClient(base_url=server.base, headers=server.headers, verify=_SSL, **options)


async def _search(
    client: httpx.AsyncClient, catalog_id: str, data: bytes, k: int
) -> tuple[httpx.Response | None, str]:
    try:
        answer = await client.post(
            f"/catalogs/{catalog_id}/search",
            files={"file": ("query.jpg", data, "image/jpeg")},
            data={"k": str(k)},
        )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not answer.is_success:
        return answer, answer.text[:200]
    try:
        results = answer.json()["results"]
    except (ValueError, KeyError):
        return answer, "answer is not {results: [...]}"
    if not results:
        return answer, "no results"
    return answer, ""


class Load:
    """One phase of load against a running server."""

    def __init__(self, server: Server, catalog_id: str, queries: list[bytes], args) -> None:
        self.server, self.catalog_id, self.queries, self.args = server, catalog_id, queries, args
        self.upload_pool = args.upload_pool
        self.next_upload = 0  # continues across phases: every upload is a new image

    def client(self, **options) -> httpx.AsyncClient:
        return _client(self.server, timeout=60, **options)

    async def user(self, i: int, phase: Phase, t0: float, deadline: float) -> None:
        rng = random.Random(i)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with self.client(limits=limits) as client:
            if phase.think:  # users arrive spread over one think time, as locust's ramp-up does
                await asyncio.sleep(rng.uniform(0, phase.think[1]))
            while time.perf_counter() < deadline:
                data = self.queries[rng.randrange(len(self.queries))]
                start = time.perf_counter()
                answer, error = await _search(client, self.catalog_id, data, self.args.k)
                seconds = time.perf_counter() - start
                status = answer.status_code if answer is not None else 0
                phase.samples.append(Sample("search", start - t0, seconds, status, error))
                if answer is not None and phase.user_workers[i] is None:
                    phase.user_workers[i] = self.server.owner(client_port(answer))
                if phase.think:
                    await asyncio.sleep(rng.uniform(*phase.think))

    async def uploader(self, phase: Phase, t0: float, deadline: float) -> None:
        probes = []
        async with self.client() as client:
            while time.perf_counter() < deadline:
                n = self.next_upload
                self.next_upload += 1
                data = await asyncio.to_thread(upload_bytes, self.upload_pool, n)
                start = time.perf_counter()
                error, image_id, answer = "", None, None
                try:
                    answer = await client.post(
                        f"/catalogs/{self.catalog_id}/images",
                        files=[("files", (f"upload-{n}.jpg", data, "image/jpeg"))],
                        data={"metadata": json.dumps({"bench_upload": n})},
                    )
                    if answer.is_success:
                        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                            image_id = answer.json()["images"][0].get("id")
                        if image_id is None:
                            error = f"not added: {answer.text[:200]}"
                    else:
                        error = answer.text[:200]
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                end = time.perf_counter()
                status = answer.status_code if answer is not None else 0
                phase.samples.append(Sample("upload", start - t0, end - start, status, error))
                if image_id is None:
                    continue
                sample = n % self.args.probe_every == 0
                worker = self.server.owner(client_port(answer)) if sample else None
                uploaded = Uploaded(n, int(image_id), end, data, worker)
                phase.uploads.append(uploaded)
                if sample:
                    probes.append(asyncio.create_task(self.probe(uploaded, phase, t0)))
        phase.visibility.extend(await asyncio.gather(*probes))

    async def probe(self, up: Uploaded, phase: Phase, t0: float) -> Visibility:
        attempts, worker = 0, None
        while time.perf_counter() - up.returned < 10.0:
            attempts += 1
            async with self.client() as fresh:  # a new connection: any worker may take it
                start = time.perf_counter()
                answer, error = await _search(fresh, self.catalog_id, up.data, 1)
                end = time.perf_counter()
                worker = self.server.owner(client_port(answer)) if answer is not None else None
            status = answer.status_code if answer is not None else 0
            phase.samples.append(Sample("probe", start - t0, end - start, status, error))
            if not error and answer.json()["results"][0]["id"] == up.image_id:
                return Visibility(up.n, end - up.returned, attempts, up.worker, worker)
            await asyncio.sleep(0.05)
        return Visibility(up.n, None, attempts, up.worker, worker)

    async def run(
        self, name: str, duration: float, think: tuple[float, float] | None, upload: bool = True
    ) -> Phase:
        phase = Phase(name, duration, think, user_workers=[None] * self.args.users)
        cpu0, client0 = self.server.cpu(), _own_cpu()
        busy0, total0 = machine_jiffies()
        t0, wall0 = time.perf_counter(), time.time()
        deadline = t0 + duration
        tasks = [self.user(i, phase, t0, deadline) for i in range(self.args.users)]
        if upload:
            tasks.append(self.uploader(phase, t0, deadline))
        await asyncio.gather(*tasks)
        phase.elapsed = time.perf_counter() - t0
        phase.wall = (wall0, time.time())
        phase.server_cpu = self.server.cpu() - cpu0
        phase.client_cpu = _own_cpu() - client0
        busy1, total1 = machine_jiffies()
        phase.machine_cpu = (busy1 - busy0) / max(1, total1 - total0) * _cpus() * phase.elapsed
        phase.load = os.getloadavg()[:2]
        return phase


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def warm_up(server: Server, catalog_id: str, queries: list[bytes]) -> int:
    """Search on fresh connections until every worker has answered twice (model and index
    loaded everywhere); returns the number of warm-up searches."""
    served: dict[int | None, int] = {}
    count = 0
    deadline = time.perf_counter() + 180
    while time.perf_counter() < deadline:
        async with _client(server, timeout=120) as client:
            answer, error = await _search(client, catalog_id, queries[count % len(queries)], 10)
            if error:
                raise RuntimeError(f"warm-up search failed: {error}\n{server.tail()}")
            owner = server.owner(client_port(answer))
        served[owner] = served.get(owner, 0) + 1
        count += 1
        workers = [pid for pid in served if pid is not None]
        if len(workers) >= server.workers and all(served[p] >= 2 for p in workers):
            return count
    raise RuntimeError(f"warm-up: only workers {sorted(served)} answered in 180 s")


def verify(server: Server, catalog_id: str, uploads: list[Uploaded], sample: int) -> dict:
    """Every successful upload is listed with its metadata; a sample finds itself at rank 1."""
    client = httpx.Client(base_url=server.base, headers=server.headers, timeout=120)
    listed: dict[int, dict] = {}
    offset = 0
    while True:
        page = client.get(
            f"/catalogs/{catalog_id}/images", params={"offset": offset, "limit": 500}
        ).json()
        listed.update({img["id"]: img["metadata"] for img in page["images"]})
        offset += len(page["images"])
        if not page["images"] or offset >= page["total"]:
            break
    total = page["total"]
    lost = [
        u.n
        for u in uploads
        if u.image_id not in listed or listed[u.image_id].get("bench_upload") != u.n
    ]
    rng = random.Random(0)
    chosen = rng.sample(uploads, min(sample, len(uploads)))
    not_first = []
    for up in chosen:
        answer = client.post(
            f"/catalogs/{catalog_id}/search",
            files={"file": ("q.jpg", up.data, "image/jpeg")},
            data={"k": "1"},
        )
        results = answer.json().get("results", []) if answer.is_success else []
        if not results or results[0]["id"] != up.image_id:
            not_first.append(up.n)
    client.close()
    return {
        "listed": len(listed),
        "total": total,
        "uploads": len(uploads),
        "lost": lost,
        "searched": len(chosen),
        "not_rank1": not_first,
    }


# -- in-process profile of one query --------------------------------------------------------
def profile(collection_dir: Path, queries: list[bytes], users: int) -> dict:
    """Where a query's time goes without HTTP: stage by stage on one thread, then the whole
    pipeline from ``users`` threads at once; and the cost of reloading the index."""
    from lookalike import Collection
    from lookalike.images import decode
    from lookalike.server.shapes import hit_json

    col = Collection.open(collection_dir)
    col.search(queries[0], k=10)  # load the model and the index
    stages: dict[str, list[float]] = {"decode": [], "embed": [], "index": [], "json": []}
    for data in queries[:100]:
        t0 = time.perf_counter()
        image = decode(data)
        t1 = time.perf_counter()
        vector = col.embed([image])
        t2 = time.perf_counter()
        hits = col.search_vectors(vector, 10)[0]
        t3 = time.perf_counter()
        json.dumps({"results": [hit_json("c_000000000000", h) for h in hits]})
        t4 = time.perf_counter()
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name].append(seconds)

    def one(data: bytes) -> float:
        start = time.perf_counter()
        col.search(decode(data), k=10)
        return time.perf_counter() - start

    batch = [queries[i % len(queries)] for i in range(users * 10)]
    with ThreadPoolExecutor(users) as pool:
        start = time.perf_counter()
        latencies = list(pool.map(one, batch))
        wall = time.perf_counter() - start
    reloads = []
    for _ in range(10):
        fresh = Collection.open(collection_dir)
        start = time.perf_counter()
        fresh.index()
        reloads.append(time.perf_counter() - start)
        fresh.close()
    # What a reader does when the index file is behind the catalogue (an upload between its
    # commit and its index save): rebuild the index from every stored vector.
    from lookalike.index.projected import load_projection

    rebuilds = []
    for _ in range(3):
        start = time.perf_counter()
        col._build_index("image", load_projection(collection_dir / "index" / "image.faiss"))
        rebuilds.append(time.perf_counter() - start)
    index_bytes = sum(f.stat().st_size for f in (collection_dir / "index").glob("image.*"))
    col.close()
    return {
        "stages_ms": {k: ms(v, 50) for k, v in stages.items()},
        "stages_p99_ms": {k: ms(v, 99) for k, v in stages.items()},
        "total_ms": ms([sum(s) for s in zip(*stages.values(), strict=True)], 50),
        "threads": users,
        "threaded_qps": len(batch) / wall,
        "threaded_p50_ms": ms(latencies, 50),
        "threaded_p99_ms": ms(latencies, 99),
        "reload_ms": ms(reloads, 50),
        "rebuild_ms": ms(rebuilds, 50),
        "index_mb": index_bytes / 1e6,
        "other_index_mb": sum(
            f.stat().st_size
            for f in (collection_dir / "index").glob("*.faiss")
            if f.name != "image.faiss"
        )
        / 1e6,
    }


# -- report ----------------------------------------------------------------------------------
def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q)) if samples else float("nan")


def summarise(phase: Phase) -> dict:
    searches = [s for s in phase.samples if s.kind == "search"]
    uploads = [s for s in phase.samples if s.kind == "upload"]
    probes = [s for s in phase.samples if s.kind == "probe"]
    ok = [s.seconds for s in searches if not s.error]
    errors = [s for s in phase.samples if s.error]
    in_window = [s for s in searches if s.start < phase.duration]
    seen = [v for v in phase.visibility if v.delay is not None]
    cross = [v for v in seen if v.upload_worker and v.probe_worker != v.upload_worker]
    busy_cores = phase.machine_cpu / phase.elapsed
    others = max(0.0, phase.machine_cpu - phase.server_cpu - phase.client_cpu)
    workers = sorted({w for w in phase.user_workers if w is not None})
    return {
        "phase": phase.name,
        "think": phase.think,
        "duration_s": phase.duration,
        "searches": len(searches),
        "search_errors": sum(1 for s in searches if s.error),
        "search_rps": len(in_window) / phase.duration,
        "p50_ms": ms(ok, 50),
        "p90_ms": ms(ok, 90),
        "p99_ms": ms(ok, 99),
        "max_ms": ms(ok, 100),
        "uploads_ok": len(phase.uploads),
        "upload_errors": sum(1 for s in uploads if s.error),
        "upload_p50_ms": ms([s.seconds for s in uploads if not s.error], 50),
        "upload_p99_ms": ms([s.seconds for s in uploads if not s.error], 99),
        "uploads_per_s": len(phase.uploads) / phase.duration,
        "probes": len(probes),
        "probe_errors": sum(1 for s in probes if s.error),
        "visibility_samples": len(phase.visibility),
        "visible": len(seen),
        "visible_first_try": sum(1 for v in seen if v.attempts == 1),
        "visibility_p50_ms": ms([v.delay for v in seen], 50),
        "visibility_max_ms": ms([v.delay for v in seen], 100),
        "cross_worker_visible": len(cross),
        "errors": sorted({f"{s.kind} {s.status}: {s.error[:120]}" for s in errors})[:10],
        "users_per_worker": [sum(1 for w in phase.user_workers if w == p) for p in workers],
        "server_cpu_s": phase.server_cpu,
        "server_cpu_ms_per_request": 1000
        * phase.server_cpu
        / max(1, len(searches) + len(uploads) + len(probes)),
        "client_cpu_s": phase.client_cpu,
        "machine_busy_cores": busy_cores,
        "other_cpu_s": others,
        "other_cores": others / phase.elapsed,
        "server_cores": phase.server_cpu / phase.elapsed,
        "client_cores": phase.client_cpu / phase.elapsed,
        "load_avg": phase.load,
    }


def diagnose(results: list[dict], prof: dict | None) -> list[str]:
    """Why a run missed the latency goal, from the measurements (bullets, may be empty)."""
    lines: list[str] = []
    fixes: list[str] = []
    staged = {r["workers"]: r["server_stages"] for r in results if r.get("instrumented")}
    control = {
        r["workers"]: r["summary"]
        for r in results
        if r["summary"]["phase"] == "think, no uploads" and not r.get("instrumented")
    }
    for r in results:
        s, st = r["summary"], staged.get(r["workers"]) or {}
        if r.get("instrumented") or s["phase"] != "think" or s["p99_ms"] <= GOAL_P99_MS:
            continue
        who = f"{r['workers']} worker(s)"
        if r["workers"] in control:
            c = control[r["workers"]]
            lines.append(
                f"- {who}: without the uploader the same users see p50 {c['p50_ms']:.0f} ms, "
                f"p99 {c['p99_ms']:.0f} ms ({c['search_rps']:.1f} searches/s), against p50 "
                f"{s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms with it."
            )
        cpu_need = s["server_cpu_ms_per_request"] * (s["search_rps"] + s["uploads_per_s"]) / 1000
        lines.append(
            f"- {who}: the server used {s['server_cores']:.2f} cores "
            f"({s['server_cpu_ms_per_request']:.0f} ms of CPU per request, {cpu_need:.2f} cores "
            "for the offered load), the load "
            f"generator {s['client_cores']:.2f}, other processes {s['other_cores']:.2f} of the "
            f"machine's {_cpus()}."
        )
        if st:
            worst = max(("pre", "index", "embed", "knn", "other", "post"), key=lambda k: st[k][1])
            lines.append(
                f"- {who}, instrumented run: server-side p99 {st['total'][1]:.0f} ms; the "
                f"largest p99 stage is *{worst}* ({st[worst][1]:.0f} ms)."
            )
            if st["rebuilds_per_search"] > 0:
                lines.append(
                    f"- {who}: {st['rebuilds_per_search']:.2f} index rebuilds per search "
                    f"(p99 {st['rebuild'][1]:.0f} ms each, under the reader's lock, while the "
                    f"other searches of that worker wait: *index* p99 {st['index'][1]:.0f} ms). "
                    "A search that lands between an upload's commit (the catalogue's generation "
                    "moves) and the writer's index save finds the saved file behind and rebuilds "
                    "the whole index from the stored vectors."
                )
                fix = (
                    "Readers should not rebuild while a writer is between its commit and its "
                    "index save: follow the generation in `index/image.json` (written last, "
                    "atomically, before the upload answers) rather than the catalogue's, so a "
                    "reader only *reloads* a saved file (ms) and an upload is still visible to "
                    "every search that starts after it answered; rebuild only when the file is "
                    "behind and no writer holds the collection's `.lock` (a crashed writer), or "
                    "add only the rows newer than the loaded index; and never rebuild under the "
                    "lock every search takes (build aside, then swap). "
                    "(`collection.py` `Collection.index`, `server/catalogs.py`.)"
                )
                if fix not in fixes:
                    fixes.append(fix)
    uneven = [
        (r["workers"], r["summary"]["phase"], r["summary"]["users_per_worker"])
        for r in results
        if r["workers"] > 1 and not r.get("instrumented") and r["summary"]["users_per_worker"]
    ]
    uneven = [u for u in uneven if max(u[2]) > 1.5 * max(1, min(u[2]))]
    if uneven:
        where = ", ".join(f"{spread} in *{phase}*" for _, phase, spread in uneven)
        lines.append(
            f"- {uneven[0][0]} workers: the users' keep-alive connections were spread {where} "
            "(the workers share one listening socket; whichever accepts a connection keeps it "
            "for its lifetime), so one worker carried most of the load."
        )
        fixes.append(
            "Spread connections over workers: a reverse proxy balancing per request (nginx, "
            "HAProxy) in front of single-worker servers on separate ports, or `SO_REUSEPORT` "
            "sockets (uvicorn has no option for it)."
        )
    if lines and prof:
        lines.append(
            f"- In-process, a search costs {prof['total_ms']:.0f} ms of one core (embedding "
            f"{prof['stages_ms']['embed']:.0f} ms); {_cpus()} cores therefore cap the server "
            f"near {_cpus() * 1000 / prof['total_ms']:.0f} searches/s before HTTP and uploads."
        )
    if lines and any(r["summary"]["uploads_ok"] for r in results) and prof:
        fixes.append(
            f"Each upload of one image makes the writer save every index whole "
            f"(`save_indexes`: the image index, {prof['index_mb']:.0f} MB with its PCA, and the "
            f"other spaces' indexes, {prof['other_index_mb']:.0f} MB): O(N) per upload. Group "
            "concurrent uploads into one commit, or keep an append-only delta beside the saved "
            "index."
        )
    if fixes:
        lines += ["", "Suggested fixes (not made here: they are server/collection code):", ""]
        lines += [f"{i}. {fix}" for i, fix in enumerate(fixes, 1)]
    return lines


def f0(value: float) -> str:
    return "–" if value != value else f"{value:.0f}"


def render(
    results: list[dict], catalogue: Catalogue, prof: dict | None, args, host_load: str
) -> str:
    think = (
        f"uniform({args.think[0]:g}, {args.think[1]:g}) s" if args.think else "none (saturation)"
    )
    rows, goal_rows = [], []
    plain = [r for r in results if not r.get("instrumented")]
    for r in plain:
        s, v = r["summary"], r["verify"]
        rows.append(
            [
                r["workers"],
                s["phase"],
                f"{s['searches']:,}",
                s["search_errors"] + s["upload_errors"] + s["probe_errors"],
                f"{s['search_rps']:.1f}",
                f0(s["p50_ms"]),
                f0(s["p90_ms"]),
                f0(s["p99_ms"]),
                f0(s["max_ms"]),
                f"{s['uploads_ok']} ({s['uploads_per_s']:.1f}/s, p50 {f0(s['upload_p50_ms'])} ms)"
                if s["uploads_ok"] or s["upload_errors"]
                else "–",
                len(v["lost"]),
                (
                    f"{s['visible']}/{s['visibility_samples']} seen "
                    f"({s['visible_first_try']} at the first search), "
                    f"p50 {f0(s['visibility_p50_ms'])} / max {f0(s['visibility_max_ms'])} ms"
                    + (f", {s['cross_worker_visible']} cross-worker" if r["workers"] > 1 else "")
                )
                if s["visibility_samples"]
                else "–",
                f"{s['server_cpu_ms_per_request']:.0f} ms",
                f"{s['machine_busy_cores']:.2f} ({s['other_cores']:.2f} others)",
            ]
        )
        if s["phase"] == "think":
            ok = (
                s["search_errors"] + s["upload_errors"] + s["probe_errors"] == 0
                and not v["lost"]
                and s["p99_ms"] <= GOAL_P99_MS
            )
            goal_rows.append(
                f"- **{r['workers']} worker(s): {'PASS' if ok else 'MISS'}** — errors "
                f"{s['search_errors'] + s['upload_errors'] + s['probe_errors']}, lost uploads "
                f"{len(v['lost'])}, p99 {f0(s['p99_ms'])} ms (goal ≤ {GOAL_P99_MS:.0f} ms)"
            )
    header = [
        "workers",
        "phase",
        "searches",
        "errors",
        "search req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "uploads (rate, latency)",
        "lost",
        "visibility of an upload",
        "server CPU / request",
        "busy cores (others)",
    ]
    checks = []
    for i, r in enumerate(results):
        v = r["verify"]
        if i + 1 == len(results) or results[i + 1]["verify"] is not v:  # one line per server
            checks.append(
                f"- {r['workers']} worker(s){' (instrumented)' if r.get('instrumented') else ''}"
                f": {v['uploads']} uploads answered 2xx, "
                f"{v['uploads'] - len(v['lost'])} listed with their metadata by "
                f"`GET /catalogs/{{id}}/images` ({v['total']:,} images in all); "
                f"{v['searched'] - len(v['not_rank1'])}/{v['searched']} sampled uploads find "
                "themselves at rank 1."
            )
    errors = sorted({e for r in results for e in r["summary"]["errors"]})
    text = [
        "## Server under load (`lookalike serve`)",
        "",
        f"{args.users} simulated users search by image (a held-out Corel-1k photo, 384x256, "
        f"multipart, k={args.k}) while one client uploads images one per request, back to "
        f"back, against `lookalike serve` on 127.0.0.1, over a catalogue of "
        f"{catalogue.images:,} Tiny ImageNet images (built through the API: "
        f"{catalogue.meta['how']}, {catalogue.meta['build_seconds']:.0f} s). "
        f"Phase *think*: {args.duration:g} s, each user waits for its answer then thinks "
        f"{think} (a closed loop like locust's `between`, so {args.users} users offer about "
        f"{args.users / ((args.think[0] + args.think[1]) / 2 if args.think else 1):.0f} "
        "requests/s and only a few are in flight at once). Phase *think, no uploads*: "
        f"the same for {args.control_duration:g} s without the uploader (a control). "
        "Phase *saturation*: "
        f"{args.saturation_duration:g} s with no think time, {args.users} searches always in "
        "flight: the throughput ceiling. Every "
        f"{args.probe_every}th upload is probed: searches with its own image on fresh "
        "connections (any worker) until it comes back at rank 1; the delay runs from the "
        "upload's answer to that search's answer (so it includes one search).",
        "",
        table(header, rows),
        "",
        f"Goal (issue #6, phase *think*: 0 errors, no lost upload, p99 ≤ {GOAL_P99_MS:.0f} ms):",
        "",
        *goal_rows,
        "",
        "Checks after the run:",
        "",
        *checks,
    ]
    if errors:
        text += ["", "Errors seen: " + "; ".join(f"`{e}`" for e in errors)]
    staged = [r for r in results if r.get("instrumented") and r.get("server_stages")]
    if staged:
        keys = ["total", "pre", "index", "reload", "rebuild", "embed", "knn", "other", "post"]
        text += [
            "",
            "Server-side time of a search, p50 / p99 ms, in a second run of the *think* phase "
            "on the same app with timing wrappers (`--instrument`). *pre*: arrival to the start "
            "of the search in a worker thread (body, multipart parsing, key check, waiting for "
            "a thread); *index*: getting the "
            "reader's index (waiting for its lock, and updating it after an upload), of which "
            "*reload* (reading the index file the writer saved) and *rebuild* (rebuilding it "
            "from the stored vectors when the file is behind the catalogue) are this request's "
            "own work; *embed*: decoding at the model's size and the network; *kNN*: index "
            "search, query expansion, catalogue lookups; *other*: decoding the upload, result "
            "JSON; *post*: the answer sent. Upload: the server's time for one upload request.",
            "",
            table(
                [
                    "workers",
                    "searches",
                    "client p50 / p99",
                    *keys,
                    "reloads, rebuilds / search",
                    "upload",
                ],
                [
                    [
                        r["workers"],
                        r["server_stages"]["searches"],
                        f"{r['summary']['p50_ms']:.0f} / {r['summary']['p99_ms']:.0f}",
                        *(
                            f"{r['server_stages'][k][0]:.0f} / {r['server_stages'][k][1]:.0f}"
                            for k in keys
                        ),
                        f"{r['server_stages']['reloads_per_search']:.2f}, "
                        f"{r['server_stages']['rebuilds_per_search']:.2f}",
                        "{:.0f} / {:.0f}".format(*r["server_stages"]["upload_total"]),
                    ]
                    for r in staged
                ],
            ),
        ]
    if prof:
        st, p99 = prof["stages_ms"], prof["stages_p99_ms"]
        text += [
            "",
            "Where a search's time goes (in-process, no HTTP, same catalogue; median, p99 in "
            "brackets): "
            f"decode {st['decode']:.1f} ({p99['decode']:.1f}) ms, "
            f"embedding {st['embed']:.1f} ({p99['embed']:.1f}) ms, "
            f"index search with query expansion and catalogue lookup {st['index']:.1f} "
            f"({p99['index']:.1f}) ms, JSON {st['json']:.2f} ({p99['json']:.2f}) ms: "
            f"{prof['total_ms']:.0f} ms on one thread. From {prof['threads']} threads at once: "
            f"{prof['threaded_qps']:.0f} searches/s, p50 {prof['threaded_p50_ms']:.0f} ms, p99 "
            f"{prof['threaded_p99_ms']:.0f} ms. Every upload makes every worker reload its "
            f"image index on its next search: reading the saved file ({prof['index_mb']:.0f} "
            f"MB) takes {prof['reload_ms']:.0f} ms, rebuilding it from the stored vectors (when "
            f"the file is behind the catalogue) {prof['rebuild_ms']:.0f} ms, both under the "
            "reader's lock.",
        ]
    why = diagnose(results, prof)
    if why:
        text += ["", "Why the goal is missed (from the figures above):", "", *why]
    text += ["", f"Host during the run: {host_load}."]
    return "\n".join(t for t in text if t is not None)


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds of the think phase [60]")
    parser.add_argument("--saturation-duration", type=float, help="[30]; 0: skip it")
    parser.add_argument(
        "--control-duration", type=float, help="think phase without the uploader [30]; 0: skip"
    )
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="e.g. --workers 1 2")
    parser.add_argument(
        "--think", default="0.5,1.5", help="lo,hi seconds between a user's requests; 0: none"
    )
    parser.add_argument("--images", type=int, help="catalogue size [10000]")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--probe-every", type=int, default=5, help="probe every n-th upload")
    parser.add_argument("--quick", action="store_true", help="1000 images, 10 s phases, no write")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached catalogue")
    parser.add_argument("--prepare-only", action="store_true", help="build the catalogue, stop")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--instrument",
        action="store_true",
        help="run the same app with timing wrappers and report server-side time by stage",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args(argv)
    quick = {"images": 1000, "duration": 10.0, "saturation_duration": 10.0}
    quick["control_duration"] = 10.0
    full = {"images": 10_000, "duration": 60.0, "saturation_duration": 30.0}
    full["control_duration"] = 30.0
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.no_write = args.no_write or args.quick
    lo_hi = [float(v) for v in args.think.split(",")]
    args.think = (lo_hi[0], lo_hi[-1]) if any(lo_hi) else None
    if not TINY.is_dir() or not COREL.is_dir():
        print(f"needs {TINY} and {COREL}", file=sys.stderr)
        return 2

    corel = image_files(COREL)
    queries = [p.read_bytes() for p in corel[0::2]]  # held out: never in the catalogue
    args.upload_pool = corel[1::2]
    catalogue = prepare_catalogue(args.images, args.rebuild)
    if args.prepare_only:
        return 0
    host_before = os.getloadavg()
    results: list[dict] = []
    prof = None
    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        # `lookalike serve` for each worker count; then, with --instrument, the think phase
        # again on the same app with timing wrappers (server-side time by stage).
        runs = [(w, False) for w in args.workers]
        runs += [(w, True) for w in args.workers if args.instrument]
        for workers, instrumented in runs:
            tag = f"{workers}{'-instrumented' if instrumented else ''}"
            data = Path(tmp) / f"data-{tag}"
            shutil.copytree(catalogue.data, data)
            key = secrets.token_urlsafe(24)
            stats = Path(tmp) / f"stats-{tag}" if instrumented else None
            log = Path(tmp) / f"server-{tag}.log"
            with Server(data, workers, key, log, stats) as server:
                warm = asyncio.run(warm_up(server, catalogue.catalog_id, queries))
                print(f"{tag} worker(s) on {server.base}: warm after {warm} searches")
                load = Load(server, catalogue.catalog_id, queries, args)
                phases = [("think", args.duration, args.think, True)]
                if args.control_duration > 0 and not instrumented:
                    phases.append(("think, no uploads", args.control_duration, args.think, False))
                if args.saturation_duration > 0 and not instrumented:
                    phases.append(("saturation", args.saturation_duration, None, True))
                done = []
                for name, duration, think, upload in phases:
                    phase = asyncio.run(load.run(name, duration, think, upload))
                    done.append(phase)
                    s = summarise(phase)
                    print(
                        f"  {name}: {s['searches']} searches ({s['search_rps']:.1f}/s), "
                        f"errors {s['search_errors']}+{s['upload_errors']}+{s['probe_errors']}, "
                        f"p50/p90/p99/max {f0(s['p50_ms'])}/{f0(s['p90_ms'])}/"
                        f"{f0(s['p99_ms'])}/{f0(s['max_ms'])} ms, {s['uploads_ok']} uploads "
                        f"(p50 {f0(s['upload_p50_ms'])} ms), visible first try "
                        f"{s['visible_first_try']}/{s['visibility_samples']}, "
                        f"cross-worker {s['cross_worker_visible']}, users/worker "
                        f"{s['users_per_worker']}, server CPU {s['server_cpu_s']:.0f} s, "
                        f"client CPU {s['client_cpu_s']:.0f} s, busy cores "
                        f"{s['machine_busy_cores']:.2f}, load {s['load_avg'][0]:.1f}",
                        flush=True,
                    )
                uploads = [u for p in done for u in p.uploads]
                checked = verify(server, catalogue.catalog_id, uploads, sample=50)
                print(
                    f"  verify: {len(checked['lost'])} lost of {checked['uploads']}, "
                    f"{len(checked['not_rank1'])}/{checked['searched']} not at rank 1",
                    flush=True,
                )
            for phase in done:  # after the server stopped: its timings are all written
                stages = server_stages(stats, phase) if stats else {}
                results.append(
                    {
                        "workers": workers,
                        "instrumented": instrumented,
                        "summary": summarise(phase),
                        "verify": checked,
                        "server_stages": stages,
                    }
                )
            if prof is None and not args.no_profile:
                prof = profile(data / "catalogs" / catalogue.catalog_id, queries, args.users)
                print(f"profile: {json.dumps(prof)}", flush=True)
    host_after = os.getloadavg()
    host = (
        f"load average {host_before[0]:.1f} before, {host_after[0]:.1f} after "
        f"(a 2-core machine shared with other jobs: figures are noisy)"
        if (os.cpu_count() or 0) <= 2
        else f"load average {host_before[0]:.1f} before, {host_after[0]:.1f} after"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {
        "catalogue": asdict(catalogue) | {"data": str(catalogue.data)},
        "results": results,
        "profile": prof,
    }
    (args.out / "server_load.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    text = render(results, catalogue, prof, args, host)
    print(text)
    if not args.no_write:
        command = "python " + " ".join(["benchmarks/server_load.py", *(argv or sys.argv[1:])])
        if "command" in inspect.signature(write_section).parameters:
            write_section("server-load", text, command=command)
        else:
            write_section("server-load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
