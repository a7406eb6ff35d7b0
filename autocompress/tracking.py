"""Optional experiment tracking in MLflow: one parent run per job, one nested run per trial.

A job asks for it with ``tracking: {mlflow_uri: ..., experiment: ...}`` (``TrackingSettings``) and
the ``mlflow`` extra (``mlflow-skinny``: the client, no server). While the search runs, the Tune
callback ``autocompress.engine.tracking.MlflowRecorder`` hands each trial to ``MlflowTracker``: its
decoded arch, policy and training as parameters, every per-epoch report as metrics stepped by epoch,
the final figures (AUC, latency, size, feasibility) and its status. At the job's end
``log_job_result`` puts the test comparison, the report and the winner as an MLflow ONNX model
(``winner_model/``, loadable with ``mlflow.onnx.load_model``) on the job's run.

Runs are found again by their tags (``autocompress.job_id``, ``autocompress.trial_id``), so a
resumed search logs into the runs it started. Tracking never fails a job: the callers log what
MLflow raised and go on. ``mlflow`` is imported only when a job tracks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import numbers
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from autocompress.spec import SpecModel

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autocompress.search.pareto import Selection

__all__ = [
    "MLFLOW_EXTRA_HINT",
    "MlflowTracker",
    "TrackingSettings",
    "end_job_run",
    "flat_params",
    "log_job_result",
    "mlflow_installed",
]

logger = logging.getLogger(__name__)

MLFLOW_EXTRA_HINT = "install the mlflow extra: pip install 'autocompress[mlflow]'"
DEFAULT_EXPERIMENT = "autocompress"
# tracking URI schemes MLflow's client opens (a database scheme may name a driver: postgresql+psycopg)
TRACKING_URI_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# MLflow's limits (mlflow.utils.validation): longer values are cut, batches split
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
MAX_KEY_CHARS = 250
BATCH_SIZE = 100

JOB_ID_TAG = "autocompress.job_id"
TRIAL_ID_TAG = "autocompress.trial_id"
ROLE_TAG = "autocompress.role"  # "job" on the parent run, "trial" on each nested one
STATUS_TAG = "autocompress.status"  # the store's status of the trial (COMPLETED, SKIPPED, ...)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
# the store's end of a trial -> MLflow's run status
RUN_STATUS = {"COMPLETED": "FINISHED", "SKIPPED": "FINISHED", "STOPPED": "KILLED", "FAILED": "FAILED"}
# a report's keys that are not figures: the step, ids, or a stage name
NOT_LOGGED = frozenset({"trial_id", "epoch", "training_iteration", "stage"})


def mlflow_installed() -> bool:
    """Whether the ``mlflow`` extra is installed (found without importing it: the import takes seconds)."""
    return importlib.util.find_spec("mlflow") is not None


class TrackingSettings(SpecModel):
    """Where a job logs its search in MLflow: the tracking URI, the experiment, where artifacts go.

    ``mlflow_uri`` is any tracking URI MLflow's client opens: a local SQLite file
    (``sqlite:///runs/mlflow.db``), a database, or a tracking server (``http://mlflow:5000``).
    MLflow 3 opens a plain folder (``./mlruns``) only with ``MLFLOW_ALLOW_FILE_STORE=true`` set.
    ``artifact_location`` is where a new experiment keeps its artifacts (models, reports); by default
    the server decides, and beside a SQLite file it is the folder ``mlartifacts`` next to it.
    Credentials come from the environment (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, the
    database's own), never the URI: the spec is stored with the job and shown back.
    """

    mlflow_uri: str = Field(min_length=1, max_length=2048)
    experiment: str = Field(default=DEFAULT_EXPERIMENT, min_length=1, max_length=256)
    artifact_location: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("mlflow_uri")
    @classmethod
    def _known_uri_and_mlflow_installed(cls, value: str) -> str:
        _check_uri(value)
        if not mlflow_installed():
            raise ValueError(f"MLflow tracking needs mlflow: {MLFLOW_EXTRA_HINT}")
        return value

    @field_validator("artifact_location")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None:
            _check_no_password(value)
        return value

    def default_artifact_location(self) -> str | None:
        """``artifact_location``, else the folder ``mlartifacts`` beside a SQLite file, else None."""
        if self.artifact_location is not None or not self.mlflow_uri.startswith("sqlite:///"):
            return self.artifact_location
        database = Path(self.mlflow_uri.removeprefix("sqlite:///").split("?", 1)[0])
        if str(database) in ("", ":memory:"):
            return None
        return (database.expanduser().resolve().parent / "mlartifacts").as_uri()


def _check_uri(value: str) -> None:
    match = _URI_SCHEME.match(value)
    if match is None:
        return  # a local folder
    scheme = match.group(1).lower().split("+", 1)[0]
    if scheme not in TRACKING_URI_SCHEMES:
        raise ValueError(
            f"URI scheme {match.group(1)!r} is not a tracking URI MLflow opens; allowed schemes: "
            f"{list(TRACKING_URI_SCHEMES)}, or a local folder"
        )
    _check_no_password(value)


def _check_no_password(value: str) -> None:
    from urllib.parse import urlsplit

    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password is not None:
        raise ValueError(
            "credentials do not belong in the URI (the spec is stored and shown); give them through "
            "the environment, e.g. MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )


def _key(name: str) -> str:
    """``name`` as an MLflow key: letters, digits, ``_ - .`` only, at most 250 characters."""
    key = re.sub(r"[^\w.\-]", "_", name)[:MAX_KEY_CHARS]
    return "_" + key[1:] if key.startswith(".") or not key else key


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, lists and scalars as JSON text.

    A policy's steps are keyed by technique (``policy.dynamic_int8.per_channel``) rather than by
    position, with ``policy.techniques`` naming them in order, so runs compare by technique in
    MLflow's UI. Schema ``version`` fields are left out: they are the same in every run.
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        if key == "version":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flat_params(value, f"{name}."))
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(step, Mapping) and "technique" in step for step in value)
        ):
            params[f"{prefix}techniques"] = ",".join(str(step["technique"]) for step in value)
            seen: dict[str, int] = {}
            for step in value:
                technique = str(step["technique"])
                seen[technique] = seen.get(technique, 0) + 1
                label = technique if seen[technique] == 1 else f"{technique}_{seen[technique]}"
                fields = {k: v for k, v in step.items() if k != "technique"}
                params.update(flat_params(fields, f"{prefix}{label}."))
        else:
            params[name] = _param_value(value)
    return params


def _metric_value(value: Any) -> float | None:
    """A report's value as an MLflow metric (a bool as 0 / 1); None when it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _tag_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        text = "; ".join(str(v) for v in value)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_TAG_CHARS else "..." + text[-(MAX_TAG_CHARS - 3) :]


def _batches(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), BATCH_SIZE):
        yield items[start : start + BATCH_SIZE]


class MlflowTracker:
    """Logs one job's search into MLflow through ``MlflowClient`` (no global active run).

    Life cycle: ``job_run_id`` finds or creates the job's run (tagged ``autocompress.role=job``),
    created with the job's spec as flattened parameters and ``job_spec.json``; ``start_trial``
    finds or creates a trial's run nested under it, with its parameters; ``log_result`` logs one
    report (a per-epoch one at its epoch, the final one after the last epoch); ``end_trial`` ends
    the run with the trial's status. Methods raise what MLflow raises; the callers decide to go on.
    """

    def __init__(
        self,
        settings: TrackingSettings,
        job_id: str,
        *,
        job_name: str | None = None,
        job_spec: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.job_name = job_name
        self.job_spec = job_spec
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._job_run_id: str | None = None
        self._trial_runs: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient of ``settings.mlflow_uri`` (mlflow imported on first use)."""
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError as exc:
                raise ImportError(f"tracking.mlflow_uri: {MLFLOW_EXTRA_HINT} ({exc})") from exc
            self._client = MlflowClient(tracking_uri=self.settings.mlflow_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The id of ``settings.experiment``, created (with its artifact location) when missing."""
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            name = self.settings.experiment
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        name, artifact_location=self.settings.default_artifact_location()
                    )
                except MlflowException:  # another job created it meanwhile
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
            if experiment is not None:
                self._experiment_id = str(experiment.experiment_id)
        assert self._experiment_id is not None
        return self._experiment_id

    def _find_run(self, **tags: str) -> str | None:
        clauses = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=clauses, max_results=1)
        return runs[0].info.run_id if runs else None

    def job_run_id(self) -> str:
        """The job's run: found by its tags (a resumed job), else created with the job's spec."""
        if self._job_run_id is None:
            found = self._find_run(**{JOB_ID_TAG: self.job_id, ROLE_TAG: "job"})
            if found is None:
                name = f"{self.job_name} ({self.job_id})" if self.job_name else f"job {self.job_id}"
                run = self.client.create_run(
                    self.experiment_id, run_name=name, tags={JOB_ID_TAG: self.job_id, ROLE_TAG: "job"}
                )
                found = run.info.run_id
                if self.job_spec is not None:
                    self.log_params(found, flat_params(self.job_spec))
                    self.client.log_dict(found, dict(self.job_spec), "job_spec.json")
            self._job_run_id = found
        return self._job_run_id

    def trial_run_id(self, trial_id: str) -> str:
        """The trial's run, nested under the job's: found by its tags, else created."""
        if trial_id not in self._trial_runs:
            tags = {JOB_ID_TAG: self.job_id, TRIAL_ID_TAG: trial_id, ROLE_TAG: "trial"}
            found = self._find_run(**tags)
            if found is None:
                run = self.client.create_run(
                    self.experiment_id, run_name=trial_id, tags={**tags, PARENT_TAG: self.job_run_id()}
                )
                found = run.info.run_id
            self._trial_runs[trial_id] = found
        return self._trial_runs[trial_id]

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log parameters on ``run_id`` in batches of MLflow's limit (100), keys made valid."""
        from mlflow.entities import Param

        entries = [Param(_key(key), value) for key, value in params.items()]
        for batch in _batches(entries):
            self.client.log_batch(run_id, params=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags on ``run_id``; a list becomes ``a; b``, a text too long for MLflow keeps its end."""
        from mlflow.entities import RunTag

        entries = [RunTag(_key(key), _tag_value(value)) for key, value in tags.items()]
        for batch in _batches(entries):
            self.client.log_batch(run_id, tags=batch)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` on ``run_id`` at ``step``, all with the same timestamp."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(_key(key), value, now, step) for key, value in metrics.items()]
        for batch in _batches(entries):
            self.client.log_batch(run_id, metrics=batch)

    def start_trial(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """Open the trial's run with ``config`` (the decoded arch, policy and training) as parameters.

        A restarted trial logs the same parameters again, which MLflow accepts.
        """
        run_id = self.trial_run_id(trial_id)
        self.log_params(run_id, flat_params(config))
        self.set_tags(run_id, {STATUS_TAG: "RUNNING"})

    def log_result(self, trial_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Log one report at ``step``: its numbers as metrics (``feasible`` as 0 / 1); a report that
        is not a per-epoch one (final, skipped) also keeps its text (violations, techniques, the ONNX
        path) as ``result.*`` tags."""
        run_id = self.trial_run_id(trial_id)
        figures: dict[str, float] = {}
        texts: dict[str, Any] = {}
        for key, value in metrics.items():
            if key in NOT_LOGGED or value is None:
                continue
            number = _metric_value(value)
            if number is not None:
                figures[key] = number
            else:
                texts[f"result.{key}"] = value
        self.log_metrics(run_id, figures, step)
        if metrics.get("stage") not in (None, "train") and texts:
            self.set_tags(run_id, {**texts, "result.stage": metrics["stage"]})

    def end_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        """End the trial's run: MLflow's status for the store's (COMPLETED -> FINISHED, STOPPED ->
        KILLED, FAILED -> FAILED), the store's as a tag, the error's text when it failed. PENDING
        (a crashed trial Tune retries) keeps the run open."""
        run_id = self.trial_run_id(trial_id)
        tags: dict[str, Any] = {STATUS_TAG: status}
        if error:
            tags["autocompress.error"] = error
        self.set_tags(run_id, tags)
        if status in RUN_STATUS:
            self.client.set_terminated(run_id, status=RUN_STATUS[status])

    def log_winner_model(self, onnx_path: str | Path, artifact_path: str = "winner_model") -> str:
        """Log the ONNX file at ``onnx_path`` as an MLflow ONNX model in the job's run; its model URI.

        ``mlflow.onnx.save_model`` writes the MLflow model (the ``MLmodel`` file, ``model.onnx`` and
        its pip requirements, given rather than inferred) into a temporary folder, uploaded as the
        run's ``artifact_path``: ``mlflow.onnx.load_model`` and pyfunc serving load it from there.
        """
        import mlflow.onnx
        import onnx

        run_id = self.job_run_id()
        path = Path(onnx_path)
        with tempfile.TemporaryDirectory(prefix="autocompress-mlflow-") as folder:
            mlflow.onnx.save_model(
                onnx.load(str(path)),
                str(Path(folder) / "model"),
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
                # one self-contained model.onnx unless the protobuf limit (2 GiB) forces external data
                save_as_external_data=path.stat().st_size > (1 << 30),
            )
            self.client.log_artifacts(run_id, str(Path(folder) / "model"), artifact_path)
        return f"runs:/{run_id}/{artifact_path}"


def log_job_result(
    settings: TrackingSettings | None,
    store: Any,
    job_id: str,
    rows: Sequence[Mapping[str, Any]],
    selection: Selection,
    files: Iterable[str | Path | None] = (),
) -> str | None:
    """Log the end of a tracked job on its MLflow run; nothing without ``settings``. Never raises.

    The test comparison ``rows`` (``test.<model>.<figure>`` metrics and ``test_comparison.json``),
    the ``selection``'s winner (its trial, and its ONNX file as an ONNX model, ``winner_model/``;
    its trial's run is tagged ``autocompress.winner``) or the reason there is none, and ``files``
    (the report, the Pareto plot) under ``report/``. The run then ends FINISHED. A failure is
    logged and written to the job's events; the job's result stands. Returns the job's run id
    (None when nothing was logged).
    """
    if settings is None:
        return None
    winner = selection.winner
    try:
        job = store.get_job(job_id)
        tracker = MlflowTracker(settings, job_id, job_name=job.name, job_spec=job.spec)
        run_id = tracker.job_run_id()
        for row in rows:
            figures = {
                f"test.{row['name']}.{key}": number
                for key, value in row.items()
                if (number := _metric_value(value)) is not None and math.isfinite(number)
            }
            tracker.log_metrics(run_id, figures, step=0)
        tracker.client.log_text(run_id, json.dumps(list(rows), indent=1, default=str), "test_comparison.json")
        tags: dict[str, Any] = {"autocompress.winner_trial": "" if winner is None else winner.trial_id}
        if selection.reason:
            tags["autocompress.reason"] = selection.reason
        tracker.set_tags(run_id, tags)
        for file in files:
            if file is not None and Path(file).is_file():
                tracker.client.log_artifact(run_id, str(file), "report")
        where = ""
        if winner is not None:
            where = f", the winner as the ONNX model {tracker.log_winner_model(winner.metrics['onnx_path'])}"
            tracker.set_tags(tracker.trial_run_id(winner.trial_id), {"autocompress.winner": "true"})
        tracker.client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # tracking is a copy of what the store keeps: it never fails the job
        logger.exception("could not log job %s to MLflow at %s", job_id, settings.mlflow_uri)
        _event(store, job_id, f"MLflow: could not log the job's result: {type(exc).__name__}: {exc}")
        return None
    _event(
        store,
        job_id,
        f"MLflow: job logged as run {run_id} of experiment {settings.experiment!r}{where}",
    )
    return run_id


def end_job_run(settings: TrackingSettings | None, store: Any, job_id: str, status: str, reason: str) -> None:
    """End a tracked job's MLflow run that did not succeed: ``status`` FAILED or KILLED (cancelled),
    the reason as the tag ``autocompress.reason``. Nothing without ``settings`` or before the search
    opened the run. Never raises: a failure is logged and written to the job's events.
    """
    if settings is None:
        return
    try:
        tracker = MlflowTracker(settings, job_id)
        run_id = tracker._find_run(**{JOB_ID_TAG: job_id, ROLE_TAG: "job"})
        if run_id is None:
            return
        tracker.set_tags(run_id, {"autocompress.reason": reason})
        tracker.client.set_terminated(run_id, status=status)
    except Exception as exc:  # tracking is a copy of what the store keeps
        logger.exception("could not end job %s's MLflow run at %s", job_id, settings.mlflow_uri)
        _event(store, job_id, f"MLflow: could not end the job's run: {type(exc).__name__}: {exc}")


def _event(store: Any, job_id: str, message: str) -> None:
    try:
        store.add_event(job_id, "log", message[:2000])
    except Exception:
        logger.exception("could not log an event of job %s: %s", job_id, message)
