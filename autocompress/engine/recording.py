"""The Tune callback that writes every trial into the store as it happens.

RUNNING when a trial starts (with its decoded arch + policy), its metrics on every result (each
per-epoch report also kept as a point of the trial's learning curve, ``Store.trial_curve``),
COMPLETED / STOPPED / SKIPPED / FAILED (with the error text) when it ends. Rows are keyed by
``(job_id, Tune trial id)`` and ``Store.record_trial`` upserts, so a run resumed with
``Tuner.restore`` never records a trial twice. A failed store write is logged, never raised: the
search goes on and the next write of the trial brings its row up to date.

A two-stage search records its stages apart: ``CandidateRecorder`` writes every candidate a stage-1
trial scores as a row of its own (config ``stage: 1``), and stage 2's ``TrialRecorder(stage=2)``
marks its trials (config ``stage: 2``); both put the stage into the metrics as ``search_stage``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from autocompress.store import Store, TrialStatus

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from autocompress.search.space import SearchSpace
    from autocompress.train.config import TrainConfig

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 20_000

# What Tune adds to every result; the store keeps the trial's own metrics (and the iteration).
TUNE_RESULT_KEYS = frozenset(
    {
        "config",
        "date",
        "done",
        "experiment_id",
        "experiment_tag",
        "hostname",
        "iterations_since_restore",
        "node_ip",
        "pid",
        "should_checkpoint",
        "checkpoint_dir_name",
        "time_since_restore",
        "time_this_iter_s",
        "timestamp",
        "timesteps_since_restore",
        "timesteps_total",
        "episodes_total",
        "__duplicate__",
    }
)


# What a skipped trial reports to a multi-objective searcher in place of figures it never measured
# (``tuner.searcher_stand_ins``); the store keeps its prediction instead.
SKIPPED_STAND_INS = frozenset({"valid_auc", "latency_ms", "size_mb"})


def trial_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune result without Tune's bookkeeping keys: what the store keeps as a trial's metrics.

    A skipped trial's stand-ins for the searcher (``SKIPPED_STAND_INS``) are left out too: it was
    never trained nor measured.
    """
    dropped = TUNE_RESULT_KEYS | (SKIPPED_STAND_INS if result.get("stage") == "skipped" else frozenset())
    return {k: v for k, v in result.items() if k not in dropped}


def report_epoch(result: Mapping[str, Any]) -> int | None:
    """The epoch a per-epoch report (stage ``train``) is about, None for any other report."""
    epoch = result.get("epoch")
    if result.get("stage") != "train" or isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
        return None
    number = int(epoch)
    return number if number >= 0 else None


def finished_status(result: Mapping[str, Any]) -> TrialStatus:
    """COMPLETED when the trial's final report arrived, SKIPPED when the latency model skipped it,
    STOPPED when it ended before either (ASHA, a cancel)."""
    stage = result.get("stage")
    if stage == "final":
        return TrialStatus.COMPLETED
    return TrialStatus.SKIPPED if stage == "skipped" else TrialStatus.STOPPED


def trial_config(
    space: SearchSpace, sampled: Mapping[str, Any], train_config: TrainConfig, distill: bool
) -> dict[str, Any]:
    """What the store keeps as a trial's config: the decoded arch and policy, training, and the sample.

    A sample that does not decode (the trial will fail and say why) keeps only ``sampled``.
    """
    from autocompress.engine.trial import TrialSpec
    from autocompress.errors import AutocompressError
    from autocompress.search.space import decode

    flat = {k: v for k, v in sampled.items() if k.startswith(("arch.", "policy."))}
    try:
        arch, policy = decode(space, flat)
        spec = TrialSpec(
            trial_id="config",
            family=space.family,
            arch=arch,
            policy=policy,
            train_config=train_config,
            distill=distill,
        ).to_dict()
    except AutocompressError:
        return {"sampled": flat}
    del spec["trial_id"]
    return {**spec, "sampled": flat}


def trial_error_text(trial: Trial) -> str:
    """The error Tune recorded for a failed trial (its traceback text), trimmed to the last part."""
    text = None
    error_file = trial.error_file
    if error_file and Path(error_file).is_file():
        text = Path(error_file).read_text(errors="replace")
    if not text:
        text = "the trial failed (Tune kept no error text)"
    return text if len(text) <= MAX_ERROR_CHARS else "..." + text[-MAX_ERROR_CHARS:]


def finished_reports(store: Store, job_id: str) -> dict[str, dict[str, Any]]:
    """The final report of each of the job's trials that the store holds as ended with one, by key."""
    return {
        row.trial_key: dict(row.metrics)
        for row in store.list_trials(job_id)
        if row.status in (TrialStatus.COMPLETED, TrialStatus.SKIPPED)
        and row.metrics.get("stage") in ("final", "skipped")
    }


class TrialRecorder(Callback):
    """Records each trial of ``job_id`` into ``store`` on start, on every result and at its end.

    Life cycle (Tune's hooks, called on the driver): ``on_trial_start`` -> RUNNING with the
    config; ``on_trial_result`` -> RUNNING with the latest metrics (a per-epoch report, stage
    ``train``, also into the learning curve under its ``epoch``); ``on_trial_recover`` ->
    PENDING with the error (the retry's start counts a new attempt); ``on_trial_complete`` ->
    COMPLETED, SKIPPED or STOPPED; ``on_trial_error`` -> FAILED with the error text. A trial that
    the store holds as ended when the search (re)starts (``finished_reports``: it ended after Tune's
    last saved state, and gives its report back) is left as it is. With
    ``stage`` (a two-stage search's stage 2) every config holds ``stage`` and every metrics dict
    ``search_stage``.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        space: SearchSpace,
        train_config: TrainConfig,
        distill: bool = False,
        stage: int | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.space = space
        self.train_config = train_config
        self.distill = distill
        self.stage = stage
        self.finished: set[str] = set()

    def setup(self, *args: Any, **info: Any) -> None:  # on every start, a restored run's included
        try:
            self.finished = set(finished_reports(self.store, self.job_id))
        except Exception:  # then a trial rerun by Tune is recorded again, as before
            logger.exception("could not read the finished trials of job %s", self.job_id)

    def _record(self, trial: Trial, status: TrialStatus, **fields: Any) -> None:
        if trial.trial_id in self.finished:
            return
        if self.stage is not None:  # a two-stage search's stage: in the config and the metrics
            if fields.get("config") is not None:
                fields["config"] = {**fields["config"], "stage": self.stage}
            if fields.get("metrics") is not None:
                fields["metrics"] = {**fields["metrics"], "search_stage": self.stage}
        try:
            self.store.record_trial(self.job_id, trial.trial_id, status, **fields)
        except Exception:  # the search must outlive a store hiccup; the next write catches up
            logger.exception("could not record trial %s of job %s as %s", trial.trial_id, self.job_id, status)

    def _event(self, message: str, trial: Trial | None = None) -> None:
        if trial is not None and trial.trial_id in self.finished:
            return
        try:
            self.store.add_event(self.job_id, "trial", message)
        except Exception:
            logger.exception("could not log an event of job %s: %s", self.job_id, message)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        config = trial_config(self.space, trial.config, self.train_config, self.distill)
        self._record(trial, TrialStatus.RUNNING, config=config)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        self._record(trial, TrialStatus.RUNNING, metrics=trial_metrics(result), epoch=report_epoch(result))

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._record(trial, TrialStatus.PENDING, error=trial_error_text(trial))
        self._event(f"trial {trial.trial_id} crashed and will be retried", trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result
        status = finished_status(result)
        self._record(trial, status, metrics=trial_metrics(result))
        why = (
            f": {result['skip_reason']}"
            if status is TrialStatus.SKIPPED and result.get("skip_reason")
            else ""
        )
        self._event(f"trial {trial.trial_id} {status.value.lower()}{why}", trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        error = trial_error_text(trial)
        self._record(trial, TrialStatus.FAILED, metrics=trial_metrics(trial.last_result), error=error)
        last_line = error.strip().splitlines()[-1] if error else ""
        self._event(f"trial {trial.trial_id} failed: {last_line}", trial)


# What a stage-1 candidate's report ends with, as the status of its row.
CANDIDATE_STATUS = {
    "final": TrialStatus.COMPLETED,
    "skipped": TrialStatus.SKIPPED,
    "failed": TrialStatus.FAILED,
}


def candidate_key(trial_id: str, index: int) -> str:
    """The store key of the ``index``-th candidate a stage-1 trial scores: ``<Tune trial id>-<index>``."""
    return f"{trial_id}-{index:03d}"


class CandidateRecorder(Callback):
    """Records every candidate of a two-stage search's stage 1 as a trial row of its own.

    A stage-1 Tune trial scores a batch of candidates (``autocompress.engine.explore``), reporting
    each as one result with its index as ``candidate``. Life cycle: ``on_trial_start`` -> every
    candidate of the batch PENDING, with its decoded config and ``stage: 1``;
    ``on_trial_result`` -> that candidate COMPLETED, SKIPPED or FAILED (``CANDIDATE_STATUS``) with
    its metrics; ``on_trial_error`` -> the candidates the trial never reported FAILED with its
    error; ``on_trial_complete`` -> those STOPPED (a cancelled job), and an event counting the batch.
    A retried or restored trial scores its batch again; the rows are upserted by key.
    """

    STAGE = 1

    def __init__(
        self, store: Store, job_id: str, space: SearchSpace, train_config: TrainConfig, distill: bool = False
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.space = space
        self.train_config = train_config
        self.distill = distill
        self._reported: dict[str, dict[int, TrialStatus]] = {}

    def _record(self, key: str, status: TrialStatus, **fields: Any) -> None:
        try:
            self.store.record_trial(self.job_id, key, status, **fields)
        except Exception:  # the search must outlive a store hiccup
            logger.exception("could not record candidate %s of job %s as %s", key, self.job_id, status)

    def _event(self, message: str) -> None:
        try:
            self.store.add_event(self.job_id, "trial", message)
        except Exception:
            logger.exception("could not log an event of job %s: %s", self.job_id, message)

    @staticmethod
    def _batch(trial: Trial) -> list[Mapping[str, Any]]:
        candidates = (trial.config or {}).get("candidates")
        return list(candidates) if isinstance(candidates, list) else []

    def _unreported(self, trial: Trial) -> list[int]:
        reported = self._reported.get(trial.trial_id, {})
        return [i for i in range(len(self._batch(trial))) if i not in reported]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._reported[trial.trial_id] = {}
        for index, sampled in enumerate(self._batch(trial)):
            config = trial_config(self.space, sampled, self.train_config, self.distill)
            self._record(
                candidate_key(trial.trial_id, index),
                TrialStatus.PENDING,
                config={**config, "stage": self.STAGE},
            )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        index = result.get("candidate")
        status = CANDIDATE_STATUS.get(str(result.get("stage")))
        if isinstance(index, bool) or not isinstance(index, int) or status is None:
            return
        metrics = {k: v for k, v in trial_metrics(result).items() if k != "candidate"}
        self._record(
            candidate_key(trial.trial_id, index),
            status,
            metrics={**metrics, "search_stage": self.STAGE},
            error=result.get("error") if status is TrialStatus.FAILED else None,
            seconds=result.get("seconds_total"),
        )
        self._reported.setdefault(trial.trial_id, {})[index] = status

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        error = trial_error_text(trial)
        for index in self._unreported(trial):
            self._record(candidate_key(trial.trial_id, index), TrialStatus.FAILED, error=error)
        self._event(
            f"stage 1: trial {trial.trial_id} failed: {error.strip().splitlines()[-1] if error else ''}"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        for index in self._unreported(trial):
            self._record(candidate_key(trial.trial_id, index), TrialStatus.STOPPED)
        counts: dict[str, int] = {}
        for status in self._reported.pop(trial.trial_id, {}).values():
            counts[status.value.lower()] = counts.get(status.value.lower(), 0) + 1
        told = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none scored"
        self._event(f"stage 1: trial {trial.trial_id} scored {len(self._batch(trial))} candidates ({told})")
