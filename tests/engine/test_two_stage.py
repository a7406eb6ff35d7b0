"""The two-stage search: its spec, its searcher batches, stage 1's scoring, and a tiny job end to end.

The job runs on a real local Ray (2 CPUs) and a SQLite file; the rest needs no Ray cluster.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.store import JobStatus, Store, TrialRecord, TrialStatus
from autocompress.testing import tiny_job

# stage 1: 4 candidates in 2 trials of 2; stage 2: the best 2; the supernet trains 1 epoch
TWO_STAGE = {
    "supernet_epochs": 1,
    "candidates": 4,
    "candidates_per_trial": 2,
    "top_k": 2,
    "valid_sample_rows": 500,
    "finetune_epochs": 1,
}


def tiny_two_stage_spec(**search: Any) -> JobSpec:
    return JobSpec.from_dict(tiny_job(num_trials=6, strategy="two_stage", two_stage=TWO_STAGE, **search))


# -- the spec ---------------------------------------------------------------------------------------


def test_per_trial_stays_the_default() -> None:
    spec = JobSpec.from_dict({})
    assert spec.search.strategy == "per_trial"
    assert spec.search.two_stage.candidates == 300 and spec.search.two_stage.top_k == 4


def test_every_example_job_is_valid_and_the_two_stage_one_has_a_supernet_of_its_space() -> None:
    import yaml

    from autocompress.job import DEFAULT_JOB_FILE
    from autocompress.search.space import load_search_space
    from autocompress.supernet import supernet_archs

    specs = {
        f.stem: JobSpec.from_dict(yaml.safe_load(f.read_text()))
        for f in DEFAULT_JOB_FILE.parent.glob("*.yaml")
    }
    assert {"default_job", "tiny_job", "two_stage_per_table"} <= set(specs)
    two_stage = specs["two_stage_per_table"]
    assert two_stage.search.strategy == "two_stage" and two_stage.preset == "per_table"
    largest, smallest = supernet_archs(load_search_space(two_stage.family, two_stage.preset))
    assert largest != smallest


@pytest.mark.parametrize(
    ("search", "family", "message"),
    [
        (
            {"strategy": "three_stage"},
            "dlrm",
            r"search\.strategy: Input should be 'per_trial' or 'two_stage'",
        ),
        ({"two_stage": {"top_k": 0}}, "dlrm", r"search\.two_stage\.top_k: .*greater than or equal to 1"),
        (
            {"two_stage": {"candidates": 3, "top_k": 5}},
            "dlrm",
            r"search\.two_stage: .*top_k \(5\) must be at most candidates \(3\)",
        ),
        ({"two_stage": {"valid_sample_rows": 10}}, "dlrm", r"search\.two_stage\.valid_sample_rows: .*100"),
        ({"two_stage": {"latency_margin": 1.0}}, "dlrm", r"search\.two_stage\.latency_margin: .*less than 1"),
        (
            {"two_stage": {"candidate": 3}},
            "dlrm",
            r"search\.two_stage\.candidate: unknown field; allowed: \['candidates', 'candidates_per_trial'",
        ),
        ({"strategy": "two_stage", "asha": True}, "dlrm", r"search: .*asha .*strategy 'per_trial' only"),
    ],
)
def test_refusals_name_the_field(search: dict[str, Any], family: str, message: str) -> None:
    with pytest.raises(AutocompressError, match=message):
        JobSpec.from_dict({"family": family, "search": search})


# -- stage 1's searcher: candidates in batches, each one told back ----------------------------------


def test_batches_propose_every_candidate_and_tell_each_outcome_back() -> None:
    from ray import tune

    from autocompress.engine.searchers import CandidateBatches, RegularizedEvolution

    inner = RegularizedEvolution(metric="objective", mode="max", population_size=2, sample_size=1, seed=0)
    batches = CandidateBatches(inner, {"x": tune.randint(0, 100)}, per_trial=3, total=7)
    suggested = [batches.suggest(f"t{i}") for i in range(4)]
    assert [len(s["candidates"]) for s in suggested[:3]] == [3, 3, 1]  # type: ignore[index]
    assert suggested[3] == "FINISHED"
    batches.on_trial_result("t0", {"candidate": 0, "status": "completed", "objective": 0.7})
    batches.on_trial_result(
        "t0", {"candidate": 0, "status": "completed", "objective": 0.9}
    )  # a retry: told once
    batches.on_trial_result("t0", {"candidate": 1, "status": "failed"})
    assert [score for _, score in inner._population] == [0.7]  # the failed one is no member
    batches.on_trial_complete("t0", {"candidate": 2, "status": "completed", "objective": 0.8})
    batches.on_trial_complete("t1", None, error=True)  # nothing reported: all three told as errors
    assert [score for _, score in inner._population] == [0.7, 0.8]
    assert inner._live.keys() == {"t2#0"} and batches._open == {"t2": ["t2#0"]}


# -- stage 1's scoring ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explorer_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny dlrm supernet trained 20 steps, the job's shared resources, and a small search space."""
    from autocompress.search.space import SearchSpace
    from autocompress.testing import tiny_setup

    space = SearchSpace.from_dict(
        {
            "version": 1,
            "family": "dlrm",
            "arch": {
                "embedding_dim": {"kind": "categorical", "choices": [8, 16]},
                "bottom_mlp": {"kind": "categorical", "choices": [[], [16]]},
                "top_mlp": {"kind": "categorical", "choices": [[16], [32, 16]]},
            },
            "arch_rules": {"bottom_mlp": {"append": "embedding_dim"}},
            "policy": [
                {"technique": "distillation", "optional": True},
                {"technique": "structured_pruning", "params": {"sparse_ratio": 0.5, "importance": "taylor"}},
                {"technique": "dynamic_int8", "optional": True, "params": {"op_types": ["MatMul", "Gather"]}},
            ],
        }
    )
    return _parts(tiny_setup("dlrm"), space, tmp_path_factory.mktemp("explore"), epochs=1, max_steps=20)


def _parts(setup: Any, space: Any, root: Path, *, epochs: int, max_steps: int) -> dict[str, Any]:
    """What an Explorer needs: ``space``, its supernet trained on the tiny setup with its teacher (at
    most ``max_steps``), and the job's shared resources."""
    import torch

    from autocompress.supernet import Supernet, arch_sampler, supernet_archs, train_supernet
    from autocompress.testing.fixtures import one_torch_thread
    from autocompress.train import TrainConfig

    largest, smallest = supernet_archs(space)
    with one_torch_thread():
        torch.manual_seed(0)
        supernet = Supernet.for_family(setup.dataset.schema, largest)
        train_supernet(
            supernet,
            setup.dataset.train,
            setup.dataset.valid,
            smallest=smallest,
            sample_arch=arch_sampler(space),
            config=TrainConfig(epochs=epochs, batch_size=512, lr=1e-2, early_stopping_patience=None),
            teacher=setup.trained,
            max_steps=max_steps,
        )
    return {"space": space, "supernet": supernet.cpu().eval(), "shared": _shared(setup, root)}


def _shared(setup: Any, root: Path) -> Any:
    """The job's shared resources around a tiny setup: its teacher, a loose budget, a quick target."""
    from autocompress.engine.trial import SharedResources
    from autocompress.measure.quality import auc
    from autocompress.search.budget import Budget
    from autocompress.spec import Target
    from autocompress.train import predict

    return SharedResources(
        dataset=setup.dataset,
        teacher=setup.trained,
        reference_valid_auc=auc(setup.dataset.valid.labels, predict(setup.trained, setup.dataset.valid)),
        target=Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1),
        budget=Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0),
        work_dir=root / "work",
        cache_dir=root / "cache",
        reference_size_bytes=1_000_000,
    )


SAMPLED = {
    "arch.embedding_dim": 8,
    "arch.bottom_mlp": [16],
    "arch.top_mlp": [32, 16],
    "policy.0.enabled": True,
    "policy.2.enabled": True,
}


def test_a_candidate_is_scored_on_inherited_weights_with_its_post_training_policy(
    explorer_parts: dict[str, Any],
) -> None:
    from autocompress.engine.explore import Explorer
    from autocompress.search.pareto import Candidate
    from autocompress.testing.fixtures import one_torch_thread

    explorer = Explorer(**explorer_parts, sample_rows=600)
    with one_torch_thread():
        report = explorer.evaluate("t1-000", SAMPLED)
        plain = explorer.evaluate("t1-001", {**SAMPLED, "policy.2.enabled": False})
    assert report["stage"] == "final" and report["search_stage"] == 1, report.get("error")
    # distillation only trains: left to stage 2; pruning without its fine-tuning, then int8
    assert report["techniques"] == ["structured_pruning", "dynamic_int8"]
    assert plain["techniques"] == ["structured_pruning"]
    assert report["valid_rows"] == 600 and 0.6 < report["valid_auc"] < 1  # the supernet's weights, not chance
    assert report["delta_auc"] == pytest.approx(report["valid_auc"] - explorer.reference_auc)
    assert report["latency_source"] == "measured" and report["latency_ms"] > 0 and "p99_ms_b64" in report
    assert 0 < report["size_mb"] < plain["size_mb"] / 2  # int8 tables and matmuls
    assert report["feasible"] is True and report["violations"] == []
    Candidate.from_metrics("t1-000", report)  # what stage 2's selection reads


def test_a_candidate_that_cannot_be_built_fails_alone_with_its_error(explorer_parts: dict[str, Any]) -> None:
    from autocompress.engine.explore import Explorer

    explorer = Explorer(**explorer_parts, sample_rows=600)
    report = explorer.evaluate("t1-002", {**SAMPLED, "arch.embedding_dim": 32})
    assert report["stage"] == "failed" and report["status"] == "failed"
    assert "arch.embedding_dim = 32 is not in" in report["error"]


@pytest.mark.parametrize("family", ["deepfm", "two_tower"])
def test_the_realtime_space_of_each_family_scores_candidates_on_its_supernet(
    family: str, tmp_path: Path
) -> None:
    """Stage 1 beyond dlrm: the family's shipped ``realtime`` space gives a supernet, and candidates
    drawn from the space are sliced out of it, compressed after training, exported and scored."""
    import numpy as np

    from autocompress.engine.explore import Explorer
    from autocompress.search.space import load_search_space
    from autocompress.search.tune_space import to_tune
    from autocompress.testing import tiny_setup
    from autocompress.testing.fixtures import one_torch_thread

    space = load_search_space(family, "realtime")
    # 3 epochs of the tiny data: after one, a candidate was still at chance
    explorer = Explorer(
        **_parts(tiny_setup(family), space, tmp_path, epochs=3, max_steps=60), sample_rows=600
    )
    rng, dims = np.random.RandomState(0), to_tune(space)
    drawn = [
        {k: v.sample(random_state=rng) if hasattr(v, "sample") else v for k, v in dims.items()}
        for _ in range(3)
    ]
    with one_torch_thread():
        reports = [explorer.evaluate(f"t1-{i:03d}", sampled) for i, sampled in enumerate(drawn)]
    assert len({json.dumps(sampled, sort_keys=True) for sampled in drawn}) == 3
    for report in reports:
        assert report["stage"] == "final" and report["search_stage"] == 1, report.get("error")
        assert report["valid_rows"] == 600 and 0.5 < report["valid_auc"] < 1  # learnt, not chance
        assert report["latency_source"] == "measured" and report["latency_ms"] > 0 and report["size_mb"] > 0


# -- stage 2's choice --------------------------------------------------------------------------------


def _record(
    key: str, auc: float, latency: float, size: float, *, feasible: bool = True, **kw: Any
) -> TrialRecord:
    now = datetime.now()
    metrics = {"valid_auc": auc, "latency_ms": latency, "size_mb": size, "feasible": feasible}
    return TrialRecord(
        id=key,
        job_id="job",
        trial_key=key,
        status=kw.get("status", TrialStatus.COMPLETED),
        config={"stage": kw.get("stage", 1), "sampled": {"arch.embedding_dim": kw.get("dim", key)}},
        metrics={**metrics, "distance_to_feasible": kw.get("distance", 0.0)},
        error=None,
        attempts=1,
        started_at=now,
        finished_at=now,
        seconds=1.0,
        updated_at=now,
    )


def test_finalists_are_within_latency_and_size_with_a_margin_first_whatever_their_auc_drop() -> None:
    from autocompress.engine.two_stage import select_finalists
    from autocompress.search.budget import Budget

    # stage 1 judged every one of them on its AUC before fine-tuning: none "feasible"
    budget = Budget(latency_ms=2.0, size_mb=1.0, max_auc_drop=0.002)
    trials = [
        _record("a", 0.80, 1.0, 1.0, feasible=False),  # within the bounds with 10% to spare: front 1
        _record("b", 0.78, 0.5, 1.0, feasible=False),  # faster: front 1
        _record("c", 0.77, 1.0, 1.0, feasible=False),  # dominated by a and b: front 2
        _record("d", 0.79, 1.0, 1.0, feasible=False, dim="a"),  # the same config as a: never trained twice
        _record("e", 0.82, 1.9, 1.0, feasible=False),  # within the bounds, less than 10% to spare
        _record("f", 0.90, 9.0, 1.0, feasible=False),  # over the latency bound by 3.5x its bound
        _record("g", 0.85, 3.0, 1.0, feasible=False),  # over it by half
        _record("h", 0.99, 0.1, 0.1, stage=2),  # a stage-2 trial is no stage-1 candidate
        _record("i", 0.99, 0.1, 0.1, status=TrialStatus.SKIPPED),
    ]
    assert [t.trial_key for t in select_finalists(trials, 2, budget, 0.1)] == ["a", "b"]
    assert [t.trial_key for t in select_finalists(trials, 4, budget, 0.1)] == ["a", "b", "c", "e"]
    assert [t.trial_key for t in select_finalists(trials, 10, budget, 0.1)] == ["a", "b", "c", "e", "g", "f"]
    # without a margin the best AUC within the bounds comes first, at the bound or not
    assert [t.trial_key for t in select_finalists(trials, 3, budget)] == ["e", "a", "b"]


def test_the_winner_is_chosen_from_stage_2_only() -> None:
    from autocompress.search.pareto import finished_candidates

    trials = [
        _record("s1", 0.99, 0.1, 0.1),
        _record("s2", 0.7, 1.0, 1.0, stage=2),
        _record("pt", 0.7, 1, 1, stage=None),
    ]
    assert [c.trial_id for c in finished_candidates(trials)] == ["s2", "pt"]
    assert [c.trial_id for c in finished_candidates(trials, stage=1)] == ["s1"]


# -- a tiny job, interrupted after its supernet and resumed ------------------------------------------


class DriverKilled(BaseException):
    """What a killed driver looks like to the job: not an Exception, so it stays RUNNING."""


@pytest.fixture(scope="module")
def ray_2_cpus():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_two_stage_job_records_both_stages_and_a_resumed_job_reuses_its_supernet(
    ray_2_cpus: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autocompress.engine import two_stage
    from autocompress.engine.job import run_job

    spec = tiny_two_stage_spec()
    store = Store(tmp_path / "jobs.db")

    def killed(*args: Any, **kwargs: Any) -> None:
        raise DriverKilled

    monkeypatch.setattr(two_stage, "run_stage_one", killed)
    with pytest.raises(DriverKilled):
        run_job(spec, store, tmp_path / "runs")
    monkeypatch.undo()
    (job,) = store.list_jobs()
    assert job.status is JobStatus.RUNNING  # what a lost driver leaves
    supernet = tmp_path / "runs" / job.id / "supernet.pt"
    trained_at = supernet.stat().st_mtime_ns
    first = [e.message for e in store.list_events(job.id)]
    assert any(m.startswith("supernet: trained in") for m in first)

    result = run_job(spec, store, tmp_path / "runs", job_id=job.id)

    assert store.get_job(job.id).status is JobStatus.SUCCEEDED
    assert supernet.stat().st_mtime_ns == trained_at
    resumed = [e.message for e in store.list_events(job.id)][len(first) :]
    assert any(m.startswith("supernet: loaded from") for m in resumed)
    assert not any(m.startswith("supernet: trained") for m in resumed)
    trials = store.list_trials(job.id)
    stage_one = [t for t in trials if t.config.get("stage") == 1]
    stage_two = [t for t in trials if t.config.get("stage") == 2]
    assert len(stage_one) == 4 and len(stage_two) == 2 and len(trials) == 6
    assert all(t.status in (TrialStatus.COMPLETED, TrialStatus.SKIPPED) for t in stage_one)
    assert all(t.metrics["search_stage"] == 1 and t.config["arch"]["family"] == "dlrm" for t in stage_one)
    assert all(t.status is TrialStatus.COMPLETED and t.metrics["search_stage"] == 2 for t in stage_two)

    # stage 2 trained stage 1's finalists: the same architectures and policies
    def candidates(trials: list[TrialRecord]) -> set[str]:
        return {json.dumps([t.config["arch"], t.config["policy"]], sort_keys=True) for t in trials}

    assert len(candidates(stage_two)) == 2 and candidates(stage_two) <= candidates(stage_one)
    assert result.winner_trial in {t.trial_key for t in stage_two}, result.reason
    model = store.get_model(result.model_id)
    assert model.job_id == job.id and model.tags["role"] == "winner" and model.metrics["search_stage"] == 2
    assert [r["name"] for r in result.rows] == ["winner", "onnx_fp32", "ort_dynamic_int8"]
    assert any(m.startswith("stage 1: 4 candidates scored in") for m in resumed)
