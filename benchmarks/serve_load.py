"""Serving under load: Ray Serve over HTTP vs in-process ONNX Runtime, batching on and off, a replica killed.

One run on loopback, every load point bounded in requests and seconds, for two DLRMs on the
default synthetic schema (200k items, 100k users), exported to ONNX, 1 intra-op thread:

- ``wide_mlp`` (the headline): a production-size ranking model, top MLP 2048-2048-2048-1024
  (~2 ms a request in process): the models this service serves are large, and what batching is
  for is their compute;
- ``reference``: the search's reference architecture (top MLP 512-512-256, ~0.1 ms), where the
  served cost is nearly all HTTP, JSON and Ray Serve: the floor of the serving path.

For each model:

- ``in_process_ort``: ``ModelRunner.logits`` on the already encoded request, called from 1, 8 or
  32 threads: the floor a served request is compared with;
- ``serve_batched`` / ``serve_unbatched``: ``POST /v1/models/{id}/predict`` (one row per request,
  JSON) to the API ingress replica's own port (Ray Serve's direct ingress, the URL
  ``autocompress serve`` prints), the API on to one ``ModelServer`` replica, at 1, 8 and 32
  concurrent clients, with dynamic batching on (the ingress batches per model, ``serve.batch`` in
  the model replica), then off;

and once, on the reference model, ``replica_kill``: two ``ModelServer`` replicas, 8 clients for
``--kill-seconds`` (30 s), and one replica that holds the model ``ray.kill``-ed after a sixth of
the run; a client retries a failed request twice (0.1 s, 0.2 s later), and the rate counts
requests that finally succeeded.

Targets: p50 overhead over in-process <= 3 ms at concurrency 1 (batching on, the default
config); batching >= 3x the unbatched throughput at concurrency 32. Each served point also
reports the CPU milliseconds spent per request by the load client, the ingress replica and the
model replica (from ``/proc``): at concurrency 1 the three run one after another, so their sum is
about the latency, and it shows which hop the time goes to. Prints a table and writes
``benchmarks/results/serve_load.json``: ``rows``, and ``summary`` with the headline model's
figures and every model's under ``by_model``. ``--quick`` is a smoke run on the tiny data.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "serve_load.json"
CONCURRENCY = (1, 8, 32)
APP = "autocompress"
TARGET_OVERHEAD_MS = 3.0
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
HEADLINE = "wide_mlp"


def prepare_model(
    work: Path, db_url: str, name: str, quick: bool, arch: dict[str, Any] | None
) -> tuple[str, Any, list[dict[str, Any]]]:
    """Export the model into ``work/artifacts`` and register it; (model id, schema, example rows)."""
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
    rows = [{name: batch[name][i].tolist() for name in schema.feature_names} for i in range(256)]
    return record.id, schema, rows


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


async def http_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    max_requests: int,
    max_s: float,
    *,
    retries: bool = False,
    at: tuple[float, Any] | None = None,
) -> LoadResult:
    """POST ``bodies`` round-robin from ``concurrency`` clients until either bound is reached.

    With ``retries`` a failed request (connection error or 5xx) is tried again after each of
    ``CLIENT_RETRY_DELAYS_S``; ``at=(seconds, fn)`` calls ``fn`` once that far into the run.
    """
    import aiohttp

    result = LoadResult()
    issued = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.perf_counter()
    deadline = started + max_s

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def once(body: bytes) -> bool:
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False

        async def worker() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                t0 = time.perf_counter()
                ok = await once(body)
                for delay in CLIENT_RETRY_DELAYS_S if retries else ():
                    if ok:
                        break
                    result.retried += 1
                    await asyncio.sleep(delay)
                    ok = await once(body)
                if ok:
                    result.succeeded += 1
                    result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    result.failed += 1

        async def trigger() -> None:
            assert at is not None
            await asyncio.sleep(at[0])
            await asyncio.to_thread(at[1])

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        if at is not None:
            tasks.append(asyncio.create_task(trigger()))
        await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    return result


REPLICA_TITLES = {"ingress": f"ServeReplica:{APP}:Api", "model_server": f"ServeReplica:{APP}:ModelServer"}


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
            "ingress": {"num_cpus": 0.5},
            "model_server": {
                "num_replicas": replicas,
                "num_cpus": 0.5,
                "batching": {"enabled": batching},
            },
        }
    )


def deploy(db_url: str, root: Path, port: int, *, batching: bool, replicas: int = 1) -> str:
    """Run the application; the base URL of its ingress replica (direct ingress), else of the proxy."""
    from serve_app.serve import ingress_urls, run_locally

    run_locally(settings_for(db_url, root, batching=batching, replicas=replicas), port=port, name=APP)
    return (ingress_urls(APP) or [f"http://127.0.0.1:{port}"])[0]


def kill_a_replica_holding(model_server: Any, model_id: str) -> str:
    """``ray.kill`` one ``ModelServer`` replica that has the model open; its replica id."""
    import ray

    tags = set()
    for _ in range(20):
        tags.add(model_server.options(multiplexed_model_id=model_id).load.remote().result()["replica"])
    victim = sorted(tags)[0]
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#ModelServer#") and actor["name"].endswith(victim):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            return victim
    raise RuntimeError(f"no replica actor named after {victim}")


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments["ModelServer"]
    return int(status.replica_states.get("RUNNING", 0))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from autocompress.local_ray import local_ray_env

    local_ray_env()  # a Ray of our own on this machine (autocompress.local_ray)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from autocompress.serving import ModelCatalog, ModelRunner
    from autocompress.store import Store
    from serve_app.launcher import free_port
    from serve_app.serve import init_local_ray

    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]  # other work on the machine shares its CPUs with the run
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        root = work / "artifacts"
        db_url = f"sqlite:///{work / 'serve.db'}"
        models = {name: prepare_model(work, db_url, name, args.quick, arch) for name, arch in MODELS.items()}
        bodies = {name: [json.dumps({"rows": [row]}).encode() for row in m[2]] for name, m in models.items()}

        with Store(db_url) as store:
            for name, (model_id, _, examples) in models.items():
                served = ModelCatalog(store, root).get(model_id)
                runner = ModelRunner(served)
                features = [served.encoder.encode([row]) for row in examples]
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
        try:
            for mode, batching in (("serve_batched", True), ("serve_unbatched", False)):
                base = deploy(db_url, root, port, batching=batching)
                print(f"{mode}: {base}")
                for name, (model_id, _, _) in models.items():
                    url = f"{base}/v1/models/{model_id}/predict"
                    asyncio.run(
                        http_load(url, bodies[name], 8, 400, 10.0)
                    )  # warm-up: model open, connections
                    for c in CONCURRENCY:
                        before = cpu_seconds()
                        result = asyncio.run(http_load(url, bodies[name], c, args.max_requests, args.seconds))
                        cpu = cpu_ms_per_request(before, cpu_seconds(), result.succeeded)
                        rows.append({"model": name, **result.row(mode, c), "cpu_ms_per_request": cpu})
                        print(rows[-1])

            kill_id = models["reference"][0]
            url = deploy(db_url, root, port, batching=True, replicas=2) + f"/v1/models/{kill_id}/predict"
            deadline = time.monotonic() + 60
            while running_replicas() < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            model_server = serve.get_deployment_handle("ModelServer", app_name=APP)
            killed: dict[str, Any] = {}

            def kill() -> None:
                killed["replica"] = kill_a_replica_holding(model_server, kill_id)
                killed["at"] = time.monotonic()

            kill_result = asyncio.run(
                http_load(
                    url,
                    bodies["reference"],
                    8,
                    args.max_requests * 10,
                    args.kill_seconds,
                    retries=True,
                    at=(args.kill_seconds / 6, kill),
                )
            )
            recovered_s = None
            while time.monotonic() < deadline + 60:
                if running_replicas() >= 2:
                    recovered_s = time.monotonic() - killed["at"]
                    break
                time.sleep(0.5)
            kill_row = {"model": "reference", **kill_result.row("replica_kill", 8)}
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

    def find(model: str, mode: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["model"] == model and r["mode"] == mode and r["concurrency"] == c)

    by_model = {}
    for name in models:
        floor = find(name, "in_process_ort", 1)["p50_ms"]
        by_model[name] = {
            "in_process_p50_ms_c1": floor,
            "p50_overhead_ms_c1": find(name, "serve_batched", 1)["p50_ms"] - floor,
            "p50_overhead_ms_c1_unbatched": find(name, "serve_unbatched", 1)["p50_ms"] - floor,
            "batching_speedup_c32": find(name, "serve_batched", 32)["throughput_rps"]
            / find(name, "serve_unbatched", 32)["throughput_rps"],
            "batched_vs_in_process_throughput_c32": find(name, "serve_batched", 32)["throughput_rps"]
            / find(name, "in_process_ort", 32)["throughput_rps"],
            "cpu_ms_per_request_c1": find(name, "serve_batched", 1)["cpu_ms_per_request"],
        }
    summary: dict[str, Any] = {
        "model": HEADLINE,
        "p50_overhead_ms_c1": by_model[HEADLINE]["p50_overhead_ms_c1"],
        "batching_speedup_c32": by_model[HEADLINE]["batching_speedup_c32"],
        "replica_kill_success_rate": kill_row["success_rate"],
        "by_model": by_model,
    }
    summary["targets_met"] = {
        "p50_overhead_ms_c1": summary["p50_overhead_ms_c1"] <= TARGET_OVERHEAD_MS,
        "batching_speedup_c32": summary["batching_speedup_c32"] >= TARGET_BATCHING_SPEEDUP,
        "replica_kill_success_rate": summary["replica_kill_success_rate"] >= TARGET_KILL_SUCCESS,
    }
    return {
        "rows": rows,
        "summary": summary,
        "setup": {
            "models": {
                name: f"dlrm {arch or 'reference arch'} on the {'tiny' if args.quick else 'default'} "
                "synthetic schema"
                for name, arch in MODELS.items()
            },
            "schema_features": len(models[HEADLINE][1].feature_names),
            "rows_per_request": 1,
            "served_through": "the API ingress replica's own port (direct ingress), then ModelServer",
            "cpus": os.cpu_count(),
            "load_average_1m_before_after": [load_before, os.getloadavg()[0]],
            "max_requests_per_point": args.max_requests,
            "max_seconds_per_point": args.seconds,
            "kill_run_seconds": args.kill_seconds,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, short load points (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None, help="max seconds per load point (default 8)")
    parser.add_argument("--max-requests", type=int, default=None, help="max requests per load point")
    parser.add_argument("--kill-seconds", type=float, default=None, help="length of the replica-kill run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 8.0)
    args.max_requests = args.max_requests or (500 if args.quick else 20000)
    args.kill_seconds = args.kill_seconds or (12.0 if args.quick else 30.0)
    result = run(args)

    table = Table(title="serving load: Ray Serve over HTTP vs in-process ONNX Runtime (1 row per request)")
    columns = ("model", "mode", "clients", "requests", "failed", "req/s", "p50 ms", "p99 ms")
    for col in (*columns, "CPU ms/req client/ingress/model"):
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
    console = Console(width=140)
    console.print(table)
    console.print(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
