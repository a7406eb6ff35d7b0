"""What the dashboard's own JSON routes answer: the jobs list with progress and best so far, and the
model registry with each endpoint alias and its promote / rollback history.

Everything about one job comes from the job API's views (``serve_app.api.views``), so the
dashboard and ``GET /v1/jobs/{id}`` cannot disagree; this module only gathers what the API has no
single route for.
"""

from __future__ import annotations

from typing import Any

from autocompress.store import DeploymentRecord, ModelRecord, Store
from serve_app.api.views import job_view, model_summary

__all__ = ["alias_history", "jobs_overview", "registry_overview"]

_JOB_FIELDS = (
    "id",
    "name",
    "status",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "best",
    "budget_resolved",
)
_PAGE = 1000  # the store's largest page


def jobs_overview(store: Store, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Jobs, newest first: state, progress, best so far and the resolved budget it is held against."""
    rows = []
    for job in store.list_jobs(limit=limit, offset=offset):
        view = job_view(store, job)
        budget = (job.result or {}).get("budget") or {}
        rows.append({**{k: view[k] for k in _JOB_FIELDS}, "budget_text": budget.get("text")})
    return {"jobs": rows, "total": store.count_jobs(), "limit": limit, "offset": offset}


def _all_models(store: Store) -> list[ModelRecord]:
    models: list[ModelRecord] = []
    while True:
        page = store.list_models(limit=_PAGE, offset=len(models))
        models.extend(page)
        if len(page) < _PAGE:
            return models


def alias_history(records: list[DeploymentRecord]) -> list[dict[str, Any]]:
    """An alias's history (``Store.deployment_history``, oldest first) as events in time order.

    Every deployment is a ``deploy`` (the first) or a ``promote`` to its model; every rolled-back
    one adds a ``rollback`` from its model to the one the store put back: the latest earlier
    deployment not yet rolled back at that time.
    """
    events: list[dict[str, Any]] = []
    for number, record in enumerate(records):
        events.append(
            {
                "time": record.created_at,
                "action": "promote" if number else "deploy",
                "model_id": record.model_id,
            }
        )
        if record.rolled_back_at is not None:
            when = record.rolled_back_at
            back_to = [r for r in records[:number] if r.rolled_back_at is None or r.rolled_back_at > when]
            events.append(
                {
                    "time": when,
                    "action": "rollback",
                    "model_id": back_to[-1].model_id if back_to else None,
                    "from_model_id": record.model_id,
                }
            )
    events.sort(key=lambda e: e["time"])
    return [{**e, "time": e["time"].isoformat()} for e in events]


def registry_overview(store: Store) -> dict[str, Any]:
    """Registered models with their name and version and the aliases serving them, newest first;
    every endpoint alias with the model it serves now and its history."""
    models = sorted(_all_models(store), key=lambda m: (m.created_at, m.version, m.id))
    rows = {model.id: {**model_summary(model), "aliases": []} for model in models}
    endpoints = []
    for alias in store.list_aliases():
        records = store.deployment_history(alias)
        active = next((r for r in records if r.active), None)
        if active is not None and active.model_id in rows:
            rows[active.model_id]["aliases"].append(alias)
        endpoints.append(
            {
                "alias": alias,
                "model_id": active.model_id if active is not None else None,
                "history": alias_history(records),
            }
        )
    return {"models": list(reversed(rows.values())), "endpoints": endpoints}
