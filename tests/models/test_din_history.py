"""DINArch.history_length: DIN attends over the last L positions of a full-length history input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.models import build
from autocompress.models.din import DINArch
from autocompress.techniques import Policy
from tests.models.tiny import make_schema, to_tensors

SCHEMA = make_schema(history_len=6)
ARCH = DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8,))


def test_history_length_round_trips_and_bad_values_are_refused_naming_the_field() -> None:
    arch = DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8,), history_length=3)
    assert DINArch.from_dict(arch.to_dict()) == arch and arch.to_dict()["history_length"] == 3
    assert ARCH.to_dict()["history_length"] is None
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(AutocompressError, match=r"din arch: history_length must be an integer > 0"):
            DINArch(history_length=bad)
    with pytest.raises(AutocompressError, match=r"history_length 7 is longer than .*allowed: 1\.\.6"):
        build("din", SCHEMA, DINArch(history_length=7))


def test_the_model_reads_only_the_last_positions_of_the_full_length_input() -> None:
    torch.manual_seed(0)
    full = build("din", SCHEMA, ARCH).eval()
    short = build("din", SCHEMA, DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8,), history_length=2))
    short.load_state_dict(full.state_dict())  # no weight depends on the history length
    short.eval()
    rows = SCHEMA.example_batch(5, seed=1)
    rows["clicked_items"] = np.array([[1, 2, 3, 4, 5, 6]] * 5)
    older_padded = {**rows, "clicked_items": np.array([[0, 0, 0, 0, 5, 6]] * 5)}
    with torch.no_grad():
        np.testing.assert_allclose(
            short(to_tensors(rows)).numpy(), full(to_tensors(older_padded)).numpy(), atol=1e-6
        )
        assert not np.allclose(short(to_tensors(rows)).numpy(), full(to_tensors(rows)).numpy())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_shorter_history_exports_with_the_schemas_inputs(tmp_path: Path) -> None:
    from autocompress.export import create_session, export_onnx, feed
    from autocompress.spec import Target

    torch.manual_seed(0)
    model = build(
        "din", SCHEMA, DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8,), history_length=3)
    ).eval()
    path = export_onnx(model, SCHEMA, tmp_path / "din.onnx").path
    session = create_session(path, Target())
    assert [i.name for i in session.get_inputs()] == SCHEMA.feature_names
    rows = SCHEMA.example_batch(16, seed=2)
    (scores,) = session.run(None, feed(session, rows))
    with torch.no_grad():
        expected = model(to_tensors(rows)).numpy()
    np.testing.assert_allclose(np.asarray(scores).reshape(-1), expected, atol=1e-5)


def test_the_latency_model_counts_the_positions_attended_to() -> None:
    from autocompress.engine.latency_model import candidate_features, candidate_inventory

    def features(length: int | None) -> dict[str, float]:
        arch = DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8,), history_length=length).to_dict()
        return candidate_features(candidate_inventory("din", SCHEMA, arch, Policy()))

    full, short = features(None), features(2)
    assert features(6) == full
    assert sum(short.values()) < sum(full.values())
