"""Latency on the target's hardware: measured on a node of the target's kind, wherever the trial trained.

A target maps to a Ray resource that the nodes of that hardware declare: ``Target.resource``, or by
default ``latency_<device>`` (``cluster.yaml``: the CPU head has ``latency_cpu: 1``, the GPU workers
``latency_cuda: 1``). When the connected Ray cluster has that resource, ``measure_on_target`` runs the
measurement as a Ray task needing one unit of it and no CPU: only nodes of the target's kind measure,
one measurement at a time per node, and a node whose CPUs are all held by trials still measures. The
model travels as bytes (its ONNX file and external data), so no shared folder is needed. Without Ray,
or on a cluster that does not declare the default resource (one machine), the measurement runs in this
process under the node-wide lock of ``measure_exclusively``.

``resolve_target`` runs once per job, before any trial: it refuses an explicit resource no node has,
and turns a CUDA target into the CPU one, with a note for the report, where no GPU can measure it.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.measure.busy import BusyPolicy
from autocompress.measure.latency import LatencyReport
from autocompress.spec import Target

RESOURCE_PREFIX = "latency_"


@dataclass(frozen=True)
class PlacedLatency:
    """A latency report and where it was taken: the Ray node id (None without Ray) and the resource."""

    report: LatencyReport
    node_id: str | None
    resource: str | None


def latency_resource(target: Target) -> str | None:
    """The Ray resource whose nodes measure ``target``; None: measure in this process.

    ``target.resource`` when set; else ``latency_<device>`` when the connected cluster declares it.
    """
    if target.resource is not None:
        return target.resource
    import ray

    if not ray.is_initialized():
        return None
    default = f"{RESOURCE_PREFIX}{target.device}"
    return default if ray.cluster_resources().get(default, 0) > 0 else None


def current_node_id() -> str | None:
    """This process's Ray node id (hex), or None when Ray is not initialised."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def measure_on_target(
    onnx_path: str | Path,
    schema: FeatureSchema,
    target: Target,
    *,
    cache_dir: str | Path,
    key: str | None = None,
    refresh: bool = False,
    busy_policy: BusyPolicy | None = None,
) -> PlacedLatency:
    """``measure_exclusively`` on a node of the target's kind (see the module docstring).

    The busy check runs where the measurement does, against that node's quiet figure.
    """
    from autocompress.measure.latency_cache import measure_exclusively

    resource = latency_resource(target)
    if resource is None:
        report = measure_exclusively(
            onnx_path,
            schema,
            target,
            cache_dir=cache_dir,
            key=key,
            refresh=refresh,
            busy_policy=busy_policy,
        )
        return PlacedLatency(report, current_node_id(), None)
    import ray

    if not ray.is_initialized():
        raise AutocompressError(
            f"target.resource {resource!r}: latency is placed by Ray resource, but Ray is not running here"
        )
    from autocompress.measure.size import external_data_files

    path = Path(onnx_path)
    files = {f.name: f.read_bytes() for f in (path, *external_data_files(path))}
    task = _remote_task().options(
        resources={resource: 1},
        num_cpus=0,
        scheduling_strategy="DEFAULT",  # not inside the trial's placement group: that has no such resource
    )
    report, node_id = ray.get(
        task.remote(files, path.name, schema, target, str(cache_dir), key, refresh, busy_policy)
    )
    return PlacedLatency(report, node_id, resource)


def _measure_files(
    files: dict[str, bytes],
    name: str,
    schema: FeatureSchema,
    target: Target,
    cache_dir: str,
    key: str | None,
    refresh: bool,
    busy_policy: BusyPolicy | None = None,
) -> tuple[LatencyReport, str | None]:
    """The Ray task: write the model to a temporary folder on this node and measure it there."""
    from autocompress.measure.latency_cache import measure_exclusively

    with tempfile.TemporaryDirectory(prefix="ac-latency-") as tmp:
        for file_name, data in files.items():
            (Path(tmp) / file_name).write_bytes(data)
        report = measure_exclusively(
            Path(tmp) / name,
            schema,
            target,
            cache_dir=cache_dir,
            key=key,
            refresh=refresh,
            busy_policy=busy_policy,
        )
    return report, current_node_id()


@functools.cache
def _remote_task() -> Any:
    import ray

    return ray.remote(max_retries=2)(_measure_files)


def resolve_target(target: Target) -> tuple[Target, str | None]:
    """The target this job measures on here, and a note for the report when it is not the one asked for.

    An explicit ``target.resource`` must be declared by a node of the connected cluster. A CUDA target
    without a GPU anywhere (no CUDA provider in this process, no ``latency_cuda`` or GPU in the
    cluster) falls back to the CPU with the same threads and batch sizes.
    """
    import ray

    resources = ray.cluster_resources() if ray.is_initialized() else {}
    if target.resource is not None and resources.get(target.resource, 0) <= 0:
        declared = sorted(r for r in resources if r.startswith(RESOURCE_PREFIX))
        raise AutocompressError(
            f"target.resource {target.resource!r}: no node of the Ray cluster declares it; "
            f"declared latency resources: {declared or 'none'}"
        )
    if target.device != "cuda" or _cuda_reachable(target, resources):
        return target, None
    cpu = runnable_here(target)
    note = (
        f"target device 'cuda' ({target.execution_provider}) is not available: no GPU in this process "
        "or the Ray cluster; latency was measured on the CPU instead"
    )
    return cpu, note


def runnable_here(target: Target) -> Target:
    """``target`` where this process has its provider, else its CPU twin: for quality, not latency.

    A trial on a CPU node of a cluster whose latency target is a GPU still scores its candidate's
    AUC (the same graph on the CPU provider); only its latency needs the target's own hardware.
    """
    import onnxruntime as ort

    if target.execution_provider in ort.get_available_providers():
        return target
    return target.model_copy(update={"device": "cpu", "execution_provider": "CPUExecutionProvider"})


def _cuda_reachable(target: Target, resources: dict[str, float]) -> bool:
    import onnxruntime as ort

    if target.execution_provider in ort.get_available_providers():
        return True
    return resources.get(target.resource or f"{RESOURCE_PREFIX}cuda", 0) > 0 or resources.get("GPU", 0) > 0
