import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from autocompress.cli import app

runner = CliRunner()


def test_train_prints_the_table_and_writes_the_report(tmp_path):
    out = tmp_path / "ref"
    result = runner.invoke(
        app,
        [
            "train",
            "--scale",
            "tiny",
            "--epochs",
            "1",
            "--lr",
            "0.005",
            "--batch-size",
            "512",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for label in (
        "test AUC",
        "oracle AUC",
        "test logloss",
        "size (MB)",
        "parameters",
        "batch 1 p50",
        "batch 256",
    ):
        assert label in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["family"] == "dlrm"
    assert report["arch"]["embedding_dim"] == 64 and report["arch"]["top_mlp"] == [512, 512, 256]
    assert 0.7 < report["test"]["auc"] < report["oracle_auc"]
    assert report["warnings"] == [] and "popularity alone" not in result.output  # it beats a count

    evaluated = runner.invoke(app, ["evaluate", str(out), "--scale", "tiny"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{report['test']['auc']:.4f}" in evaluated.output  # same data, same model, same AUC


@pytest.mark.slow
def test_data_generate_streams_parquet(tmp_path):
    result = runner.invoke(
        app, ["data", "generate", "--out", str(tmp_path), "--scale", "tiny", "--rows", "3000"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "data.parquet")
    assert table.num_rows == 3000
    assert {"click", "session_id", "oracle_logit", "hist_item_ids"} <= set(table.column_names)
    assert "wrote 3,000 rows" in result.output


def test_user_errors_are_one_line_naming_the_field(tmp_path):
    cases = [
        (["train", "--family", "nope"], "unknown model family 'nope'; known: ['dlrm'"),
        (["train", "--scale", "tiny", "--rows", "0"], "synthetic.n_rows must be a positive integer"),
        (["run", "--scale", "tiny", "--rows", "0"], "--rows must be a positive integer, got 0"),
        (["run", "--trials", "0"], "--trials must be a positive integer, got 0"),
        (["train", "--dataset", "criteo", "--path", str(tmp_path / "missing.tsv")], "does not exist"),
        (["train", "--dataset", "criteo"], "dataset.path is required"),
        (["train", "--arch", "{not json"], "--arch is not valid JSON"),
        (["evaluate", str(tmp_path)], "model.onnx does not exist"),
        (["train", "--scale", "tiny", "--arch", '{"embedding_dim": 0}'], "embedding_dim"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message.replace(" ", "") in "".join(result.output.split()), (
            args,
            result.output,
        )  # any wrapping
        assert "Traceback" not in result.output


def test_report_shows_a_recorded_job_and_names_an_unknown_one(tmp_path):
    from autocompress.store import JobStatus, Store

    store = Store(tmp_path / "jobs.db")
    job = store.create_job({"name": "demo"}, name="demo")
    store.set_job_status(job.id, JobStatus.RUNNING)
    store.record_trial(job.id, "t1", "COMPLETED", metrics={"valid_auc": 0.8})
    row = {"name": "winner", "test_auc": 0.81, "delta_auc": -0.001, "size_mb": 2.5, "size_ratio": 31.8}
    row.update({"p99_ms_b256": 0.9, "speedup_b256": 4.2})
    budget = {"text": {"latency": "latency p99 at batch 256 >= 4.5x faster than onnx_fp32 (<= 0.98 ms)"}}
    store.set_job_status(
        job.id, JobStatus.SUCCEEDED, result={"rows": [row], "report": "/x/report.html", "budget": budget}
    )

    result = runner.invoke(app, ["report", job.id, "--db", str(tmp_path / "jobs.db")])
    assert result.exit_code == 0, result.output
    for text in (
        f"job {job.id} (demo): SUCCEEDED",
        "trials: 1 done",
        "31.8x",
        "4.20x",
        "report: /x/report.html",
        "budget: latency p99 at batch 256 >= 4.5x faster than onnx_fp32 (<= 0.98 ms)",
    ):
        assert text in result.output
    missing = runner.invoke(app, ["report", "no-such-job", "--db", str(tmp_path / "jobs.db")])
    assert missing.exit_code == 2 and "no-such-job" in missing.output


def test_train_warns_when_popularity_alone_beats_the_model(tmp_path):
    # a learning rate of 1e-9 leaves the initial weights: a ranker no better than chance
    args = ["train", "--scale", "tiny", "--epochs", "1", "--lr", "1e-9", "--out", str(tmp_path / "weak")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "does not beat popularity alone" in " ".join(result.output.split())
    report = json.loads((tmp_path / "weak" / "report.json").read_text())
    assert report["test"]["auc"] <= report["popularity_auc"] and len(report["warnings"]) == 1
