"""ModelRunner: served outputs are ONNX Runtime's, batched or not; two-tower towers cut out of the graph."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from autocompress.export import create_session, feed
from autocompress.serving import (
    LocalPredictor,
    ModelCatalog,
    ModelRunner,
    deploy_job_winner,
    extract_towers,
)
from autocompress.spec import Target
from autocompress.store import ConflictError, JobStatus
from tests.serving.conftest import Registry


def _reference_logits(path: str, features: dict[str, np.ndarray]) -> np.ndarray:
    session = create_session(path, Target())
    return np.asarray(session.run(None, feed(session, features))[0])


def test_logits_are_onnx_runtimes_alone_and_in_one_batch(registry: Registry) -> None:
    record = registry.register("dlrm")
    runner = ModelRunner(ModelCatalog(registry.store, registry.root).get(record.id))
    requests = [registry.schema.example_batch(n, seed=n) for n in (1, 5, 3)]
    alone = [runner.logits(r) for r in requests]
    for r, got in zip(requests, alone, strict=True):
        np.testing.assert_array_equal(got, _reference_logits(record.path, r))
    together = runner.logits_many(requests)
    assert [len(x) for x in together] == [1, 5, 3]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_two_tower_embeddings_reproduce_the_logit(registry: Registry) -> None:
    record = registry.register("two_tower")
    served = ModelCatalog(registry.store, registry.root).get(record.id)
    runner = ModelRunner(served)
    batch = registry.schema.example_batch(6, seed=2)
    user = runner.embeddings("user", {n: batch[n] for n in served.encoder.side_features("user")})
    item = runner.embeddings("item", {n: batch[n] for n in served.encoder.side_features("item")})
    assert user.shape == item.shape == (6, 32)  # the tiny arch's output_dim
    np.testing.assert_allclose((user * item).sum(axis=1), runner.logits(batch), rtol=1e-5, atol=1e-5)
    runner.close()


def test_towers_are_found_in_compressed_graphs(registry: Registry, tmp_path: Path) -> None:
    import torch

    from autocompress.models import build
    from autocompress.techniques import Policy, TechniqueContext, apply_policy
    from autocompress.testing.fixtures import TINY_ARCHS

    torch.manual_seed(0)
    arch = {**TINY_ARCHS["two_tower"], "l2_normalize": True, "learn_temperature": True, "temperature": 0.5}
    model = build("two_tower", registry.schema, arch).eval()
    policy = Policy.from_dict({"steps": [{"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm"]}]})
    path = apply_policy(
        model, policy, TechniqueContext(schema=registry.schema, work_dir=tmp_path / "c")
    ).onnx_path
    towers = extract_towers(path, registry.schema, tmp_path, "int8")
    batch = registry.schema.example_batch(4, seed=3)
    user = _reference_logits(str(towers["user"]), batch)
    item = _reference_logits(str(towers["item"]), batch)
    np.testing.assert_allclose(np.linalg.norm(user, axis=1), 1.0, rtol=1e-5)  # l2_normalize
    scale = float(np.exp(-model.log_temperature.item()))
    np.testing.assert_allclose((user * item).sum(1) * scale, _reference_logits(str(path), batch), atol=1e-5)


def test_a_model_without_towers_has_no_embeddings(registry: Registry) -> None:
    record = registry.register("dlrm")
    runner = ModelRunner(ModelCatalog(registry.store, registry.root).get(record.id))
    with pytest.raises(ConflictError, match="two_tower models only"):
        runner.embeddings("user", registry.schema.example_batch(1))


def test_local_predictor_keeps_the_last_models_open(registry: Registry) -> None:
    records = [registry.register("dlrm", seed=s) for s in range(3)]
    predictor = LocalPredictor(ModelCatalog(registry.store, registry.root), max_models=2)
    batch = registry.schema.example_batch(2)
    for record in records:
        got = asyncio.run(predictor.logits(record.id, batch))
        np.testing.assert_array_equal(got, _reference_logits(record.path, batch))
    first = predictor.runner(records[2].id)
    assert predictor.runner(records[2].id) is first
    assert asyncio.run(predictor.load(records[0].id))["model_id"] == records[0].id
    assert len(predictor._runners) == 2
    predictor.close()


def test_a_succeeded_job_with_deploy_true_points_its_alias_at_the_winner(registry: Registry) -> None:
    from autocompress.job import JobSpec

    spec = JobSpec.from_dict({"name": "ranking-prod", "deploy": True}).to_dict()
    record = registry.register("dlrm", spec=spec)
    assert record.job_id is not None
    assert deploy_job_winner(registry.store, record.job_id) is None  # not SUCCEEDED yet
    registry.store.set_job_status(record.job_id, JobStatus.RUNNING)
    registry.store.set_job_status(record.job_id, JobStatus.SUCCEEDED)
    deployment = deploy_job_winner(registry.store, record.job_id)
    assert deployment is not None and deployment.alias == "ranking-prod"
    assert registry.store.active_deployment("ranking-prod").model_id == record.id  # type: ignore[union-attr]

    quiet = registry.register("dlrm", seed=1, spec=JobSpec.from_dict({"name": "quiet"}).to_dict())
    assert quiet.job_id is not None
    registry.store.set_job_status(quiet.job_id, JobStatus.RUNNING)
    registry.store.set_job_status(quiet.job_id, JobStatus.SUCCEEDED)
    assert deploy_job_winner(registry.store, quiet.job_id) is None
    assert registry.store.active_deployment("quiet") is None
