"""A whole search job on a real local Ray (2 CPUs) and a SQLite file: recorded, compared, reported."""

import html
import os
from pathlib import Path

import pytest

from autocompress.engine.job import run_job
from autocompress.job import JobSpec
from autocompress.search.pareto import NO_FEASIBLE_MODEL
from autocompress.store import JobStatus, Store, TrialStatus
from autocompress.testing import tiny_job

os.environ["RAY_AUTH_MODE"] = "disabled"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_2_cpus():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _busy(note: str) -> bool:
    """A busy-node warning: said when the suite's other work shared the cores (``measure.busy``)."""
    return "node busy while measuring latency" in note


def test_the_tiny_example_job_finds_a_winner_and_records_every_trial(ray_2_cpus, tmp_path):
    spec = JobSpec.from_dict(tiny_job(num_trials=3))  # the example's 6 show nothing more
    store = Store(tmp_path / "jobs.db")
    result = run_job(spec, store, tmp_path / "runs")

    job = store.get_job(result.job_id)
    assert job.status is JobStatus.SUCCEEDED
    trials = store.list_trials(result.job_id)
    assert len(trials) == spec.search.num_trials
    assert all(t.status in (TrialStatus.COMPLETED, TrialStatus.FAILED) for t in trials)
    assert result.winner_trial is not None, result.reason
    assert any(t.trial_key == result.winner_trial for t in trials)
    # judged on the latency measured again once no trial runs (the trial row keeps the in-trial figure)
    model = store.get_model(result.model_id)
    assert model.metrics["feasible"] is True and model.metrics["latency_ms"] <= spec.budget.latency_ms
    assert model.metrics["size_mb"] <= spec.budget.size_mb
    names = [r["name"] for r in result.rows]
    assert names == ["winner", "onnx_fp32", "ort_dynamic_int8"]
    fp32 = result.rows[1]
    assert 0.6 < fp32["test_auc"] < 1 and result.rows[0]["size_ratio"] > 1  # the winner is smaller
    page = Path(result.report_path).read_text()
    assert f"Winner: trial <b>{result.winner_trial}</b>" in page
    assert model.metrics["test"]["test_auc"] == pytest.approx(result.rows[0]["test_auc"])
    # the figure shown is the figure the winner was selected on, and it still meets the budget
    assert result.rows[0]["latency_ms"] == model.metrics["latency_ms"]
    assert result.rows[0]["within_budget"] is True and "<td>yes</td>" in page
    warnings = [e.message for e in store.list_events(result.job_id) if e.kind == "warning"]
    assert not [w for w in warnings if not _busy(w)]  # it beats popularity (a busy node may be said)
    # an absolute budget is its own resolution; the baselines were measured before the search
    assert result.budget["rule"] == result.budget["resolved"] == spec.budget.to_dict()
    assert set(result.budget["baselines"]) == {"onnx_fp32", "ort_dynamic_int8"}
    assert job.result["budget"] == result.budget


def test_an_impossible_budget_ends_with_no_feasible_model(ray_2_cpus, tmp_path):
    """Also: a CUDA target on this GPU-less machine falls back to the CPU, a reference that learnt
    nothing (a learning rate of 1e-9) loses to popularity alone, and the job and the report say both."""
    data = tiny_job(num_trials=2)
    # 1000x faster than ONNX Runtime's int8 of the reference: a relative budget nobody meets
    data["budget"] = {"latency": {"speedup_vs": "ort_dynamic_int8", "factor": 1000}, "batch_size": 256}
    data["train"]["lr"] = 1e-9
    data["target"] = {**data["target"], "device": "cuda", "execution_provider": "CUDAExecutionProvider"}
    spec = JobSpec.from_dict(data)
    store = Store(tmp_path / "jobs.db")
    result = run_job(spec, store, tmp_path / "runs")

    job = store.get_job(result.job_id)
    assert job.status is JobStatus.SUCCEEDED and job.reason == NO_FEASIBLE_MODEL
    assert result.winner_trial is None and result.model_id is None
    assert len(store.list_trials(result.job_id)) == 2
    assert [r["name"] for r in result.rows] == ["onnx_fp32", "ort_dynamic_int8"]
    page = Path(result.report_path).read_text()
    assert NO_FEASIBLE_MODEL in page
    note, weak = [n for n in result.notes if not _busy(n)]
    assert "target device 'cuda'" in note and "measured on the CPU" in note
    assert weak.startswith("reference: the model's valid AUC") and "does not beat popularity alone" in weak
    for text in (note, weak):
        assert text.replace("'", "&#x27;") in page
    assert [n for n in job.result["notes"] if not _busy(n)] == [note, weak]
    events = [(e.kind, e.message) for e in store.list_events(result.job_id)]
    assert ("log", note) in events and ("warning", weak) in events
    assert all(t.metrics["latency_ms"] > 0 for t in store.list_trials(result.job_id))
    # the rule and the ms it resolved to, from int8's latency measured on this target, both recorded
    budget = job.result["budget"]
    assert budget["rule"]["latency"] == {"speedup_vs": "ort_dynamic_int8", "factor": 1000.0}
    int8_ms = budget["baselines"]["ort_dynamic_int8"]["latency_ms"]
    assert int8_ms > 0 and budget["resolved"]["latency_ms"] == pytest.approx(int8_ms / 1000)
    assert budget["resolved"]["latency"] is None
    text = budget["text"]["latency"]
    assert text.startswith("latency p99 at batch 256 >= 1000x faster than ort_dynamic_int8 (<= ")
    assert ("budget", f"budget: {text}") in events and html.escape(f"Budget: {text}") in page
    # the closest candidates are still reported, judged against the resolved figure
    trials = store.list_trials(result.job_id)
    assert all(not t.metrics["feasible"] and t.metrics["distance_to_feasible"] > 0 for t in trials)
    assert any("latency p99 at batch 256" in v for t in trials for v in t.metrics["violations"])
