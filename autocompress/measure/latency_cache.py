"""Latency measured one model at a time per node, cached by the hash of the exported model.

Two timings taken at once on one machine disturb each other, so every measurement holds an
exclusive ``fcntl.flock`` on ``cache_dir/measure.lock`` (it holds across processes, Ray workers
included, on one node). Results are cached as JSON keyed by the sha256 of the ONNX file and its
external data, the target and the schema: a trial that exports an identical model is not timed
again.

Every measurement taken here is checked for a busy node (``autocompress.measure.busy``): framed by
calibration probes, retried while busy (bounded by the ``BusyPolicy``), and cached with its
``NodeLoad``, so a busy figure comes back from the cache flagged, never as a quiet one (``refresh``
takes it again). The node's quiet figure, the fastest probe so far per node, is kept in
``cache_dir/quiet-probe.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.measure.busy import (
    BusyPolicy,
    NodeLoad,
    assess_load,
    calibration_probe_ms,
    default_busy_policy,
    probe_node_key,
)
from autocompress.measure.latency import LatencyReport, LatencyRow, measure_latency
from autocompress.spec import Target

if TYPE_CHECKING:
    import onnxruntime

CACHE_VERSION = 2  # 2: entries carry the node's load (busy check)
LOCK_FILE = "measure.lock"
QUIET_FILE = "quiet-probe.json"
QUIET_VERSION = 1


def onnx_sha256(onnx_path: str | Path) -> str:
    """sha256 of an ONNX file followed by each external-data file it references (sorted by name)."""
    from autocompress.measure.size import external_data_files

    path = Path(onnx_path)
    digest = hashlib.sha256()
    _hash_file(digest, path)
    for data in external_data_files(path):
        digest.update(f"\0{data.name}\0".encode())
        _hash_file(digest, data)
    return digest.hexdigest()


def latency_cache_key(onnx_path: str | Path, schema: FeatureSchema, target: Target, *, seed: int = 0) -> str:
    """The cache key of one measurement: the model's sha256, the target's and schema's JSON, the seed."""
    parts = {
        "version": CACHE_VERSION,
        "model_sha256": onnx_sha256(onnx_path),
        "target": target.to_dict(),
        "schema": schema.to_dict(),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_latency(cache_dir: str | Path, key: str) -> LatencyReport | None:
    """The cached report stored under ``key`` in ``cache_dir``, or None (also for an unreadable entry)."""
    entry = Path(cache_dir) / f"{key}.json"
    try:
        data = json.loads(entry.read_text())
        return _report_from_dict(data["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure_exclusively(
    onnx_path: str | Path,
    schema: FeatureSchema,
    target: Target,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    key: str | None = None,
    refresh: bool = False,
    busy_policy: BusyPolicy | None = None,
) -> LatencyReport:
    """Latency of ``onnx_path`` on ``target``: from the cache, else measured under the node-wide lock.

    ``refresh`` measures again even on a hit and replaces the entry: for a figure taken while the
    node was busy (the search's re-measurement of its finished candidates once the trials are over).

    On a miss the session is created and timed (``measure_latency``) while holding an exclusive
    lock on ``cache_dir/measure.lock``; the cache is checked again once the lock is held (another
    process may have measured the same model meanwhile) and the entry is written atomically.
    ``key`` may pass a ``latency_cache_key`` computed before, to hash a large model only once.
    The measurement is checked for a busy node with ``busy_policy`` (default
    ``busy.default_busy_policy()``): the report's ``load`` says how busy, ``busy_warning`` why.
    """
    from autocompress.export import create_session

    cache = _cache_folder(cache_dir)
    key = key or latency_cache_key(onnx_path, schema, target, seed=seed)
    report = None if refresh else cached_latency(cache, key)
    if report is not None:
        return report
    with _exclusive(cache / LOCK_FILE):
        report = None if refresh else cached_latency(cache, key)
        if report is not None:
            return report
        session = create_session(onnx_path, target)
        policy = busy_policy or default_busy_policy()
        report = _measure_checked(session, schema, target, seed, cache, policy)
        del session
    write_json_atomically(
        cache / f"{key}.json", {"key": key, "onnx_path": str(onnx_path), "report": report.to_dict()}
    )
    return report


def quiet_probe_ms(cache_dir: str | Path) -> float | None:
    """This node's quiet figure (the fastest calibration probe seen so far) kept in ``cache_dir``, or None."""
    figure = _quiet_figures(Path(cache_dir) / QUIET_FILE).get(probe_node_key())
    return float(figure) if isinstance(figure, int | float) else None


def record_probe(cache_dir: str | Path, *probes_ms: float) -> float:
    """Lower this node's quiet figure in ``cache_dir`` to the fastest of ``probes_ms``; return the figure.

    The figure only ever goes down: a node whose first probe ran while it was busy gets its true
    quiet figure from the first quieter probe, and a busy probe never raises it. The caller holds
    the node-wide lock (``measure_exclusively`` does), so updates do not race.
    """
    path = Path(cache_dir) / QUIET_FILE
    figures = _quiet_figures(path)
    node = probe_node_key()
    known = figures.get(node)
    lowest = min(probes_ms) if not isinstance(known, int | float) else min(float(known), *probes_ms)
    if lowest != known:
        write_json_atomically(path, {"version": QUIET_VERSION, "probe_ms": {**figures, node: lowest}})
    return lowest


def _quiet_figures(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != QUIET_VERSION:
        return {}
    figures = data.get("probe_ms")
    return figures if isinstance(figures, dict) else {}


def _measure_checked(
    session: onnxruntime.InferenceSession,
    schema: FeatureSchema,
    target: Target,
    seed: int,
    cache: Path,
    policy: BusyPolicy,
) -> LatencyReport:
    """``measure_latency`` between two calibration probes, taken again while the node is busy."""
    attempts = 0
    while True:
        attempts += 1
        before = calibration_probe_ms()
        report = measure_latency(session, schema, target, seed=seed)
        after = calibration_probe_ms()
        quiet = record_probe(cache, before, after)
        load = assess_load(report, before, after, quiet, attempts=attempts, policy=policy)
        if not load.busy or attempts > policy.retries:
            return replace(report, load=load)
        time.sleep(policy.wait_seconds)


def _cache_folder(cache_dir: str | Path) -> Path:
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutocompressError(
            f"latency cache folder {str(cache)!r} cannot be created: {exc.strerror}"
        ) from None
    return cache


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``lock_path``; the kernel releases it if the process dies."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _report_from_dict(data: dict[str, Any]) -> LatencyReport:
    return LatencyReport(
        rows=tuple(LatencyRow(**row) for row in data["rows"]),
        target=Target.from_dict(data["target"]),
        load=None if data.get("load") is None else NodeLoad.from_dict(data["load"]),
    )


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
