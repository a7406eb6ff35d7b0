"""A whole search job on a real local Ray (2 CPUs) and a SQLite file, in process: a budget nobody meets.

The tiny example job that finds a winner runs through the API instead, from submission to model
download (``tests/api/test_lifecycle.py``): the same job twice would cost the suite a minute.
"""

import html
import os
from pathlib import Path

import pytest

from autocompress.engine.job import run_job
from autocompress.job import JobSpec
from autocompress.measure.busy import BUSY_WARNING
from autocompress.search.pareto import NO_FEASIBLE_MODEL
from autocompress.store import JobStatus, Store
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
    note, weak = [n for n in result.notes if BUSY_WARNING not in n]
    assert "target device 'cuda'" in note and "measured on the CPU" in note
    assert weak.startswith("reference: the model's valid AUC") and "does not beat popularity alone" in weak
    for text in (note, weak):
        assert text.replace("'", "&#x27;") in page
    assert [n for n in job.result["notes"] if BUSY_WARNING not in n] == [note, weak]
    events = [(e.kind, e.message) for e in store.list_events(result.job_id)]
    assert ("log", note) in events and ("warning", weak) in events
    assert all(t.metrics["latency_ms"] > 0 for t in store.list_trials(result.job_id))
    # the rule and the ms it resolved to, from int8's latency measured on this target, both recorded
    budget = job.result["budget"]
    assert budget["rule"]["latency"] == {"speedup_vs": "ort_dynamic_int8", "factor": 1000.0}
    int8_ms = budget["baselines"]["ort_dynamic_int8"]["latency_ms"]
    assert int8_ms > 0 and budget["resolved"]["latency_ms"] == pytest.approx(int8_ms / 1000)
    assert budget["resolved"]["latency"] is None
    # resolved again at the end on int8 measured again beside the candidates; the start's kept
    start = budget["at_start"]
    start_ms = start["baselines"]["ort_dynamic_int8"]["latency_ms"]
    assert start_ms > 0 and start["resolved"]["latency_ms"] == pytest.approx(start_ms / 1000)
    assert int8_ms != start_ms  # a second measurement, not the cached figure
    text = budget["text"]["latency"]
    assert text.startswith("latency p99 at batch 256 >= 1000x faster than ort_dynamic_int8 (<= ")
    assert text.endswith(f"ms; {start_ms / 1000:.3g} ms at the job's start)")
    assert ("budget", f"budget: {text}") in events and html.escape(f"Budget: {text}") in page
    assert next(m for k, m in events if k == "budget") != f"budget: {text}"  # the start's, said then
    # the closest candidates are still reported, judged against the figure resolved at the end
    trials = store.list_trials(result.job_id)
    assert all(not t.metrics["feasible"] and t.metrics["distance_to_feasible"] > 0 for t in trials)
    for t in trials:
        distance = t.metrics["latency_ms"] / budget["resolved"]["latency_ms"] - 1
        assert t.metrics["distance_to_feasible"] == pytest.approx(distance)
    assert any("latency p99 at batch 256" in v for t in trials for v in t.metrics["violations"])
