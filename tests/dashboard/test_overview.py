"""The dashboard's own JSON, built from a real SQLite store without HTTP: the jobs list with progress
and best so far, model versions, and each alias's promote / rollback history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autocompress.store import DeploymentRecord, Store
from serve_app.api.dashboard import alias_history, jobs_overview, registry_overview
from tests.dashboard.conftest import BUDGET, Seeded


def test_the_jobs_overview_has_progress_best_and_budget_of_every_job(seeded_db: tuple[str, Seeded]) -> None:
    url, seeded = seeded_db
    with Store(url) as store:
        overview = jobs_overview(store)
    assert overview["total"] == 3
    jobs = {j["id"]: j for j in overview["jobs"]}
    assert [j["name"] for j in overview["jobs"]] == ["tower-pending", "ranker-small", "ranker-realtime"]
    running = jobs[seeded.running]
    assert running["status"] == "RUNNING" and running["started_at"] is not None
    assert running["progress"]["done"] == 3 and running["progress"]["running"] == 1
    # the best so far is the best AUC within the budget: trial 1 has more AUC but is over it
    assert running["best"]["trial_key"] == "trial_00000" and running["best"]["feasible"] is True
    assert running["budget_resolved"] == BUDGET["resolved"]
    assert running["budget_text"] == BUDGET["text"]
    pending = jobs[seeded.pending]
    assert (
        pending["best"] is None and pending["budget_resolved"] is None and pending["progress"]["total"] == 0
    )


def test_the_registry_numbers_versions_and_says_what_each_alias_serves(seeded_db: tuple[str, Seeded]) -> None:
    url, seeded = seeded_db
    first, second = seeded.model_ids
    with Store(url) as store:
        registry = registry_overview(store)
    models = {m["id"]: m for m in registry["models"]}
    assert [m["id"] for m in registry["models"]] == [second, first]  # newest first
    assert models[first]["version"] == 1 and models[second]["version"] == 2
    assert models[first]["aliases"] == ["ranking-prod"]  # rolled back to the first version
    assert models[second]["aliases"] == ["ranking-canary"]
    endpoints = {e["alias"]: e for e in registry["endpoints"]}
    assert list(endpoints) == ["ranking-canary", "ranking-prod"]
    assert endpoints["ranking-prod"]["model_id"] == first
    history = endpoints["ranking-prod"]["history"]
    assert [(e["action"], e["model_id"]) for e in history] == [
        ("deploy", first),
        ("promote", second),
        ("rollback", first),
    ]
    assert history[-1]["from_model_id"] == second


def test_a_rollback_goes_back_past_deployments_rolled_back_before_it() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(minutes: int) -> datetime:
        return t0 + timedelta(minutes=minutes)

    # a -> b -> c, rollback (c -> b), rollback (b -> a): the store's own walk, replayed
    records = [
        DeploymentRecord(1, "prod", "a", True, at(0), None, None),
        DeploymentRecord(2, "prod", "b", False, at(1), at(4), at(4)),
        DeploymentRecord(3, "prod", "c", False, at(2), at(3), at(3)),
    ]
    events = [(e["action"], e.get("from_model_id"), e["model_id"]) for e in alias_history(records)]
    assert events == [
        ("deploy", None, "a"),
        ("promote", None, "b"),
        ("promote", None, "c"),
        ("rollback", "c", "b"),
        ("rollback", "b", "a"),
    ]
