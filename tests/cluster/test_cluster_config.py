"""cluster.yaml and cluster.local.yaml go through Ray's own preparation and schema validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _prepared(name: str) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / name).read_text())
    prepared: dict[str, Any] = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_the_aws_cluster_has_a_cpu_head_and_gpu_workers_named_by_latency_target() -> None:
    config = _prepared("cluster.yaml")
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 8, "GPU": 0, "latency_cpu": 1}
    assert nodes["gpu_worker"]["resources"] == {"CPU": 8, "GPU": 1, "latency_cuda": 1}
    assert nodes["gpu_worker"]["max_workers"] <= config["max_workers"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert any(
        "autocompress" in c for c in config["head_setup_commands"]
    )  # setup merged into head and workers


def test_the_on_premises_variant_prepares_to_the_local_node_type() -> None:
    config = _prepared("cluster.local.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["worker_ips"] and config["provider"]["head_ip"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "latency_cpu" in head


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="four"), "max_workers"),
        (lambda c: c.update(head_node_typo="head"), "head_node_typo"),
        (lambda c: c["worker_start_ray_commands"].append({"ray start": "x"}), "is not of type 'string'"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=6), "smaller than the sum"),
        (lambda c: c.update(head_node_type="gpu"), "must be one of `available_node_types`"),
    ],
)
def test_a_typo_or_an_impossible_value_fails_validation(tmp_path: Path, change: Any, message: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    change(config)
    with pytest.raises(Exception, match=message):
        validate_config(prepare_config(config))
