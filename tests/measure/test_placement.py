"""Where latency is measured: in this process without Ray, or on nodes declaring the target's resource
(the multi-node placement itself: tests/cluster/test_multinode.py); a CUDA target without a GPU falls
back to the CPU with a note; a resource no node declares is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocompress.errors import AutocompressError
from autocompress.measure.placement import measure_on_target, resolve_target, runnable_here
from autocompress.spec import Target
from autocompress.testing import tiny_setup

FAST = {"batch_sizes": [1, 8], "warmup": 1, "repetitions": 5, "max_seconds": 1}


def test_without_ray_latency_is_measured_here_and_cached(tmp_path: Path) -> None:
    setup = tiny_setup("dlrm")
    onnx = setup.compress(tmp_path / "fp32")
    target = Target(**FAST)
    first = measure_on_target(onnx, setup.dataset.schema, target, cache_dir=tmp_path / "cache")
    again = measure_on_target(onnx, setup.dataset.schema, target, cache_dir=tmp_path / "cache")
    assert first.resource is None and first.node_id is None
    assert [r.batch_size for r in first.report.rows] == [1, 8] and first.report.at(8) > 0
    assert again.report == first.report  # the second came from the cache


def test_a_cuda_target_without_a_gpu_falls_back_to_the_cpu_with_a_note() -> None:
    cuda = Target(device="cuda", intra_op_threads=2, **FAST)
    resolved, note = resolve_target(cuda)
    assert resolved.device == "cpu" and resolved.execution_provider == "CPUExecutionProvider"
    assert resolved.intra_op_threads == 2 and resolved.batch_sizes == [1, 8]  # the rest as asked
    assert note is not None and "'cuda'" in note and "CPU" in note
    assert runnable_here(cuda) == resolved  # quality is scored on the CPU twin too
    cpu = Target(**FAST)
    assert resolve_target(cpu) == (cpu, None) and runnable_here(cpu) is cpu


def test_a_resource_no_node_declares_is_refused_by_name() -> None:
    with pytest.raises(
        AutocompressError, match=r"target.resource 'latency_tpu'.*declared latency resources: none"
    ):
        resolve_target(Target(resource="latency_tpu", **FAST))


@pytest.mark.parametrize("bad", ["", "has space", "1digit", "x" * 65])
def test_a_bad_resource_name_is_a_field_error(bad: str) -> None:
    with pytest.raises(AutocompressError, match=r"target\.resource"):
        Target.from_dict({"resource": bad}, where="target")
