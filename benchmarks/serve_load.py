"""Serving under load: the one-hop data plane against a bare Ray Serve deployment and in-process ONNX Runtime.

One run on loopback, every load point bounded in requests and seconds, for two DLRMs on the
default synthetic schema (200k items, 100k users), exported to ONNX, 1 intra-op thread:

- ``reference`` (the anchor of the latency, throughput, ranking and alias figures): the search's
  reference architecture (top MLP 512-512-256, ~0.1 ms), where the served cost is nearly all HTTP,
  JSON and Ray Serve: the floor of the serving path;
- ``wide_mlp``: a production-size ranking model, top MLP 2048-2048-2048-1024 (~2 ms a request in
  process), where what batching is for is the model's compute (``batching_speedup_c32``).

For each model:

- ``in_process_ort``: ``ModelRunner.logits`` on the already encoded request, called from 1, 8 or
  32 threads: the floor a served request is compared with;
- ``serve_batched`` / ``serve_unbatched``: ``POST /serving/v1/models/{id}/predict`` (one row per
  request, JSON) on the ``ModelServer`` replica's own port (Ray Serve's direct ingress, the URL
  ``autocompress serve`` prints): validation, encoding and the ONNX Runtime session all in that
  replica, at 1, 8 and 32 concurrent clients, with dynamic batching on, then off;
- ``bare_serve``: the anchor, in the same run: a hand-written single-hop Serve deployment of the
  same ONNX files (FastAPI ingress, the session in the replica, JSON rows, no validation, no
  batching), in the same Serve mode, called on its own direct-ingress port.

On the reference model also: ``rank_k200_serve`` / ``rank_k200_bare`` (one context and 200
candidates as columns, top 10, 8 clients; candidates per second), ``alias_switch`` (8 clients on
``/v1/endpoints/{alias}/predict``, no client retries, while the job API promotes another model a
third of the way in and rolls back at two thirds: failed requests, and how long each move took to
reach the replica), and ``replica_kill`` (two ``ModelServer`` replicas behind the HTTP proxy, 8
clients for ``--kill-seconds``, one replica that holds the model ``ray.kill``-ed a sixth of the way
in; a client retries a failed request twice, 0.1 s and 0.2 s later, and the rate counts requests
that finally succeeded).

Targets (``summary.targets_met``): at concurrency 1, ours <= bare + 0.5 ms and <= in process + 3 ms;
ranking >= 80 % of bare's candidates/s; throughput at 32 >= bare's; batching >= 3x unbatched at 32
on ``wide_mlp``; replica kill success >= 0.99; no failed request across the alias moves. Each
served point also reports the CPU milliseconds spent per request by the load client, the job API
replica (``ingress``: off the prediction path, so ~0), the ``ModelServer`` replica and the bare
replica (from ``/proc``). Prints a table and writes ``benchmarks/results/serve_load.json``:
``rows``, and ``summary`` with the figures above and every model's under ``by_model``. ``--quick``
is a smoke run on the tiny data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # module level: the bare routes' annotations are resolved here
from fastapi.responses import JSONResponse
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
CONCURRENCY = (1, 8, 32)
APP = "autocompress"
SERVING_APP = "autocompress-serving"
BARE_APP = "bare"
RANK_CANDIDATES = 200
RANK_K = 10
RANK_CONCURRENCY = 8
ALIAS = "bench-alias"
TARGET_OVER_BARE_MS = 0.5
TARGET_OVERHEAD_MS = 3.0
TARGET_RANK_VS_BARE = 0.8
TARGET_BATCHING_SPEEDUP = 3.0
TARGET_KILL_SUCCESS = 0.99
CLIENT_RETRY_DELAYS_S = (0.1, 0.2)


@dataclass
class LoadResult:
    """Client-side timings of one load point; a request counts once, however many attempts it took."""

    latencies_ms: list[float] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    models_seen: list[tuple[float, str]] = field(default_factory=list)  # (when answered, model_id)

    def row(self, mode: str, concurrency: int) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {
            "mode": mode,
            "concurrency": concurrency,
            "requests": self.succeeded + self.failed,
            "failed": self.failed,
            "retried": self.retried,
            "seconds": round(self.seconds, 3),
            "throughput_rps": self.succeeded / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }


MODELS: dict[str, dict[str, Any] | None] = {
    "wide_mlp": {"top_mlp": [2048, 2048, 2048, 1024]},
    "reference": None,
}
HEADLINE = "wide_mlp"  # batching_speedup_c32: the production-size model
ANCHOR = "reference"  # latency, throughput, ranking, alias moves, replica kill


@dataclass
class Prepared:
    """A registered model: its id, ONNX path, schema and example rows."""

    model_id: str
    path: str
    schema: Any
    rows: list[dict[str, Any]]


def prepare_model(work: Path, db_url: str, name: str, quick: bool, arch: dict[str, Any] | None) -> Prepared:
    """Export the model into ``work/artifacts`` and register it."""
    from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
    from autocompress.export import export_onnx
    from autocompress.models import build
    from autocompress.store import Store

    config = SyntheticConfig.tiny() if quick else SyntheticConfig()
    schema = synthetic_schema(config)
    model = build("dlrm", schema, arch).eval()
    path = export_onnx(model, schema, work / "artifacts" / name / "model.onnx").path
    with Store(db_url) as store:
        record = store.register_model(name, path, schema.to_dict(), {})
    batch = schema.example_batch(256, seed=1)
    rows = [{n: batch[n][i].tolist() for n in schema.feature_names} for i in range(256)]
    return Prepared(record.id, str(path), schema, rows)


def rank_bodies(prepared: Prepared, count: int = 8) -> list[bytes]:
    """``count`` ranking requests: one context (user and query features) and 200 candidates as columns."""
    schema = prepared.schema
    context_names = [*schema.features_on("user"), *schema.features_on("context")]
    item_names = [n for n in schema.feature_names if n not in context_names]
    bodies = []
    for i in range(count):
        batch = schema.example_batch(RANK_CANDIDATES, seed=100 + i)
        context = {n: prepared.rows[i][n] for n in context_names}
        columns = {n: batch[n].tolist() for n in item_names}
        bodies.append(
            json.dumps({"context": context, "candidates": {"columns": columns}, "k": RANK_K}).encode()
        )
    return bodies


def in_process(
    runner: Any, features: list[Any], concurrency: int, max_requests: int, max_s: float
) -> LoadResult:
    """``ModelRunner.logits`` on encoded one-row requests from ``concurrency`` threads."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.perf_counter() + max_s
    issued = 0

    def worker() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= max_requests or time.perf_counter() > deadline:
                    return
                i = issued
                issued += 1
            t0 = time.perf_counter()
            runner.logits(features[i % len(features)])
            took = (time.perf_counter() - t0) * 1e3
            with lock:
                result.latencies_ms.append(took)
                result.succeeded += 1

    for _ in range(min(200, max_requests)):  # warm-up
        runner.logits(features[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    result.seconds = time.perf_counter() - started
    return result


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request and reads its answer, one at a time.

    The load client is on the same two cores as the replicas it measures, so it must cost little:
    at 32 clients aiohttp spent 0.29-0.34 ms of CPU a request, this 0.13 (by-hand A/B on the
    batched ``wide_mlp``, 2026-12-07), CPU the replicas under test get back. It reads the status
    line and ``content-length`` and nothing else (an answer without ``content-length`` is refused,
    not guessed at).
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError(f"connection closed: {exc or 'by the server'}"))

    async def send(self, request: bytes, timeout_s: float) -> tuple[int, bytes]:
        """The status and body of the answer to ``request`` (a whole HTTP/1.1 request)."""
        assert self._transport is not None and self._answer is None, "one request at a time"
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)
        try:
            return await answer
        finally:
            timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._answer is None:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ConnectionError(f"an answer without content-length: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        total = end + 4 + int(head[at + 17 : stop if stop > 0 else len(head)])
        if len(self._buffer) < total:
            return
        body = bytes(self._buffer[end + 4 : total])
        del self._buffer[:total]
        answer, self._answer = self._answer, None
        if b"\r\nconnection: close" in head:
            self._close()
        if not answer.done():
            answer.set_result((int(head[9:12]), body))

    def close(self) -> None:
        self._fail(ConnectionError("closed by the client"))

    def _expire(self) -> None:
        self._fail(TimeoutError("no answer in time"))

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        self._close()  # a late or broken answer must not be read as the next request's
        if answer is not None and not answer.done():
            answer.set_exception(exc)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._buffer.clear()


class HttpClient:
    """POSTs JSON bodies to one URL on one keep-alive connection, opened again after a failure."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url: only http://host:port/path is supported, got {url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self._head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._timeout_s = timeout_s
        self._connection: HttpConnection | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """The status and body of the answer; ``OSError`` (``ConnectionError``) or ``TimeoutError``."""
        if self._connection is None or not self._connection.open:
            _, self._connection = await asyncio.get_running_loop().create_connection(
                HttpConnection, self._host, self._port
            )
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        return await self._connection.send(request, self._timeout_s)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


async def http_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    max_requests: int,
    max_s: float,
    *,
    retries: bool = False,
    at: list[tuple[float, Callable[[], Any]]] | None = None,
    observe: bool = False,
) -> LoadResult:
    """POST ``bodies`` round-robin from ``concurrency`` clients, a connection each, until either bound.

    With ``retries`` a failed request (not answered 200: a connection error, a timeout, a 5xx) is
    tried again after each of ``CLIENT_RETRY_DELAYS_S``; each ``(seconds, fn)`` of ``at`` is called
    once that far into the run (in a thread); ``observe`` records which model answered each request.
    """
    result = LoadResult()
    issued = 0
    started = time.perf_counter()
    deadline = started + max_s

    async def once(client: HttpClient, body: bytes) -> bool:
        try:
            status, content = await client.post(body)
        except (OSError, TimeoutError):
            return False
        if status == 200 and observe:
            result.models_seen.append((time.perf_counter(), json.loads(content)["model_id"]))
        return status == 200

    async def worker() -> None:
        nonlocal issued
        client = HttpClient(url)
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                t0 = time.perf_counter()
                ok = await once(client, body)
                for delay in CLIENT_RETRY_DELAYS_S if retries else ():
                    if ok:
                        break
                    result.retried += 1
                    await asyncio.sleep(delay)
                    ok = await once(client, body)
                if ok:
                    result.succeeded += 1
                    result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    result.failed += 1
        finally:
            client.close()

    async def trigger(seconds: float, fn: Callable[[], Any]) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(fn)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    tasks += [asyncio.create_task(trigger(s, fn)) for s, fn in at or ()]
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    return result


REPLICA_TITLES = {
    "ingress": f"ServeReplica:{APP}:Api",  # the job API: off the prediction path
    "model_server": f"ServeReplica:{SERVING_APP}:ModelServer",
    "bare": f"ServeReplica:{BARE_APP}:Bare",
}


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process (the load client) and by each deployment.

    A deployment's replicas are the processes Ray titles ``ray::ServeReplica:<app>:<deployment>``,
    read from ``/proc`` (empty where there is none).
    """
    if not Path("/proc/self/stat").exists():
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    used = {"client": sum(os.times()[:2])}
    for name, title in REPLICA_TITLES.items():
        used[name] = 0.0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if title.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    used[name] += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):  # the process ended meanwhile
                continue
    return used


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """What each process spent per request between two ``cpu_seconds`` readings, in CPU milliseconds."""
    return {name: round((after[name] - before[name]) * 1e3 / max(1, requests), 3) for name in after}


def settings_for(db_url: str, root: Path, *, batching: bool = True, replicas: int = 1) -> Any:
    from serve_app.serve import ServeSettings

    return ServeSettings.from_dict(
        {
            "db_url": db_url,
            "artifact_root": str(root),
            "max_running_jobs": 0,
            "api": {"num_cpus": 0.25},
            "model_server": {
                "num_replicas": replicas,
                "num_cpus": 0.5,
                "batching": {"enabled": batching},
            },
        }
    )


def deploy(db_url: str, root: Path, port: int, *, batching: bool, replicas: int = 1) -> str:
    """Run both applications; the base URL of the serving replica (direct ingress), else of the proxy."""
    from serve_app.serve import run_locally, serving_urls

    settings = settings_for(db_url, root, batching=batching, replicas=replicas)
    run_locally(settings, port=port, name=APP)
    return (serving_urls(settings, APP) or [f"http://127.0.0.1:{port}/serving"])[0]


def bare_serve_app(paths: dict[str, str], throughput_optimized_env: dict[str, str]) -> Any:
    """The anchor: a hand-written single-hop Serve deployment of the same ONNX files.

    A FastAPI ingress with the ONNX Runtime sessions in the replica (opened as ours are: the
    model's default target), JSON rows in, no validation, no batching; ``/{model}/predict`` and
    ``/{model}/rank`` (one context, candidates as columns, the best ``k``); answers built as ours are
    (``JSONResponse``, no response model).
    """
    from ray import serve

    app = FastAPI()

    class Bare:
        def __init__(self, paths: dict[str, str]) -> None:
            from autocompress.export import create_session
            from autocompress.spec import Target

            self.sessions = {name: create_session(path, Target()) for name, path in paths.items()}
            self.inputs = {
                name: [
                    (i.name, np.float32 if i.type == "tensor(float)" else np.int64) for i in s.get_inputs()
                ]
                for name, s in self.sessions.items()
            }

        async def predict(self, model, request):
            rows = (await request.json())["rows"]
            feeds = {n: np.asarray([r[n] for r in rows], dtype=t) for n, t in self.inputs[model]}
            (out,) = self.sessions[model].run(None, feeds)
            return JSONResponse({"logits": out.reshape(-1).tolist()})

        async def rank(self, model, request):
            body = await request.json()
            context, columns = body["context"], body["candidates"]["columns"]
            n = len(next(iter(columns.values())))
            feeds = {}
            for name, dtype in self.inputs[model]:
                if name in context:
                    feeds[name] = np.repeat(np.asarray([context[name]], dtype=dtype), n, axis=0)
                else:
                    feeds[name] = np.asarray(columns[name], dtype=dtype)
            logits = self.sessions[model].run(None, feeds)[0].reshape(-1)
            best = np.argsort(-logits, kind="stable")[: body.get("k", 10)]
            return JSONResponse({"items": [{"index": int(i), "logit": float(logits[i])} for i in best]})

    # The class travels to the replica by value, where FastAPI reads the routes' signatures again:
    # annotations must be the classes themselves, not names (this module's ``from __future__
    # import annotations``) that the replica cannot look up.
    for path, route in (("/{model}/predict", Bare.predict), ("/{model}/rank", Bare.rank)):
        route.__annotations__ = {"model": str, "request": Request, "return": JSONResponse}
        app.post(path)(route)
    deployment = serve.deployment(name="Bare", max_ongoing_requests=64)(serve.ingress(app)(Bare))

    env = {"runtime_env": {"env_vars": throughput_optimized_env}} if throughput_optimized_env else {}
    return deployment.options(ray_actor_options={"num_cpus": 0.5, **env}).bind(paths)


def kill_a_replica_holding(model_id: str) -> str:
    """``ray.kill`` one ``ModelServer`` replica that has the model open; its replica id."""
    import ray
    from ray import serve

    model_server = serve.get_deployment_handle("ModelServer", app_name=SERVING_APP)
    tags = set()
    for _ in range(20):
        tags.add(model_server.options(multiplexed_model_id=model_id).load.remote().result()["replica"])
    victim = sorted(tags)[0]
    prefix = f"SERVE_REPLICA::{SERVING_APP}#ModelServer#"
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(prefix) and actor["name"].endswith(victim):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            return victim
    raise RuntimeError(f"no replica actor named after {victim}")


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[SERVING_APP].deployments["ModelServer"]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for_alias(url: str, model_id: str, rows: list[dict[str, Any]], within_s: float = 10.0) -> None:
    import httpx

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        answer = httpx.post(url, json={"rows": rows[:1]}, timeout=30)
        if answer.status_code == 200 and answer.json()["model_id"] == model_id:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not serve {model_id} within {within_s} s")


def alias_switch(
    control: str,
    direct: str,
    models: tuple[str, str],
    bodies: list[bytes],
    rows: list[dict[str, Any]],
    seconds: float,
) -> tuple[dict[str, Any], LoadResult]:
    """8 clients on the alias while it is promoted to ``models[1]`` and rolled back to ``models[0]``."""
    import httpx

    first, second = models
    answer = httpx.post(f"{control}/v1/models/{first}/deploy", json={"alias": ALIAS}, timeout=60)
    answer.raise_for_status()
    url = f"{direct}/v1/endpoints/{ALIAS}/predict"
    wait_for_alias(url, first, rows)
    moved: dict[str, float] = {}

    def promote() -> None:
        httpx.post(
            f"{control}/v1/endpoints/{ALIAS}/promote", json={"model_id": second}, timeout=60
        ).raise_for_status()
        moved["promoted"] = time.perf_counter()

    def rollback() -> None:
        httpx.post(f"{control}/v1/endpoints/{ALIAS}/rollback", timeout=60).raise_for_status()
        moved["rolled_back"] = time.perf_counter()

    result = asyncio.run(
        http_load(
            url,
            bodies,
            8,
            10**6,
            seconds,
            at=[(seconds / 3, promote), (2 * seconds / 3, rollback)],
            observe=True,
        )
    )

    def reached(after: str, model_id: str) -> float | None:
        if after not in moved:
            return None
        return next(
            (t - moved[after] for t, m in result.models_seen if t >= moved[after] and m == model_id), None
        )

    row = {
        "model": ANCHOR,
        **result.row("alias_switch", 8),
        "promote_reached_replica_s": reached("promoted", second),
        "rollback_reached_replica_s": reached("rolled_back", first),
        "answers_by_model": {m: sum(1 for _, x in result.models_seen if x == m) for m in models},
    }
    return row, result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from autocompress.local_ray import local_ray_env

    local_ray_env()  # a Ray of our own on this machine (autocompress.local_ray)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from autocompress.serving import ModelCatalog, ModelRunner
    from autocompress.store import Store
    from serve_app.launcher import free_port
    from serve_app.serve import REPLICA_ENV, ingress_urls, init_local_ray

    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]  # other work on the machine shares its CPUs with the run
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        root = work / "artifacts"
        db_url = f"sqlite:///{work / 'serve.db'}"
        models = {name: prepare_model(work, db_url, name, args.quick, arch) for name, arch in MODELS.items()}
        other = prepare_model(
            work, db_url, f"{ANCHOR}-b", args.quick, MODELS[ANCHOR]
        )  # what the alias moves to
        bodies = {
            name: [json.dumps({"rows": [row]}).encode() for row in m.rows] for name, m in models.items()
        }
        ranks = rank_bodies(models[ANCHOR])

        with Store(db_url) as store:
            for name, prepared in models.items():
                served = ModelCatalog(store, root).get(prepared.model_id)
                runner = ModelRunner(served)
                features = [served.encoder.encode([row]) for row in prepared.rows]
                for c in CONCURRENCY:
                    result = in_process(runner, features, c, args.max_requests, args.seconds)
                    rows.append({"model": name, **result.row("in_process_ort", c)})
                    print(rows[-1])

        init_local_ray(
            settings_for(db_url, root),
            num_cpus=max(2, os.cpu_count() or 2),
            include_dashboard=False,
            _temp_dir=str(work / "ray"),
            log_to_driver=False,
            configure_logging=False,
        )
        port = free_port()
        control = f"http://127.0.0.1:{port}"

        def measure(mode: str, model: str, url: str, load: list[bytes], c: int, per_row: int = 1) -> None:
            before = cpu_seconds()
            result = asyncio.run(http_load(url, load, c, args.max_requests, args.seconds))
            cpu = cpu_ms_per_request(before, cpu_seconds(), result.succeeded)
            row = {"model": model, **result.row(mode, c), "cpu_ms_per_request": cpu}
            if per_row > 1:
                row["candidates_per_s"] = row["throughput_rps"] * per_row
            rows.append(row)
            print(rows[-1])

        try:
            ours = deploy(db_url, root, port, batching=True)
            serve.run(
                bare_serve_app({n: m.path for n, m in models.items()}, dict(REPLICA_ENV)),
                name=BARE_APP,
                route_prefix=f"/{BARE_APP}",
            )
            bare = (ingress_urls(BARE_APP) or [control])[0] + f"/{BARE_APP}"
            print(f"ours: {ours}   bare: {bare}   job API: {control}")
            for name, prepared in models.items():
                urls = {"serve_batched": f"{ours}/v1/models/{prepared.model_id}/predict"}
                urls["bare_serve"] = f"{bare}/{name}/predict"
                for url in urls.values():  # warm-up: model open, connections
                    asyncio.run(http_load(url, bodies[name], 8, 400, 10.0))
                for c in CONCURRENCY:  # ours and the anchor one after the other, at each point
                    for mode, url in urls.items():
                        measure(mode, name, url, bodies[name], c)

            rank_urls = {
                "rank_k200_serve": f"{ours}/v1/models/{models[ANCHOR].model_id}/rank",
                "rank_k200_bare": f"{bare}/{ANCHOR}/rank",
            }
            for url in rank_urls.values():
                asyncio.run(http_load(url, ranks, RANK_CONCURRENCY, 50, 10.0))
            for mode, url in rank_urls.items():
                measure(mode, ANCHOR, url, ranks, RANK_CONCURRENCY, per_row=RANK_CANDIDATES)

            alias_row, _ = alias_switch(
                control,
                ours,
                (models[ANCHOR].model_id, other.model_id),
                bodies[ANCHOR],
                models[ANCHOR].rows,
                args.alias_seconds,
            )
            rows.append(alias_row)
            print(alias_row)

            ours = deploy(db_url, root, port, batching=False)
            print(f"serve_unbatched: {ours}")
            for name, prepared in models.items():
                url = f"{ours}/v1/models/{prepared.model_id}/predict"
                asyncio.run(http_load(url, bodies[name], 8, 400, 10.0))
                for c in CONCURRENCY:
                    measure("serve_unbatched", name, url, bodies[name], c)

            serve.delete(BARE_APP)
            kill_id = models[ANCHOR].model_id
            deploy(db_url, root, port, batching=True, replicas=2)
            url = (
                f"{control}/serving/v1/models/{kill_id}/predict"  # the proxy: it routes around a lost replica
            )
            deadline = time.monotonic() + 60
            while running_replicas() < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            killed: dict[str, Any] = {}

            def kill() -> None:
                killed["replica"] = kill_a_replica_holding(kill_id)
                killed["at"] = time.monotonic()

            kill_result = asyncio.run(
                http_load(
                    url,
                    bodies[ANCHOR],
                    8,
                    args.max_requests * 10,
                    args.kill_seconds,
                    retries=True,
                    at=[(args.kill_seconds / 6, kill)],
                )
            )
            recovered_s = None
            while time.monotonic() < deadline + 60:
                if running_replicas() >= 2:
                    recovered_s = time.monotonic() - killed["at"]
                    break
                time.sleep(0.5)
            kill_row = {"model": ANCHOR, **kill_result.row("replica_kill", 8)}
            kill_row.update(
                killed_replica=killed.get("replica"),
                replicas_back_after_s=recovered_s,
                success_rate=kill_result.succeeded / max(1, kill_result.succeeded + kill_result.failed),
            )
            rows.append(kill_row)
            print(kill_row)
        finally:
            serve.shutdown()
            ray.shutdown()

    return {
        "rows": rows,
        "summary": summarize(rows, list(models), kill_row, alias_row),
        "setup": setup(args, models, load_before),
    }


def summarize(
    rows: list[dict[str, Any]], models: list[str], kill_row: dict[str, Any], alias_row: dict[str, Any]
) -> dict[str, Any]:
    """The issue's figures (``ANCHOR`` model unless named), every model's under ``by_model``, the targets."""

    def find(model: str, mode: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["model"] == model and r["mode"] == mode and r["concurrency"] == c)

    by_model = {}
    for name in models:
        floor = find(name, "in_process_ort", 1)["p50_ms"]
        by_model[name] = {
            "in_process_p50_ms_c1": floor,
            "p50_ms_c1": find(name, "serve_batched", 1)["p50_ms"],
            "bare_serve_p50_ms_c1": find(name, "bare_serve", 1)["p50_ms"],
            "p50_overhead_ms_c1": find(name, "serve_batched", 1)["p50_ms"] - floor,
            "p50_overhead_ms_c1_unbatched": find(name, "serve_unbatched", 1)["p50_ms"] - floor,
            "throughput_c32": find(name, "serve_batched", 32)["throughput_rps"],
            "bare_serve_throughput_c32": find(name, "bare_serve", 32)["throughput_rps"],
            "batching_speedup_c32": find(name, "serve_batched", 32)["throughput_rps"]
            / find(name, "serve_unbatched", 32)["throughput_rps"],
            "batched_vs_in_process_throughput_c32": find(name, "serve_batched", 32)["throughput_rps"]
            / find(name, "in_process_ort", 32)["throughput_rps"],
            "cpu_ms_per_request_c1": find(name, "serve_batched", 1)["cpu_ms_per_request"],
            "bare_serve_cpu_ms_per_request_c1": find(name, "bare_serve", 1)["cpu_ms_per_request"],
        }
    anchor = by_model[ANCHOR]
    summary: dict[str, Any] = {
        "model": ANCHOR,
        "p50_ms_c1": anchor["p50_ms_c1"],
        "bare_serve_p50_ms_c1": anchor["bare_serve_p50_ms_c1"],
        "p50_over_bare_ms_c1": anchor["p50_ms_c1"] - anchor["bare_serve_p50_ms_c1"],
        "p50_overhead_ms_c1": anchor["p50_overhead_ms_c1"],
        "rank_k200_candidates_per_s_c8": find(ANCHOR, "rank_k200_serve", RANK_CONCURRENCY)[
            "candidates_per_s"
        ],
        "bare_serve_k200_candidates_per_s_c8": find(ANCHOR, "rank_k200_bare", RANK_CONCURRENCY)[
            "candidates_per_s"
        ],
        "throughput_c32": anchor["throughput_c32"],
        "bare_serve_throughput_c32": anchor["bare_serve_throughput_c32"],
        "batching_speedup_model": HEADLINE,
        "batching_speedup_c32": by_model[HEADLINE]["batching_speedup_c32"],
        "replica_kill_success_rate": kill_row["success_rate"],
        "alias_switch_failed_requests": alias_row["failed"],
        "alias_switch_reached_replica_s": [
            alias_row["promote_reached_replica_s"],
            alias_row["rollback_reached_replica_s"],
        ],
        "by_model": by_model,
    }
    s = summary
    summary["targets_met"] = {
        "p50_ms_c1_within_bare_plus_0.5_ms": s["p50_ms_c1"]
        <= s["bare_serve_p50_ms_c1"] + TARGET_OVER_BARE_MS,
        "p50_overhead_ms_c1": s["p50_overhead_ms_c1"] <= TARGET_OVERHEAD_MS,
        "rank_k200_at_least_80_percent_of_bare": s["rank_k200_candidates_per_s_c8"]
        >= TARGET_RANK_VS_BARE * s["bare_serve_k200_candidates_per_s_c8"],
        "throughput_c32_at_least_bare": s["throughput_c32"] >= s["bare_serve_throughput_c32"],
        "batching_speedup_c32": s["batching_speedup_c32"] >= TARGET_BATCHING_SPEEDUP,
        "replica_kill_success_rate": s["replica_kill_success_rate"] >= TARGET_KILL_SUCCESS,
        "alias_switch_failed_requests": s["alias_switch_failed_requests"] == 0,
    }
    return summary


def setup(args: argparse.Namespace, models: dict[str, Prepared], load_before: float) -> dict[str, Any]:
    data = "tiny" if args.quick else "default"
    return {
        "models": {
            name: f"dlrm {arch or 'reference arch'} on the {data} synthetic schema"
            for name, arch in MODELS.items()
        },
        "schema_features": len(models[HEADLINE].schema.feature_names),
        "rows_per_request": 1,
        "served_through": "the ModelServer replica's own port (direct ingress): one hop, the sessions there",
        "bare_serve": "hand-written Serve deployment: FastAPI, ONNX Runtime in the replica, JSON rows, "
        "no validation, no batching; same Serve mode, its own direct-ingress port",
        "rank": f"a context, {RANK_CANDIDATES} candidates as columns, k={RANK_K}, {RANK_CONCURRENCY} clients",
        "replica_kill_through": "the HTTP proxy (/serving), two ModelServer replicas",
        "cpus": os.cpu_count(),
        "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
        "max_requests_per_point": args.max_requests,
        "max_seconds_per_point": args.seconds,
        "kill_run_seconds": args.kill_seconds,
        "alias_run_seconds": args.alias_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, short load points (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None, help="max seconds per load point (default 8)")
    parser.add_argument("--max-requests", type=int, default=None, help="max requests per load point")
    parser.add_argument("--kill-seconds", type=float, default=None, help="length of the replica-kill run")
    parser.add_argument("--alias-seconds", type=float, default=None, help="length of the alias-switch run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.max_requests = args.max_requests or (500 if args.quick else 20000)
    args.kill_seconds = args.kill_seconds or (12.0 if args.quick else 30.0)
    args.alias_seconds = args.alias_seconds or (6.0 if args.quick else 15.0)
    result = run(args)

    table = Table(title="serving load: one-hop Ray Serve vs bare Serve vs in-process ONNX Runtime")
    columns = ("model", "mode", "clients", "requests", "failed", "req/s", "p50 ms", "p99 ms")
    for col in (*columns, "CPU ms/req client/api/model/bare"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        cpu = r.get("cpu_ms_per_request") or {}
        table.add_row(
            r["model"],
            r["mode"],
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["failed"]),
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            "/".join(f"{ms:.2f}" for ms in cpu.values()),
        )
    console = Console(width=150)
    console.print(table)
    console.print(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
