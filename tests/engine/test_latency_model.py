"""The latency model: its analytic inventory against built candidates, its fit, its cache, and the skip."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autocompress.data.table import Dataset
from autocompress.engine.latency_model import (
    FEATURES,
    LatencyModel,
    TableCounts,
    calibrate,
    calibration_target,
    candidate_features,
    candidate_inventory,
    measure_candidate,
    nnls,
    sample_candidates,
    structural_policy,
)
from autocompress.engine.recording import finished_status, trial_metrics
from autocompress.engine.trial import SharedResources, TrialSpec, run_trial
from autocompress.engine.tuner import SKIPPED_AUC, objective, searcher_stand_ins
from autocompress.errors import AutocompressError
from autocompress.search.budget import Budget
from autocompress.search.pareto import finished_candidates
from autocompress.search.space import load_search_space
from autocompress.spec import SearchSettings, Target
from autocompress.store import Store, TrialStatus
from autocompress.techniques import Policy
from autocompress.train import TrainConfig

# short timings: the test measures 36 candidates (p50 of 60 runs is steady on a shared machine)
TARGET = Target(batch_sizes=[256], warmup=3, repetitions=60, max_seconds=0.5, rounds=3)
BUDGET = Budget(latency_ms=1.0, batch_size=256, percentile=50)
# The tolerance on a shared 2-core CI machine, where the other test worker's load changes between
# the 24 fitted and the 12 held-out measurements (a suite run read 0.27 on 2026-12-07); on the
# quiet node of benchmarks/latency_model.py the median error at the budget's batch is ~0.05-0.10.
MEDIAN_TOLERANCE = 0.35
SMALL_ARCH = {"embedding_dim": 8, "bottom_mlp": [8], "top_mlp": [16]}


def _model(family: str, dataset: Dataset, intercept_ms: float, batch_size: int = 64) -> LatencyModel:
    """A model that predicts ``intercept_ms`` for every candidate (no measurement needed)."""
    only_intercept = tuple(intercept_ms if name == "intercept" else 0.0 for name in FEATURES)
    return LatencyModel(
        family=family,
        batch_size=batch_size,
        coefficients={p: only_intercept for p in (50, 95, 99)},
        schema=dataset.schema,
    )


def test_the_inventory_is_the_graph_that_gets_built(tiny_dataset: Dataset) -> None:
    """Every modelled technique, on sampled candidates: the analytic Linears, quantized and int8
    Gathers and int8 matmuls are those of the candidate built, exported and rewritten for real."""
    import collections

    import onnx
    from torch import nn

    from autocompress.models import build
    from autocompress.techniques import TechniqueContext, apply_policy

    counts = TableCounts.from_dataset(tiny_dataset)
    checked = 0
    for family, preset in [
        ("dlrm", None),
        ("dlrm", "accuracy"),
        ("dlrm", "per_table"),  # per-table widths, buckets and bits, per-group pruning
        ("din", "small"),
        ("din", None),
    ]:
        space = load_search_space(family, preset)
        for arch, policy in sample_candidates(space, 3, seed=11):
            structural = structural_policy(policy)
            inv = candidate_inventory(family, tiny_dataset.schema, arch, structural, counts)
            if not inv.exact:
                continue  # a low rank chosen by energy: decided by the weights
            with tempfile.TemporaryDirectory() as tmp:
                ctx = TechniqueContext(
                    schema=tiny_dataset.schema, work_dir=Path(tmp), train=tiny_dataset.train, valid=None
                )
                built = apply_policy(build(family, tiny_dataset.schema, arch, seed=0), structural, ctx)
                graph = onnx.load(str(built.onnx_path)).graph
            linears = {
                name: (m.in_features, m.out_features)
                for name, m in built.model.named_modules()
                if isinstance(m, nn.Linear)
            }
            assert linears == {n: (x.in_features, x.out_features) for n, x in inv.linears.items()}
            ops = collections.Counter(node.op_type for node in graph.node)
            storage = [s for lookup in inv.lookups for s in inv.tables[lookup.table].storage]
            assert ops["GatherBlockQuantized"] == sum(s.startswith("block") for s in storage)
            assert ops["DequantizeLinear"] == storage.count("int8")
            tables = list(inv.tables)
            calls = [  # a projection runs once per lookup of its table; after a mean pooling, in float
                sum(lk.table == tables[int(x.name.split(".")[2])] and not lk.pooled for lk in inv.lookups)
                if x.name.startswith("embeddings.projections.")
                else 1
                for x in inv.linears.values()
                if x.int8
            ]
            assert ops["MatMulInteger"] == sum(calls)
            checked += 1
    assert checked >= 11


def test_structural_policy_keeps_the_structure_and_drops_the_training() -> None:
    policy = Policy.from_dict(
        {
            "steps": [
                {"technique": "distillation"},
                {"technique": "structured_pruning", "sparse_ratio": 0.6, "importance": "taylor"},
                {"technique": "frequency_hashing", "hash_buckets": 64},
                {"technique": "dynamic_int8"},
            ]
        }
    )
    steps = structural_policy(policy).steps
    assert [s.name for s in steps] == ["structured_pruning", "frequency_hashing", "dynamic_int8"]
    pruning, hashing, _ = steps
    assert (pruning.sparse_ratio, pruning.importance, pruning.finetune_epochs) == (0.6, "l1", 0)  # type: ignore[attr-defined]
    assert (hashing.hash_buckets, hashing.finetune_epochs) == (64, 0)  # type: ignore[attr-defined]


def test_nnls_recovers_non_negative_coefficients() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=(40, 5))
    truth = np.array([0.5, 0.0, 2.0, 0.0, 1.0])
    assert np.allclose(nnls(a, a @ truth), truth, atol=1e-8)
    # a negative least-squares answer is clipped to the boundary, the rest refitted
    b = a @ np.array([1.0, -1.0, 0.0, 0.0, 0.0])
    x = nnls(a, b)
    assert (x >= 0).all() and x[1] == 0.0


def test_the_model_predicts_candidates_it_did_not_see(tiny_dataset: Dataset, tmp_path: Path) -> None:
    """Fitted on 24 measured candidates of DLRM's space, within MEDIAN_TOLERANCE on 12 others; cached."""
    space = load_search_space("dlrm")
    latency_cache = tmp_path / "latency-cache"
    model, cached = calibrate(
        space,
        tiny_dataset,
        TARGET,
        BUDGET,
        cache_dir=tmp_path / "models",
        latency_cache_dir=latency_cache,
        candidates=24,
        seed=1,
    )
    assert not cached and 12 <= model.candidates <= 24 and model.batch_size == 256
    assert all(min(c) >= 0 for c in model.coefficients.values())

    def structure(arch: dict[str, Any], policy: Policy) -> str:
        return str([arch, structural_policy(policy).to_dict()])

    seen = {structure(*c) for c in sample_candidates(space, 24, seed=1)}
    held_out = [c for c in sample_candidates(space, 18, seed=2) if structure(*c) not in seen][:12]
    errors = []
    for arch, policy in held_out:
        row = measure_candidate(
            "dlrm", arch, policy, tiny_dataset, calibration_target(TARGET, 256), latency_cache
        )
        predicted = model.predict(arch, policy)
        assert 0 < predicted.p50_ms <= predicted.p95_ms <= predicted.p99_ms
        errors.append(abs(predicted.p50_ms - row["p50_ms"]) / row["p50_ms"])
    assert len(errors) == 12
    assert float(np.median(errors)) <= MEDIAN_TOLERANCE, errors

    # fitted once: the second call reads the cache and measures nothing
    measured = sorted(latency_cache.glob("*.json"))
    again, cached = calibrate(
        space,
        tiny_dataset,
        TARGET,
        BUDGET,
        cache_dir=tmp_path / "models",
        latency_cache_dir=latency_cache,
        candidates=24,
        seed=1,
    )
    assert cached and again == model
    assert sorted(latency_cache.glob("*.json")) == measured
    assert len(list((tmp_path / "models").glob("latency-model-dlrm-*.json"))) == 1


def test_a_model_round_trips_through_json_and_loads_strictly(tiny_dataset: Dataset) -> None:
    model = replace(_model("dlrm", tiny_dataset, 2.0), counts=TableCounts.from_dataset(tiny_dataset))
    assert LatencyModel.from_dict(model.to_dict()) == model
    with pytest.raises(AutocompressError, match="version 0 is not supported"):
        LatencyModel.from_dict({**model.to_dict(), "version": 0})
    with pytest.raises(AutocompressError, match="fitted on other features"):
        LatencyModel.from_dict({**model.to_dict(), "features": ["intercept"]})


def test_what_the_model_cannot_describe_is_refused_by_name(tiny_dataset: Dataset) -> None:
    static = Policy.from_dict({"steps": [{"technique": "static_int8"}]})
    with pytest.raises(AutocompressError, match="technique 'static_int8' is not modelled"):
        _model("dlrm", tiny_dataset, 1.0).predict(SMALL_ARCH, static)
    with pytest.raises(
        AutocompressError, match="family 'deepfm' is not modelled; modelled: \\['dlrm', 'din'\\]"
    ):
        candidate_inventory("deepfm", tiny_dataset.schema, {"embedding_dim": 8}, Policy())
    # a low rank kept by energy depends on the trained weights: predicted, never exact
    energy = Policy.from_dict({"steps": [{"technique": "low_rank", "energy": 0.9}]})
    assert not _model("dlrm", tiny_dataset, 1.0).predict(SMALL_ARCH, energy).exact
    features = candidate_features(candidate_inventory("dlrm", tiny_dataset.schema, SMALL_ARCH, Policy()))
    assert list(features) == list(FEATURES) and features["intercept"] == 1.0


def _shared(dataset: Dataset, root: Path, model: LatencyModel | None, latency_ms: float) -> SharedResources:
    return SharedResources(
        dataset=dataset,
        teacher=None,
        reference_valid_auc=0.5,
        target=Target(batch_sizes=[64], warmup=2, repetitions=10, max_seconds=1),
        budget=Budget(latency_ms=latency_ms, batch_size=64, size_mb=100.0),
        work_dir=root / "work",
        cache_dir=root / "cache",
        latency_model=model,
        skip_margin=0.25,
    )


def test_a_candidate_predicted_over_the_budget_is_skipped_untrained(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    spec = TrialSpec(
        trial_id="hopeless",
        family="dlrm",
        arch=SMALL_ARCH,
        train_config=TrainConfig(epochs=1, batch_size=512),
    )
    reports: list[dict[str, Any]] = []
    # predicted 10 ms against a 5 ms budget: over 5 * 1.25
    shared = _shared(tiny_dataset, tmp_path, _model("dlrm", tiny_dataset, 10.0), latency_ms=5.0)
    result = run_trial(spec, shared, reports.append)

    assert result.status == "skipped" and result.onnx_path is None and result.history == []
    metrics = result.metrics
    assert metrics["stage"] == "skipped" and metrics["status"] == "skipped"
    assert metrics["predicted_p99_ms_b64"] == pytest.approx(10.0)
    assert metrics["predicted_latency_ms"] == pytest.approx(10.0)
    assert metrics["predicted_distance_to_feasible"] == pytest.approx(1.0)
    assert "10 ms > 6.25 ms" in metrics["skip_reason"]
    assert not {"valid_auc", "latency_ms", "seconds_train", "epochs_trained"} & set(metrics)
    assert reports == [metrics]
    assert not (tmp_path / "work" / "hopeless").exists()  # nothing was built
    # what the store and the searchers make of it
    assert finished_status(metrics) is TrialStatus.SKIPPED
    assert objective(metrics) == pytest.approx(SKIPPED_AUC - 1.0)
    stand_ins = searcher_stand_ins(metrics, shared)
    assert stand_ins["valid_auc"] == SKIPPED_AUC and stand_ins["latency_ms"] == pytest.approx(10.0)
    assert trial_metrics({**metrics, **stand_ins, "pid": 1}) == metrics


def test_a_candidate_within_the_margin_is_built_and_measured_for_real(
    tiny_dataset: Dataset, tmp_path: Path
) -> None:
    spec = TrialSpec(
        trial_id="close", family="dlrm", arch=SMALL_ARCH, train_config=TrainConfig(epochs=1, batch_size=512)
    )
    # predicted 6 ms against a 5 ms budget: within 5 * 1.25, so trained and measured
    shared = _shared(tiny_dataset, tmp_path, _model("dlrm", tiny_dataset, 6.0), latency_ms=5.0)
    result = run_trial(spec, shared)
    assert result.status == "completed" and result.onnx_path is not None
    metrics = result.metrics
    assert metrics["predicted_latency_ms"] == pytest.approx(6.0) and metrics["predicted_latency_exact"]
    assert metrics["latency_ms"] > 0 and metrics["latency_ms"] != metrics["predicted_latency_ms"]
    assert metrics["status"] == "completed" and "feasible" in metrics


def test_skipped_trials_are_done_neither_failed_nor_candidates(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        job = store.create_job({"name": "skips"}, name="skips")
        store.record_trial(job.id, "t1", TrialStatus.RUNNING)
        store.record_trial(
            job.id, "t1", TrialStatus.SKIPPED, metrics={"stage": "skipped", "predicted_latency_ms": 9.0}
        )
        final = {"stage": "final", "valid_auc": 0.7, "latency_ms": 1.0, "size_mb": 1.0, "feasible": True}
        store.record_trial(job.id, "t2", TrialStatus.COMPLETED, metrics=final)
        progress = store.job_progress(job.id)
        assert (progress.skipped, progress.completed, progress.failed) == (1, 1, 0)
        assert progress.done == 2 and progress.total == 2
        skipped = store.list_trials(job.id, TrialStatus.SKIPPED)
        assert [t.trial_key for t in skipped] == ["t1"] and skipped[0].finished_at is not None
        assert skipped[0].metrics["predicted_latency_ms"] == 9.0
        assert [c.trial_id for c in finished_candidates(store.list_trials(job.id))] == ["t2"]
    assert TrialStatus.SKIPPED.terminal


def test_the_latency_model_setting_is_off_by_default_and_strict() -> None:
    settings = SearchSettings()
    assert not settings.latency_model.enabled and settings.latency_model.skip_margin == 0.25
    on = SearchSettings.from_dict({"latency_model": {"enabled": True, "calibration_candidates": 16}})
    assert on.latency_model.enabled and SearchSettings.from_dict(on.to_dict()) == on
    with pytest.raises(AutocompressError, match=r"latency_model\.calibration_candidates"):
        SearchSettings.from_dict({"latency_model": {"calibration_candidates": 2}})
    with pytest.raises(AutocompressError, match=r"latency_model\.skip_margin"):
        SearchSettings.from_dict({"latency_model": {"skip_margin": -0.1}})
    with pytest.raises(AutocompressError, match=r"latency_model\.margin: unknown field"):
        SearchSettings.from_dict({"latency_model": {"margin": 0.1}})
