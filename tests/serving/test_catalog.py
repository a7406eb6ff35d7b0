"""Finding servable models: the artifact root is a hard boundary; targets come from the job's spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autocompress.job import JobSpec
from autocompress.serving import ENCODERS_FILE, FeatureEncoders, ModelCatalog, ModelRunner, resolve_artifact
from autocompress.spec import Target
from autocompress.store import ConflictError, NotFoundError
from tests.serving.conftest import Registry


def test_artifacts_must_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "job").mkdir(parents=True)
    inside = root / "job" / "model.onnx"
    inside.write_bytes(b"onnx")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"onnx")
    assert resolve_artifact(inside, root) == inside.resolve()
    assert resolve_artifact("root/job/model.onnx", root, base_dir=tmp_path) == inside.resolve()
    with pytest.raises(ConflictError, match="outside the artifact root"):
        resolve_artifact(outside, root)
    with pytest.raises(ConflictError, match="outside the artifact root"):
        resolve_artifact(root / "job" / ".." / ".." / "elsewhere.onnx", root)
    (root / "job" / "link.onnx").symlink_to(outside)
    with pytest.raises(ConflictError, match="outside the artifact root"):
        resolve_artifact(root / "job" / "link.onnx", root)
    with pytest.raises(ConflictError, match="does not exist"):
        resolve_artifact(root / "job" / "gone.onnx", root)


def test_catalog_finds_models_by_id_and_alias(registry: Registry) -> None:
    first, second = registry.register("dlrm"), registry.register("dlrm", seed=1)
    catalog = ModelCatalog(registry.store, registry.root)
    served = catalog.get(first.id)
    assert served.id == first.id and served.path == Path(first.path).resolve()
    assert served.schema == registry.schema
    assert served.target == Target()  # registered outside a job: the default target
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        catalog.get("nope")
    with pytest.raises(NotFoundError, match="'ranking-prod' has no active deployment"):
        catalog.for_alias("ranking-prod")
    registry.store.deploy("ranking-prod", first.id)
    assert catalog.for_alias("ranking-prod").id == first.id
    registry.store.deploy("ranking-prod", second.id)
    assert catalog.for_alias("ranking-prod").id == second.id
    registry.store.rollback("ranking-prod")
    assert catalog.for_alias("ranking-prod").id == first.id


def test_a_model_outside_the_root_is_not_served(registry: Registry, tmp_path: Path) -> None:
    record = registry.register("dlrm")
    catalog = ModelCatalog(registry.store, tmp_path / "another-root")
    with pytest.raises(ConflictError, match="outside the artifact root"):
        catalog.get(record.id)


def test_the_session_runs_with_the_jobs_target(registry: Registry) -> None:
    spec = JobSpec.from_dict({"target": {"intra_op_threads": 2}}).to_dict()
    record = registry.register("dlrm", spec=spec)
    served = ModelCatalog(registry.store, registry.root).get(record.id)
    assert served.target.intra_op_threads == 2
    runner = ModelRunner(served)
    assert runner.session.get_session_options().intra_op_num_threads == 2
    assert runner.describe()["intra_op_threads"] == 2


def test_encoders_beside_the_model_are_used(registry: Registry) -> None:
    from autocompress.data.vocab import Vocabulary

    record = registry.register("dlrm")
    FeatureEncoders(vocabularies={"user_gender": Vocabulary(["f", "m"])}).save(Path(record.path).parent)
    assert (Path(record.path).parent / ENCODERS_FILE).is_file()
    served = ModelCatalog(registry.store, registry.root).get(record.id)
    batch = registry.schema.example_batch(2)
    rows = [{n: batch[n][i].tolist() for n in registry.schema.feature_names} for i in range(2)]
    rows[0]["user_gender"], rows[1]["user_gender"] = "m", "x"
    assert served.encoder.encode(rows)["user_gender"].tolist() == [3, 1]


def test_an_unreadable_encoders_file_makes_the_model_unservable(registry: Registry) -> None:
    record = registry.register("dlrm")
    (Path(record.path).parent / ENCODERS_FILE).write_text('{"version": 9}')
    with pytest.raises(ConflictError, match=r"cannot be served: encoders\.json: version 9"):
        ModelCatalog(registry.store, registry.root).get(record.id)
    assert os.path.exists(record.path)
