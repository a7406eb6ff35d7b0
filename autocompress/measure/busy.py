"""Busy-machine detection: is a latency measurement the model's figure, or a neighbour's load?

Every checked measurement (``measure_exclusively``) is framed by a calibration probe: a fixed
ONNX Runtime workload (a 128x128 MatMul and Relu on one thread, run ``PROBE_RUNS`` times, about
30 ms on a quiet core) timed before and after it. Its mean time per run is compared with the node's
quiet figure, the fastest probe this node has run so far (kept next to the latency cache), and the
measurement's own noise, p99/p50 of every batch size, is compared with a ceiling. A slower probe
means the measurement had less of a core than on a quiet node; a long tail means it was interrupted.
Either one beyond ``BusyPolicy`` makes the measurement busy: it is waited for and taken again a
bounded number of times, then kept with a ``NodeLoad`` whose ``warning`` says why.
"""

from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocompress.errors import AutocompressError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime

    from autocompress.measure.latency import LatencyReport

PROBE_VERSION = 1
PROBE_SIZE = 128
PROBE_RUNS = 600


@dataclass(frozen=True)
class BusyPolicy:
    """When a measurement counts as busy, and how long it is waited for.

    Busy: the slower calibration probe is more than ``probe_factor`` times the node's quiet figure,
    or some batch size's p99/p50 is above ``max_p99_over_p50``, or (when set) its coefficient of
    variation is above ``max_cv``. ``max_cv`` is off by default: one preemption among 200 runs sends
    the cv past 1 while the percentiles, each the median over the target's rounds, stay honest. A
    busy measurement is taken again up to ``retries`` times, ``wait_seconds`` after the last one.
    """

    probe_factor: float = 1.5
    max_p99_over_p50: float = 3.0
    max_cv: float | None = None
    retries: int = 2
    wait_seconds: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "probe_factor": self.probe_factor >= 1.0,
            "max_p99_over_p50": self.max_p99_over_p50 >= 1.0,
            "max_cv": self.max_cv is None or self.max_cv > 0,
            "retries": isinstance(self.retries, int) and self.retries >= 0,
            "wait_seconds": self.wait_seconds >= 0,
        }
        allowed = {
            "probe_factor": "a number >= 1",
            "max_p99_over_p50": "a number >= 1",
            "max_cv": "a number > 0, or None (not checked)",
            "retries": "an integer >= 0",
            "wait_seconds": "a number >= 0",
        }
        for name, ok in checks.items():
            if not ok:
                raise AutocompressError(
                    f"busy policy: {name} must be {allowed[name]}, got {getattr(self, name)!r}"
                )


DEFAULT_BUSY_POLICY = BusyPolicy()
RETRIES_ENV = "AUTOCOMPRESS_BUSY_RETRIES"
BUSY_WARNING = "node busy while measuring latency"  # how every busy-node warning starts


def default_busy_policy() -> BusyPolicy:
    """``DEFAULT_BUSY_POLICY``, with ``retries`` from ``AUTOCOMPRESS_BUSY_RETRIES`` when it is set.

    For a node that is always shared (a CI runner, a laptop): ``0`` flags busy figures without
    waiting for a quiet moment that does not come.
    """
    import os

    value = os.environ.get(RETRIES_ENV)
    if value is None or value == "":
        return DEFAULT_BUSY_POLICY
    if not value.isdigit():
        raise AutocompressError(f"{RETRIES_ENV}: must be an integer >= 0, got {value!r}")
    return BusyPolicy(retries=int(value))


@dataclass(frozen=True)
class NodeLoad:
    """How loaded the node was while a latency report was taken, and the verdict.

    ``probe_before_ms``/``probe_after_ms``: the calibration probe around the kept measurement (mean
    ms per run); ``quiet_probe_ms``: the node's quiet figure it was compared with; ``probe_ratio``:
    the slower probe over the quiet figure; ``max_cv`` and ``max_p99_over_p50``: the noisiest batch
    size's; ``attempts``: measurements taken (1 + the retries spent); ``warning``: a sentence for
    the trial, the job's events and the report when ``busy``, else None.
    """

    busy: bool
    warning: str | None
    probe_before_ms: float
    probe_after_ms: float
    quiet_probe_ms: float
    probe_ratio: float
    max_cv: float
    max_p99_over_p50: float
    attempts: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeLoad:
        """The form ``dataclasses.asdict`` wrote (the latency cache's entries)."""
        return cls(**data)


def calibration_probe_ms(runs: int = PROBE_RUNS) -> float:
    """Mean milliseconds per run of the fixed probe workload over ``runs`` back-to-back runs.

    The mean over about 30 ms, not a percentile: a core shared with another process shows as
    runs that wait for their turn, which the total time counts and a median would skip.
    """
    session, inputs = _probe_session()
    session.run(None, inputs)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(runs):
            session.run(None, inputs)
        elapsed_ns = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed_ns / runs / 1e6


def probe_node_key() -> str:
    """What a quiet figure belongs to: this host, its CPUs, the ONNX Runtime build and the probe."""
    import os
    import platform
    import socket

    import onnxruntime as ort

    return (
        f"{socket.gethostname()}/{platform.machine()}/cpus={os.cpu_count()}"
        f"/ort={ort.__version__}/probe=v{PROBE_VERSION}"
    )


def assess_load(
    report: LatencyReport,
    probe_before_ms: float,
    probe_after_ms: float,
    quiet_probe_ms: float,
    *,
    attempts: int,
    policy: BusyPolicy = DEFAULT_BUSY_POLICY,
) -> NodeLoad:
    """The ``NodeLoad`` of one measurement: its probes against the quiet figure and its noise."""
    ratio = max(probe_before_ms, probe_after_ms) / quiet_probe_ms if quiet_probe_ms > 0 else 1.0
    tail_row = max(report.rows, key=lambda r: r.p99_over_p50)
    cv_row = max(report.rows, key=lambda r: r.cv)
    reasons = []
    if ratio > policy.probe_factor:
        reasons.append(
            f"calibration probe {max(probe_before_ms, probe_after_ms):.4g} ms vs the node's quiet "
            f"{quiet_probe_ms:.4g} ms ({ratio:.2f}x > {policy.probe_factor:g}x)"
        )
    if tail_row.p99_over_p50 > policy.max_p99_over_p50:
        reasons.append(
            f"p99/p50 {tail_row.p99_over_p50:.2f} at batch {tail_row.batch_size} "
            f"(> {policy.max_p99_over_p50:g})"
        )
    if policy.max_cv is not None and cv_row.cv > policy.max_cv:
        reasons.append(f"cv {cv_row.cv:.2f} at batch {cv_row.batch_size} (> {policy.max_cv:g})")
    warning = None
    if reasons:
        warning = (
            f"{BUSY_WARNING}: {'; '.join(reasons)}; cv {cv_row.cv:.2f}; "
            f"still busy after {attempts} measurement(s), the figures may be inflated"
        )
    return NodeLoad(
        busy=bool(reasons),
        warning=warning,
        probe_before_ms=probe_before_ms,
        probe_after_ms=probe_after_ms,
        quiet_probe_ms=quiet_probe_ms,
        probe_ratio=ratio,
        max_cv=cv_row.cv,
        max_p99_over_p50=tail_row.p99_over_p50,
        attempts=attempts,
    )


@functools.cache
def _probe_session() -> tuple[onnxruntime.InferenceSession, dict[str, np.ndarray]]:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shape = [PROBE_SIZE, PROBE_SIZE]
    weight = numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "calibration_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session, {"x": rng.standard_normal(shape).astype(np.float32)}
