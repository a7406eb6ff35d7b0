"""The Ray Tune layer with a real local Ray (2 CPUs), tiny data and a real SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress.engine.recording import finished_status, trial_config
from autocompress.engine.trial import SharedResources
from autocompress.engine.tuner import SEARCHERS, SearchOutcome, make_searcher, objective, run_search
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc
from autocompress.search.budget import Budget
from autocompress.search.space import SearchSpace, decode, load_search_space
from autocompress.spec import SearchSettings, Target
from autocompress.store import Store, TrialStatus
from autocompress.testing import tiny_setup
from autocompress.train import TrainConfig, predict

pytestmark = pytest.mark.slow

# one epoch at a high rate: enough for the tiny model to learn (valid AUC ~0.7)
TRAIN = TrainConfig(epochs=1, batch_size=256, lr=1e-2, early_stopping_patience=None)
TARGET = Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1)
ARCH = {
    "embedding_dim": {"kind": "categorical", "choices": [8, 16]},
    "bottom_mlp": {"kind": "categorical", "choices": [[], [8]]},
    "top_mlp": {"kind": "categorical", "choices": [[16], [32]]},
}
INT8 = {"technique": "dynamic_int8", "optional": True, "params": {"op_types": ["MatMul", "Gemm"]}}
# Decodes fine (the table name is only checked against the model) and fails when applied.
BROKEN_HASHING = {
    "technique": "frequency_hashing",
    "optional": True,
    "params": {"tables": ["no_such_table"], "finetune_epochs": 0},
}


def _space(tmp_path: Path, policy: list[dict[str, Any]], name: str) -> SearchSpace:
    doc = {
        "version": 1,
        "family": "dlrm",
        "arch": ARCH,
        "arch_rules": {"bottom_mlp": {"append": "embedding_dim"}},
        "policy": policy,
        "budget": {"latency_ms": 1000.0, "batch_size": 64, "size_mb": 100.0},
    }
    file = tmp_path / f"{name}.yaml"
    file.write_text(yaml.safe_dump(doc))
    return load_search_space("dlrm", path=file)


@pytest.fixture(scope="module")
def ray_2_cpus() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SharedResources:
    setup = tiny_setup("dlrm")
    root = tmp_path_factory.mktemp("search")
    return SharedResources(
        dataset=setup.dataset,
        teacher=setup.trained,
        reference_valid_auc=auc(setup.dataset.valid.labels, predict(setup.trained, setup.dataset.valid)),
        target=TARGET,
        budget=Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0),
        work_dir=root / "work",
        cache_dir=root / "cache",
    )


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


def _settings(tmp_path: Path, **overrides: Any) -> SearchSettings:
    base: dict[str, Any] = {
        "searcher": "random",
        "num_trials": 6,
        "max_concurrent": 2,
        "cpus_per_trial": 1.0,
        "max_failures": 0,
        "storage_path": str(tmp_path / "tune"),
        "seed": 3,
    }
    return SearchSettings.from_dict({**base, **overrides})


def _search(
    space: SearchSpace, settings: SearchSettings, shared: SharedResources, store: Store, name: str
) -> tuple[str, SearchOutcome]:
    job = store.create_job({"name": name}, name=name)
    outcome = run_search(space, settings, shared, store=store, job_id=job.id, name=name, train_config=TRAIN)
    return job.id, outcome


def test_a_random_search_records_every_trial_completed_with_metrics(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [INT8], "random")
    job_id, outcome = _search(space, _settings(tmp_path, num_trials=4), shared, store, "random")

    assert len(outcome.trials) == 4
    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 4
    rows = store.list_trials(job_id)
    assert len(rows) == 4
    assert {r.trial_key for r in rows} == {t.trial_id for t in outcome.trials}
    for row in rows:
        assert row.status is TrialStatus.COMPLETED
        assert row.error is None
        assert row.attempts == 1
        assert row.finished_at is not None and row.seconds is not None and row.seconds > 0
        metrics = row.metrics
        assert metrics["stage"] == "final"
        assert 0.6 < metrics["valid_auc"] <= 1.0
        assert metrics["delta_auc"] == pytest.approx(metrics["valid_auc"] - shared.reference_valid_auc)
        assert metrics["latency_ms"] > 0 and metrics["size_bytes"] > 0
        assert metrics["feasible"] is True
        assert metrics["objective"] == pytest.approx(metrics["valid_auc"])
        assert "config" not in metrics and "hostname" not in metrics
        # the stored config is the decoded candidate, and it is the one that was trained
        assert row.config["family"] == "dlrm"
        assert row.config["arch"]["embedding_dim"] == row.config["sampled"]["arch.embedding_dim"]
        assert row.config["arch"]["bottom_mlp"][-1] == row.config["arch"]["embedding_dim"]
        int8_on = row.config["sampled"]["policy.0.enabled"]
        assert ("dynamic_int8" in metrics["techniques"]) is int8_on
        assert [s["technique"] for s in row.config["policy"]["steps"]] == (
            ["dynamic_int8"] if int8_on else []
        )
        assert row.config["train_config"]["epochs"] == 1
    # random search samples the space: more than one architecture was tried
    assert len({str(r.config["arch"]) for r in rows}) > 1
    assert store.job_progress(job_id).completed == 4


def test_a_tpe_search_with_asha_runs(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [INT8], "tpe")
    settings = _settings(tmp_path, searcher="tpe", num_trials=3, asha=True)
    job_id, outcome = _search(space, settings, shared, store, "tpe")

    assert len(outcome.trials) == 3
    rows = store.list_trials(job_id)
    assert len(rows) == 3
    for row in rows:
        # ASHA may stop a trial after its epoch; it is then STOPPED with the epoch's metrics
        assert row.status in (TrialStatus.COMPLETED, TrialStatus.STOPPED)
        assert row.status is finished_status(row.metrics)
        assert 0.5 < row.metrics["valid_auc"] <= 1.0
    assert any(r.status is TrialStatus.COMPLETED for r in rows)


def test_a_trial_that_raises_is_recorded_failed_and_the_others_complete(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [BROKEN_HASHING, INT8], "failing")
    job_id, outcome = _search(space, _settings(tmp_path, num_trials=4, seed=1), shared, store, "failing")

    rows = store.list_trials(job_id)
    assert len(rows) == 4
    failed = [r for r in rows if r.status is TrialStatus.FAILED]
    completed = [r for r in rows if r.status is TrialStatus.COMPLETED]
    assert failed and completed and len(failed) + len(completed) == 4
    for row in failed:
        assert row.config["sampled"]["policy.0.enabled"] is True
        assert row.error is not None and "no_such_table" in row.error
        assert "frequency_hashing.tables" in row.error
    for row in completed:
        assert row.config["sampled"]["policy.0.enabled"] is False
        assert row.error is None and row.metrics["stage"] == "final"
    assert {t.trial_id for t in outcome.by_status(TrialStatus.FAILED)} == {r.trial_key for r in failed}
    assert all("no_such_table" in (t.error or "") for t in outcome.by_status(TrialStatus.FAILED))
    assert any("failed" in e.message for e in store.list_events(job_id))


def test_an_nsga2_search_sees_only_final_reports(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [INT8], "nsga2")
    job_id, outcome = _search(
        space, _settings(tmp_path, searcher="nsga2", num_trials=2), shared, store, "nsga2"
    )

    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 2
    rows = store.list_trials(job_id)
    assert [r.status for r in rows] == [TrialStatus.COMPLETED] * 2
    for row in rows:
        # the three objectives were all reported, in the one (final) report the searcher saw
        assert row.metrics["training_iteration"] == 1
        assert row.metrics["valid_auc"] > 0.6 and row.metrics["latency_ms"] > 0 and row.metrics["size_mb"] > 0


def test_an_evolution_search_runs_under_tune(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [INT8], "evo")
    job_id, outcome = _search(
        space, _settings(tmp_path, searcher="evolution", num_trials=2), shared, store, "evo"
    )

    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 2
    assert [r.status for r in store.list_trials(job_id)] == [TrialStatus.COMPLETED] * 2
    # Tune saved the searcher's state with the run (what Tuner.restore reads back)
    assert list(Path(outcome.experiment_path).glob("searcher-state-*.pkl"))


def test_a_resumed_run_records_no_trial_twice_and_refuses_another_job(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    space = _space(tmp_path, [INT8], "resume")
    settings = _settings(tmp_path, num_trials=2)
    job_id, _ = _search(space, settings, shared, store, "resume")
    before = {r.trial_key: r for r in store.list_trials(job_id)}
    assert len(before) == 2

    again = run_search(space, settings, shared, store=store, job_id=job_id, name="resume", train_config=TRAIN)

    assert sorted(t.trial_id for t in again.trials) == sorted(before)
    after = store.list_trials(job_id)
    assert len(after) == 2
    for row in after:  # restored finished trials are neither rerun nor recorded again
        assert row.attempts == 1 and row.finished_at == before[row.trial_key].finished_at
    assert any("resuming" in e.message for e in store.list_events(job_id))

    other = store.create_job({"name": "other"}, name="other")
    with pytest.raises(AutocompressError, match=f"name: the Tune run .* belongs to job '{job_id}'"):
        run_search(space, settings, shared, store=store, job_id=other.id, name="resume", train_config=TRAIN)
    assert store.list_trials(other.id) == []


def test_a_hopeless_latency_budget_skips_candidates_on_their_prediction_untrained(
    ray_2_cpus: None, shared: SharedResources, store: Store, tmp_path: Path
) -> None:
    """With the latency model on, a budget no candidate can meet: every trial ends SKIPPED with its
    prediction, none trains, none fails, none is a candidate; the model is fitted once."""
    from dataclasses import replace

    from autocompress.search.pareto import finished_candidates

    space = _space(tmp_path, [INT8], "skipping")
    hopeless = replace(shared, budget=Budget(latency_ms=1e-4, batch_size=64, size_mb=100.0))
    options = {"enabled": True, "calibration_candidates": 8, "cache_dir": str(tmp_path / "models")}
    settings = _settings(tmp_path, num_trials=4, latency_model=options)
    job_id, outcome = _search(space, settings, hopeless, store, "skipping")

    assert [t.status for t in outcome.trials] == [TrialStatus.SKIPPED] * 4
    rows = store.list_trials(job_id)
    assert [r.status for r in rows] == [TrialStatus.SKIPPED] * 4
    for row in rows:
        metrics = row.metrics
        assert metrics["stage"] == "skipped" and metrics["training_iteration"] == 1
        assert metrics["predicted_latency_ms"] == metrics["predicted_p99_ms_b64"] > 1e-4 * 1.25
        assert "predicted p99 at batch 64" in metrics["skip_reason"]
        assert metrics["objective"] < 0.5  # chance level, less the predicted overrun
        # never trained, built nor measured: no epoch, no ONNX file, no measured latency
        assert not {"valid_auc", "epochs_trained", "onnx_path", "latency_ms", "feasible"} & set(metrics)
        assert row.error is None and row.config["arch"]["embedding_dim"] in (8, 16)
    progress = store.job_progress(job_id)
    assert (progress.skipped, progress.failed, progress.completed, progress.done) == (4, 0, 0, 4)
    assert finished_candidates(rows) == []
    events = [e.message for e in store.list_events(job_id)]
    assert any("latency model: fitted" in e for e in events)
    assert any("4 of 4 trials skipped" in e for e in events)
    assert sum(" skipped: predicted" in e for e in events) == 4
    assert len(list((tmp_path / "models").glob("latency-model-dlrm-*.json"))) == 1


def test_objective_subtracts_the_distance_of_an_infeasible_candidate() -> None:
    assert objective({"stage": "train", "valid_auc": 0.7}) == 0.7
    assert (
        objective({"stage": "final", "valid_auc": 0.7, "feasible": True, "distance_to_feasible": 0.0}) == 0.7
    )
    infeasible = {"stage": "final", "valid_auc": 0.7, "feasible": False, "distance_to_feasible": 0.25}
    assert objective(infeasible) == pytest.approx(0.45)


def test_search_settings_refuse_bad_values_by_field() -> None:
    with pytest.raises(AutocompressError, match=r"searcher.*'random', 'tpe', 'nsga2' or 'evolution'"):
        SearchSettings.from_dict({"searcher": "grid"})
    with pytest.raises(AutocompressError, match="asha needs a single-objective searcher"):
        SearchSettings.from_dict({"searcher": "nsga2", "asha": True})
    with pytest.raises(AutocompressError, match="num_trials"):
        SearchSettings.from_dict({"num_trials": 0})
    with pytest.raises(AutocompressError, match="cpus_per_trial"):
        SearchSettings.from_dict({"cpus_per_trial": 0})
    with pytest.raises(AutocompressError, match="unknown field"):
        SearchSettings.from_dict({"trials": 3})
    assert SearchSettings.from_dict({"cpus_per_trial": 0.5, "gpus_per_trial": 0.25}).cpus_per_trial == 0.5


def test_regularized_evolution_mutates_the_best_of_a_sample(tmp_path: Path) -> None:
    from autocompress.search.tune_space import to_tune

    space = _space(tmp_path, [INT8], "evolution")
    searcher = make_searcher(SearchSettings(searcher="evolution", seed=5))
    assert searcher.set_search_properties(None, None, to_tune(space))
    # the first population_size trials are random samples of the space, each one decodes
    members = {f"t{i}": searcher.suggest(f"t{i}") for i in range(searcher.population_size)}
    for config in members.values():
        decode(space, config)
    scores = {tid: 0.5 + i / 100 for i, tid in enumerate(members)}
    for tid, score in scores.items():
        searcher.on_trial_complete(tid, {"objective": score})
    searcher.on_trial_complete("unknown", {"objective": 1.0})  # not suggested: ignored
    for i in range(5):
        child = searcher.suggest(f"c{i}")
        decode(space, child)
        # a child is a member with exactly one searched dimension resampled to a new value
        diffs = [sum(child[k] != parent[k] for k in child) for parent in members.values()]
        assert 1 in diffs
    # a failed trial does not join the population; a finished child does, the oldest leaves
    searcher.on_trial_complete("c0", {"objective": 0.9}, error=True)
    searcher.on_trial_complete("c1", {"objective": 0.9})
    assert len(searcher._population) == searcher.population_size
    assert searcher._population[-1][1] == 0.9 and searcher._population[0][1] == scores["t1"]


def test_the_stored_config_of_an_undecodable_sample_keeps_the_sample(tmp_path: Path) -> None:
    space = _space(tmp_path, [INT8], "decode")
    config = trial_config(space, {"arch.embedding_dim": 12}, TRAIN, False)
    assert config == {"sampled": {"arch.embedding_dim": 12}}


def test_model_based_searchers_start_using_results_within_a_small_budget() -> None:
    from autocompress.engine.tuner import warmup_trials

    assert [warmup_trials(n) for n in (1, 6, 12, 30, 100)] == [2, 2, 4, 10, 10]
    tpe = make_searcher(SearchSettings(searcher="tpe", num_trials=6))
    assert tpe._sampler._n_startup_trials == 2  # Optuna's default 10 would make 6 trials random search
    nsga2 = make_searcher(SearchSettings(searcher="nsga2", num_trials=12))
    assert nsga2._sampler._population_size == 4
    evolution = make_searcher(SearchSettings(searcher="evolution", num_trials=6))
    assert (evolution.population_size, evolution.sample_size) == (2, 2)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_every_searcher_pickles_and_searches_on_after_unpickling(name: str) -> None:
    import pickle

    from ray import tune
    from ray.tune.search import Searcher as TuneSearcher

    searcher = make_searcher(SearchSettings(searcher=name, num_trials=6))
    restored = pickle.loads(pickle.dumps(searcher))  # what Tuner does with it before any trial
    assert type(restored) is type(searcher)
    if not isinstance(searcher, TuneSearcher):
        return  # the variant generator is fed by Tune itself; it only has to pickle
    space = {"embedding_dim": tune.choice([8, 16]), "dropout": tune.uniform(0.0, 0.5)}
    searcher.set_search_properties(None, None, space)
    first = searcher.suggest("t0")
    # mid-search, as in Tune's experiment checkpoint: the restored searcher goes on suggesting
    restored = pickle.loads(pickle.dumps(searcher))
    second = restored.suggest("t1")
    assert first is not None and second is not None
    assert set(first) == set(second) == {"embedding_dim", "dropout"}
    assert second["embedding_dim"] in (8, 16) and 0.0 <= second["dropout"] <= 0.5
