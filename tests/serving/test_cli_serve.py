"""``autocompress predict``: probabilities from a stored model, in process; user errors: one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.export import create_session, feed
from autocompress.spec import Target
from tests.serving.conftest import Registry


def _rows_file(registry: Registry, path: Path, n: int = 3) -> dict[str, np.ndarray]:
    batch = registry.schema.example_batch(n, seed=4)
    rows = [{name: batch[name][i].tolist() for name in registry.schema.feature_names} for i in range(n)]
    path.write_text(json.dumps({"rows": rows}))
    return batch


def test_predict_by_id_and_by_alias(registry: Registry, tmp_path: Path) -> None:
    record = registry.register("dlrm")
    registry.store.deploy("ranking-prod", record.id)
    batch = _rows_file(registry, tmp_path / "rows.json")
    session = create_session(record.path, Target())
    expected = np.asarray(session.run(None, feed(session, batch))[0])
    common = [
        "--rows",
        str(tmp_path / "rows.json"),
        "--db",
        registry.store.url,
        "--artifact-root",
        str(registry.root),
    ]
    for target in ([record.id], ["--alias", "ranking-prod"]):
        result = CliRunner().invoke(app, ["predict", *target, *common, "--json"])
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["model_id"] == record.id
        np.testing.assert_allclose(body["logits"], expected, atol=1e-6)
        np.testing.assert_allclose(body["probabilities"], 1 / (1 + np.exp(-expected)), atol=1e-6)
    table = CliRunner().invoke(app, ["predict", record.id, *common])
    assert table.exit_code == 0 and "probability" in table.output


def test_predict_errors_are_one_line(registry: Registry, tmp_path: Path) -> None:
    record = registry.register("dlrm")
    _rows_file(registry, tmp_path / "rows.json")
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    del rows[1]["user_id"]
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    common = ["--db", registry.store.url, "--artifact-root", str(registry.root)]
    cases = [
        ([record.id, "--rows", str(tmp_path / "bad.json")], "rows[1].user_id: missing feature 'user_id'"),
        (["nope", "--rows", str(tmp_path / "rows.json")], "no model 'nope'"),
        (["--rows", str(tmp_path / "rows.json")], "give a model id or --alias"),
        ([record.id, "--rows", str(tmp_path / "missing.json")], "cannot be read"),
    ]
    for args, words in cases:
        result = CliRunner().invoke(app, ["predict", *args, *common])
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
