"""Target (autocompress/spec.py): the settings create_session and measure_latency read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autocompress.errors import AutocompressError
from autocompress.spec import Target


def test_defaults_follow_the_device() -> None:
    cpu = Target()
    assert cpu.execution_provider == "CPUExecutionProvider"
    assert (cpu.intra_op_threads, cpu.inter_op_threads, cpu.graph_optimization) == (1, 1, "all")
    assert (cpu.batch_sizes, cpu.percentile, cpu.warmup, cpu.repetitions, cpu.max_seconds) == (
        [1, 256],
        99,
        20,
        200,
        10.0,
    )
    assert Target(device="cuda").execution_provider == "CUDAExecutionProvider"
    assert Target(device="cuda", execution_provider="TensorrtExecutionProvider").device == "cuda"


def test_round_trips_through_a_dict() -> None:
    target = Target(batch_sizes=[4, 64], percentile=95, max_seconds=2)
    assert Target.from_dict(target.to_dict()) == target
    assert target.to_dict()["execution_provider"] == "CPUExecutionProvider"


def test_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        Target().percentile = 50


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"threads": 4}, "threads", "unknown field"),
        ({"device": "tpu"}, "device", "'cpu' or 'cuda'"),
        (
            {"execution_provider": "OpenVINOExecutionProvider"},
            "execution_provider",
            "TensorrtExecutionProvider",
        ),
        ({"execution_provider": "CUDAExecutionProvider"}, "execution_provider", "allowed there"),
        ({"intra_op_threads": 0}, "intra_op_threads", "greater than or equal to 1"),
        ({"inter_op_threads": 0}, "inter_op_threads", "greater than or equal to 1"),
        ({"graph_optimization": "max"}, "graph_optimization", "'extended'"),
        ({"batch_sizes": []}, "batch_sizes", "at least 1 item"),
        ({"batch_sizes": [8, 0]}, "batch_sizes.1", "greater than or equal to 1"),
        ({"batch_sizes": [8, 8]}, "batch_sizes", "distinct"),
        ({"batch_sizes": ["8"]}, "batch_sizes.0", "valid integer"),
        ({"percentile": 90}, "percentile", "50, 95 or 99"),
        ({"warmup": -1}, "warmup", "greater than or equal to 0"),
        ({"repetitions": 0}, "repetitions", "greater than or equal to 1"),
        ({"max_seconds": 0}, "max_seconds", "greater than 0"),
    ],
)
def test_refuses_unknown_fields_and_bad_values_naming_the_field(
    data: dict[str, object], field: str, allowed: str
) -> None:
    with pytest.raises(AutocompressError) as info:
        Target.from_dict(data)
    message = str(info.value)
    assert field in message and allowed in message
    with pytest.raises(ValidationError, match=field.split(".")[0]):
        Target(**data)  # type: ignore[arg-type]
