"""One Ray (2 CPUs) running both Serve applications on a free loopback port, with trained tiny models."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autocompress.serving._runner import TOWER_CACHE
from autocompress.store import Store
from serve_app.launcher import free_port
from serve_app.serve import ServeSettings


@dataclass
class Served:
    """The running applications: their URLs, store, artifact root, Ray temp folder and registered models."""

    url: str  # Serve's HTTP proxy: the job API (control plane) at /
    serving: str  # the serving application through the proxy: url + /serving
    direct: str  # the serving replica itself (direct ingress): http://127.0.0.1:<its port>/serving
    store: Store
    root: Path
    ray_dir: Path
    dlrm: str  # a trained tiny DLRM
    dlrm_int8: str  # the same model after ORT dynamic int8: other outputs
    two_tower: str
    settings: ServeSettings | None = None  # what the application was deployed with


@pytest.fixture(scope="package")
def served() -> Iterator[Served]:
    import ray
    from ray import serve

    from autocompress.techniques.dynamic_int8 import Config as DynamicInt8
    from autocompress.testing import tiny_setup
    from serve_app.serve import init_local_ray, run_locally, serving_urls

    work = Path(tempfile.mkdtemp(prefix="ac-serve-"))  # short: Ray's socket paths live under it
    root = work / "artifacts"
    setup = tiny_setup("dlrm")
    dlrm = setup.compress(root / "dlrm")
    dlrm_int8 = setup.compress(root / "dlrm-int8", DynamicInt8(op_types=("MatMul", "Gemm")))
    two_tower = _untrained_two_tower(root / "two-tower" / "model.onnx")
    db_url = f"sqlite:///{work / 'serve.db'}"
    store = Store(db_url)
    schema = setup.dataset.schema.to_dict()
    ids = [
        store.register_model(name, path, schema, {}).id
        for name, path in (("dlrm", dlrm), ("dlrm-int8", dlrm_int8), ("two-tower", two_tower))
    ]
    port = free_port()
    settings = ServeSettings.from_dict(
        {
            "db_url": db_url,
            "artifact_root": str(root),
            "max_running_jobs": 0,
            "api": {"num_cpus": 0.5},
            "model_server": {
                "num_cpus": 0.5,
                "max_models_per_replica": 2,  # three models: the least recently used is dropped
                "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002},
            },
        }
    )
    init_local_ray(
        settings,
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(work / "ray"),
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        run_locally(settings, port=port)
        (direct,) = serving_urls(settings)
        url = f"http://127.0.0.1:{port}"
        yield Served(url, url + "/serving", direct, store, root, work / "ray", *ids, settings=settings)
    finally:
        serve.shutdown()
        ray.shutdown()
        store.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(TOWER_CACHE / ids[2], ignore_errors=True)  # cut by the ModelServer replica


def _untrained_two_tower(path: Path) -> Path:
    import torch

    from autocompress.export import export_onnx
    from autocompress.models import build
    from autocompress.testing import tiny_setup
    from autocompress.testing.fixtures import TINY_ARCHS

    schema = tiny_setup("dlrm").dataset.schema
    torch.manual_seed(0)
    return export_onnx(build("two_tower", schema, TINY_ARCHS["two_tower"]).eval(), schema, path).path
