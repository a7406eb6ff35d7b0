"""The Tune callback that logs every trial into MLflow as it happens (a job's ``tracking``).

The MLflow side of ``recording.TrialRecorder``, on the same hooks and with its helpers
(``trial_config``, ``trial_metrics``, ``report_epoch``, ``finished_status``): the logging itself
is ``autocompress.tracking.MlflowTracker``, tested without Ray. A failed MLflow call is logged,
never raised; when the job's run cannot be opened at all (a wrong URI, a server that does not
answer) tracking is off for the rest of the search, said once in the job's events, so a broken
tracking server neither fails the search nor slows every trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from autocompress.engine.recording import (
    finished_reports,
    finished_status,
    report_epoch,
    trial_config,
    trial_error_text,
    trial_metrics,
)
from autocompress.store import Store, TrialStatus
from autocompress.tracking import MlflowTracker, TrackingSettings

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from autocompress.search.space import SearchSpace
    from autocompress.train.config import TrainConfig

__all__ = ["MlflowRecorder", "tracking_callbacks"]

logger = logging.getLogger(__name__)


class MlflowRecorder(Callback):
    """Logs each trial of ``job_id`` as an MLflow run nested under the job's run.

    Life cycle (Tune's hooks, on the driver): ``on_trial_start`` -> the trial's run with its
    decoded config as parameters; ``on_trial_result`` -> the report's figures as metrics, a
    per-epoch report at its epoch, any other at Tune's iteration (after the last epoch);
    ``on_trial_recover`` -> status PENDING, the run stays open; ``on_trial_complete`` /
    ``on_trial_error`` -> the run ends with the trial's status (and error text).
    """

    def __init__(
        self,
        settings: TrackingSettings,
        store: Store,
        job_id: str,
        space: SearchSpace,
        train_config: TrainConfig,
        distill: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.job_id = job_id
        self.space = space
        self.train_config = train_config
        self.distill = distill
        self._tracker: MlflowTracker | None = None
        self._off = False
        self._finished: set[str] = set()  # as TrialRecorder: trials the store holds ended, not logged again

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the run (Tuner.restore); the MLflow client is opened anew
        state = dict(self.__dict__)
        state.update(_tracker=None, _off=False)
        return state

    def _tracker_or_none(self) -> MlflowTracker | None:
        """The tracker with the job's run open, or None once tracking is off for this search."""
        if self._off:
            return None
        if self._tracker is None:
            try:
                job = self.store.get_job(self.job_id)
                tracker = MlflowTracker(self.settings, self.job_id, job_name=job.name, job_spec=job.spec)
                tracker.job_run_id()
            except Exception as exc:
                self._off = True
                logger.exception(
                    "MLflow tracking of job %s is off: %s", self.job_id, self.settings.mlflow_uri
                )
                message = (
                    f"MLflow: tracking is off for this search, the run at {self.settings.mlflow_uri!r} "
                    f"could not be opened: {type(exc).__name__}: {exc}"
                )
                try:
                    self.store.add_event(self.job_id, "warning", message[:2000])
                except Exception:
                    logger.exception("could not log an event of job %s", self.job_id)
                return None
            self._tracker = tracker
        return self._tracker

    def setup(self, *args: Any, **info: Any) -> None:
        try:
            self._finished = set(finished_reports(self.store, self.job_id))
        except Exception:
            logger.exception("could not read the finished trials of job %s", self.job_id)

    def _log(self, trial: Trial, what: str, call: Callable[[MlflowTracker], None]) -> None:
        if trial.trial_id in self._finished:
            return
        tracker = self._tracker_or_none()
        if tracker is None:
            return
        try:
            call(tracker)
        except Exception:  # the search must outlive an MLflow hiccup
            logger.exception(
                "could not log %s of trial %s of job %s to MLflow", what, trial.trial_id, self.job_id
            )

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        config = trial_config(self.space, trial.config, self.train_config, self.distill)
        if set(config) != {"sampled"}:
            config.pop("sampled", None)  # the decoded arch and policy say it all
        self._log(trial, "the start", lambda t: t.start_trial(trial.trial_id, config))

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        epoch = report_epoch(result)
        step = epoch if epoch is not None else int(result.get("training_iteration") or iteration)
        metrics = trial_metrics(result)
        self._log(trial, "a result", lambda t: t.log_result(trial.trial_id, metrics, step))

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = TrialStatus.PENDING.value
        self._log(trial, "the retry", lambda t: t.end_trial(trial.trial_id, status))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = finished_status(trial.last_result).value
        self._log(trial, "the end", lambda t: t.end_trial(trial.trial_id, status))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        error = trial_error_text(trial)
        status = TrialStatus.FAILED.value
        self._log(trial, "the failure", lambda t: t.end_trial(trial.trial_id, status, error=error))


def tracking_callbacks(
    settings: TrackingSettings | None,
    store: Store,
    job_id: str,
    space: SearchSpace,
    train_config: TrainConfig,
    distill: bool = False,
) -> list[Callback]:
    """``[MlflowRecorder(...)]`` when the job asks for tracking, else no callback."""
    if settings is None:
        return []
    return [MlflowRecorder(settings, store, job_id, space, train_config, distill)]
