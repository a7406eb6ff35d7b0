from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from autocompress.errors import AutocompressError
from autocompress.export import create_session, export_onnx, feed
from autocompress.spec import Target
from tests.export.tiny_ranker import TinyRanker, tiny_schema


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("session") / "ranker.onnx"
    export_onnx(TinyRanker(), tiny_schema(), path)
    return path


def test_session_uses_the_targets_threads_and_optimisation(ranker_path: Path) -> None:
    target = Target(intra_op_threads=2, inter_op_threads=1, graph_optimization="basic")
    session = create_session(ranker_path, target)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_unavailable_provider_is_named_with_the_available_ones(ranker_path: Path) -> None:
    with pytest.raises(AutocompressError) as info:
        create_session(ranker_path, Target(device="cuda"))
    message = str(info.value)
    assert "'CUDAExecutionProvider' is not available" in message
    assert "CPUExecutionProvider" in message


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AutocompressError, match=r"nowhere\.onnx.*does not exist"):
        create_session(tmp_path / "nowhere.onnx", Target())


def test_feed_from_a_session_casts_to_the_graph_dtypes(ranker_path: Path) -> None:
    session = create_session(ranker_path, Target())
    batch = tiny_schema().example_batch(3)
    loose = {
        k: (v.astype(np.float64) if v.dtype == np.float32 else v.astype(np.int32)) for k, v in batch.items()
    }
    loose["label"] = np.zeros(3)
    fed = feed(session, loose)
    assert list(fed) == tiny_schema().feature_names  # label dropped, model order kept
    assert fed["price"].dtype == np.float32 and fed["item_id"].dtype == np.int64
    assert fed["tags"].shape == (3, 3) and fed["tags"].flags["C_CONTIGUOUS"]
    (got,) = session.run(None, fed)
    (want,) = session.run(None, feed(session, batch))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_feed_from_a_schema_and_its_errors() -> None:
    schema = tiny_schema(unused_dense=True)
    batch = schema.example_batch(2)
    fed = feed(schema, batch)
    assert list(fed) == schema.feature_names
    assert fed["ignored_score"].dtype == np.float32 and fed["clicked_items"].dtype == np.int64

    with pytest.raises(AutocompressError, match=r"missing input\(s\) \['category'\]"):
        feed(schema, {k: v for k, v in batch.items() if k != "category"})
    with pytest.raises(AutocompressError, match="id input 'item_id' must be integer, got float64"):
        feed(schema, {**batch, "item_id": batch["item_id"].astype(np.float64)})
