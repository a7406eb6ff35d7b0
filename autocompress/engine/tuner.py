"""The Ray Tune layer over ``run_trial``: searchers by name, resources, storage, retries, recording.

The trainable is thin: it decodes the sampled flat config with ``decode``, builds a ``TrialSpec``
named by Tune's trial id, runs ``run_trial`` and forwards its reports to ``tune.report``. The
``SharedResources`` (dataset, teacher) travel once through the Ray object store
(``tune.with_parameters``). When a scheduler such as ASHA stops a trial, Tune ends it inside
``tune.report`` (the session raises ``SystemExit`` in the trial's thread), so the trial simply
stops there; the recorder marks it STOPPED because its final report never arrived.

Searchers come by name from ``SEARCHERS`` (built lazily): ``random`` (Tune's variant generator),
``tpe`` and ``nsga2`` (Optuna through ``OptunaSearch``), ``evolution`` (regularised evolution,
below). Single-objective searchers (``tpe``, ``evolution``; ASHA too) work on ``objective``: the
valid AUC of a candidate that meets the budget, and ``valid_auc - distance_to_feasible`` of one
that does not (per-epoch reports carry the plain valid AUC, since nothing is measured yet). ``nsga2``
optimises ``valid_auc`` (max), ``latency_ms`` and ``size_mb`` (min) and sees the final report only.

With ``search.latency_model.enabled`` the search first fits the target's latency model
(``autocompress.engine.latency_model``; measured once, cached) and every trial skips a candidate
predicted far over the latency budget (``run_trial``). A skipped trial scores as a chance-level
model past its predicted overrun, ``SKIPPED_AUC - predicted_distance_to_feasible`` (for ``nsga2``:
AUC ``SKIPPED_AUC``, its predicted latency, the reference's size), so searchers learn to leave
its region; the store records it SKIPPED with its prediction, neither failed nor a candidate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from autocompress.engine.cancel import CancelStopper, raise_if_cancelled
from autocompress.engine.recording import TrialRecorder, finished_reports, finished_status, trial_metrics
from autocompress.engine.tracking import tracking_callbacks
from autocompress.engine.trial import SharedResources
from autocompress.errors import AutocompressError
from autocompress.search.space import SearchSpace
from autocompress.spec import MULTI_OBJECTIVE_SEARCHERS, SearchSettings, storage_uri_scheme
from autocompress.store import Store, TrialStatus
from autocompress.tracking import TrackingSettings
from autocompress.train.config import TrainConfig

# Tune's searchers (Searcher or SearchAlgorithm subclasses); Ray ships without type stubs.
Searcher = Any

OBJECTIVE = "objective"
JOB_FILE = "autocompress_job.json"  # in the Tune run's folder: the job the run records into
MULTI_OBJECTIVE_METRICS = ("valid_auc", "latency_ms", "size_mb")
MULTI_OBJECTIVE_MODES = ("max", "min", "min")
SKIPPED_AUC = 0.5  # a skipped candidate scores as a model that ranks at chance


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the search ended it: the sampled config, its last metrics, status and error."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    status: TrialStatus
    error: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    """Every trial of one search and where Tune keeps the run (for ``Tuner.restore``)."""

    experiment_path: str
    trials: list[TrialOutcome] = field(default_factory=list)

    def by_status(self, status: TrialStatus) -> list[TrialOutcome]:
        """The trials that ended with ``status``."""
        return [t for t in self.trials if t.status is status]


def objective(metrics: Mapping[str, Any]) -> float:
    """The single-objective score: valid AUC, less the distance to the budget when it is missed.

    A candidate skipped on its latency prediction scores ``SKIPPED_AUC`` less its predicted overrun.
    """
    if metrics.get("stage") == "skipped":
        return SKIPPED_AUC - float(metrics.get("predicted_distance_to_feasible", 0.0))
    value = float(metrics["valid_auc"])
    distance = metrics.get("distance_to_feasible")
    if metrics.get("stage") == "final" and not metrics.get("feasible", True) and distance is not None:
        value -= float(distance)
    return value


# -- searchers ------------------------------------------------------------------------------------


def warmup_trials(num_trials: int) -> int:
    """Random trials before a model-based searcher starts using results: a third of the budget, 2 to 10.

    Optuna's defaults (TPE: 10 random trials; NSGA-II: generations of 50) would make every searcher
    plain random search at the 6-30 trials a search runs on a few CPUs.
    """
    return max(2, min(10, num_trials // 3))


def _random(settings: SearchSettings) -> Searcher:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune's max_concurrent_trials applies to Searchers only; the variant generator limits itself
    return BasicVariantGenerator(random_state=settings.seed, max_concurrent=settings.max_concurrent)


def _quiet_optuna_list_choices() -> None:
    # Architecture choices are lists of widths (``bottom_mlp: [[], [64]]``). Optuna warns that such
    # choices cannot go to a persistent Optuna storage; Tune's OptunaSearch keeps its study in
    # memory, where Optuna stores a categorical by its index, so the warning does not apply.
    warnings.filterwarnings(
        "ignore", message="Choices for a categorical distribution should be a tuple", category=UserWarning
    )


def _tpe(settings: SearchSettings) -> Searcher:
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    _quiet_optuna_list_choices()
    sampler = TPESampler(seed=settings.seed, n_startup_trials=warmup_trials(settings.num_trials))
    return OptunaSearch(metric=OBJECTIVE, mode="max", sampler=sampler)


def _nsga2(settings: SearchSettings) -> Searcher:
    from ray.tune.search.optuna import OptunaSearch

    from autocompress.engine.searchers import PicklableNSGAIISampler

    _quiet_optuna_list_choices()
    population = max(2, warmup_trials(settings.num_trials))
    return OptunaSearch(
        metric=list(MULTI_OBJECTIVE_METRICS),
        mode=list(MULTI_OBJECTIVE_MODES),
        sampler=PicklableNSGAIISampler(seed=settings.seed, population_size=population),
    )


def _evolution(settings: SearchSettings) -> Searcher:
    from autocompress.engine.searchers import RegularizedEvolution

    population = max(2, warmup_trials(settings.num_trials))
    return RegularizedEvolution(
        metric=OBJECTIVE,
        mode="max",
        seed=settings.seed,
        population_size=population,
        sample_size=min(3, population),
    )


SEARCHERS: dict[str, Callable[[SearchSettings], Searcher]] = {
    "random": _random,
    "tpe": _tpe,
    "nsga2": _nsga2,
    "evolution": _evolution,
}


def make_searcher(settings: SearchSettings) -> Searcher:
    """The Tune searcher named by ``settings.searcher``, seeded with ``settings.seed``."""
    if settings.searcher not in SEARCHERS:
        raise AutocompressError(
            f"search.searcher: {settings.searcher!r} is not available yet; available: {sorted(SEARCHERS)}"
        )
    return SEARCHERS[settings.searcher](settings)


def make_scheduler(settings: SearchSettings, train_config: TrainConfig) -> Any:
    """ASHA on ``objective`` when ``settings.asha`` is on (one rung per epoch), else Tune's FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not settings.asha:
        return FIFOScheduler()
    # one report per epoch plus the final one: max_t leaves room for the final report
    return ASHAScheduler(
        metric=OBJECTIVE, mode="max", max_t=train_config.epochs + 1, grace_period=1, reduction_factor=2
    )


# -- the trainable --------------------------------------------------------------------------------


def search_trainable(
    config: dict[str, Any],
    *,
    space: SearchSpace,
    shared: SharedResources,
    train_config: TrainConfig,
    distill: bool,
    report_epochs: bool,
    finished: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One Tune trial: decode the sample, run the pipeline, forward the reports to ``tune.report``.

    A trial in ``finished`` (the store's final report of a trial that ended before the driver
    stopped, when Tune's saved state had not caught up) is not run again: its report is given back.
    """
    from ray import tune

    from autocompress.engine.trial import TrialSpec, run_trial
    from autocompress.search.space import decode

    def forward(metrics: dict[str, Any]) -> None:
        if metrics.get("stage") == "train" and not report_epochs:
            return
        tune.report({**metrics, **searcher_stand_ins(metrics, shared), OBJECTIVE: objective(metrics)})

    trial_id = tune.get_context().get_trial_id()
    if finished and trial_id in finished:
        forward(dict(finished[trial_id]))
        return
    arch, policy = decode(space, config)
    spec = TrialSpec(
        trial_id=trial_id,
        family=space.family,
        arch=arch,
        policy=policy,
        train_config=train_config,
        distill=distill,
    )
    run_trial(spec, shared, forward)


def searcher_stand_ins(metrics: Mapping[str, Any], shared: SharedResources) -> dict[str, Any]:
    """What a multi-objective searcher sees of a skipped trial in place of the figures it never measured.

    Chance-level AUC, the predicted latency and the reference's size (unknown: no smaller). Empty
    for every other report; the store leaves them out (``recording.SKIPPED_STAND_INS``).
    """
    if metrics.get("stage") != "skipped":
        return {}
    size = shared.reference_size_bytes / 1e6 if shared.reference_size_bytes else float("inf")
    return {"valid_auc": SKIPPED_AUC, "latency_ms": metrics["predicted_latency_ms"], "size_mb": size}


def attach_latency_model(
    space: SearchSpace, settings: SearchSettings, shared: SharedResources, store: Store, job_id: str
) -> SharedResources:
    """``shared`` with the target's latency model when ``settings.latency_model`` asks for one.

    Fitted on the target (or loaded from ``latency_model.cache_dir``, default the job's latency
    cache) before any trial starts; nothing is fitted when the budget bounds no latency. Every
    step is an event of the job.
    """
    from autocompress.engine.latency_model import calibrate

    options = settings.latency_model
    budget = shared.budget
    if not options.enabled:
        return shared
    if budget.latency_ms is None:
        store.add_event(job_id, "log", "latency model: the budget bounds no latency, so none is fitted")
        return shared
    cache_dir = Path(options.cache_dir).expanduser() if options.cache_dir else shared.cache_dir
    store.add_event(
        job_id,
        "log",
        f"latency model: fitting on {options.calibration_candidates} candidates of {space.name} measured "
        f"on the target at batch {budget.batch_size}, or loading it from {cache_dir}",
    )
    started = time.perf_counter()
    model, cached = calibrate(
        space,
        shared.dataset,
        shared.target,
        budget,
        cache_dir=cache_dir,
        latency_cache_dir=shared.cache_dir,
        candidates=options.calibration_candidates,
        seed=settings.seed,
    )
    error = model.cv_rel_error.get(budget.percentile)
    store.add_event(
        job_id,
        "log",
        f"latency model: {'loaded from the cache' if cached else 'fitted'} in "
        f"{time.perf_counter() - started:.0f} s on {model.candidates} candidates (cross-validated median "
        f"error of p{budget.percentile}: {'?' if error is None else f'{error:.0%}'}); skipping candidates "
        f"predicted over {budget.latency_ms * (1 + options.skip_margin):.3g} ms "
        f"(the budget's {budget.latency_ms:.3g} ms + {options.skip_margin:.0%})",
    )
    return dataclasses.replace(shared, latency_model=model, skip_margin=options.skip_margin)


# -- where Tune keeps the run ---------------------------------------------------------------------


class TuneRunLocation:
    """One Tune run's folder, ``<storage>/<name>``, in a local folder or under a URI pyarrow.fs opens.

    ``storage`` is what Tune's ``RunConfig(storage_path=...)`` gets: a local folder (expanded and
    resolved) or the URI as given, e.g. ``s3://bucket/runs?endpoint_override=host:9000&scheme=http``,
    whose query stays at the end when the run's name is appended. The job's owner file in the
    run's folder is read and written through ``pyarrow.fs`` for both.
    """

    def __init__(self, storage_path: str | Path, name: str) -> None:
        location = str(storage_path)
        if storage_uri_scheme(location) is None:
            location = str(Path(location).expanduser().resolve())
        self.storage = location
        self.name = name
        if storage_uri_scheme(location) is None:
            self.experiment = str(Path(location) / name)
        else:
            parts = urlsplit(location)
            self.experiment = urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))

    @functools.cached_property
    def _filesystem(self) -> tuple[Any, str]:
        import pyarrow.fs

        try:
            return pyarrow.fs.FileSystem.from_uri(self.experiment)
        except (OSError, ValueError) as exc:
            raise AutocompressError(f"search.storage_path: cannot open {self.storage!r}: {exc}") from None

    def _storage_error(self, exc: Exception) -> AutocompressError:
        return AutocompressError(f"search.storage_path: cannot use the Tune run at {self.experiment}: {exc}")

    def owner(self) -> tuple[bool, str | None]:
        """Whether the run's folder exists, and the job its owner file names (None without one)."""
        import pyarrow.fs

        fs, path = self._filesystem
        try:
            if fs.get_file_info(path).type is pyarrow.fs.FileType.NotFound:
                return False, None
            owner_file = f"{path}/{JOB_FILE}"
            if fs.get_file_info(owner_file).type is not pyarrow.fs.FileType.File:
                return True, None
            with fs.open_input_stream(owner_file) as stream:
                return True, json.loads(stream.readall()).get("job_id")
        except OSError as exc:
            raise self._storage_error(exc) from None

    def claim(self, job_id: str) -> None:
        """Create the run's folder and write the owner file naming ``job_id``."""
        fs, path = self._filesystem
        try:
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(f"{path}/{JOB_FILE}") as stream:
                stream.write(json.dumps({"job_id": job_id}).encode())
        except OSError as exc:
            raise self._storage_error(exc) from None


# -- the search -----------------------------------------------------------------------------------


def run_search(
    space: SearchSpace,
    settings: SearchSettings,
    shared: SharedResources,
    *,
    store: Store,
    job_id: str,
    name: str,
    train_config: TrainConfig | None = None,
    distill: bool = False,
    resume: bool = True,
    tracking: TrackingSettings | None = None,
    points: Sequence[Mapping[str, Any]] | None = None,
    stage: int | None = None,
) -> SearchOutcome:
    """Search ``space`` with Ray Tune as ``settings`` say, recording every trial of ``job_id`` in ``store``.

    ``name`` names the Tune run under ``settings.storage_path`` (default: ``shared.work_dir/tune``);
    with ``resume`` an earlier run of that name (of the same job) is picked up with ``Tuner.restore``:
    unfinished trials rerun, finished ones are kept and not recorded again. A run folder of another
    job is refused. With ``settings.latency_model.enabled`` the latency model is fitted (or loaded)
    first (``attach_latency_model``). With ``tracking``, every trial is logged into MLflow too
    (``autocompress.engine.tracking``). With ``points`` (sampled flat configs) exactly those
    candidates are trained, one trial each, instead of a search; ``stage`` marks the trials as a
    two-stage search's (``TrialRecorder``). Returns every trial.
    """
    from ray import tune

    if not name or "/" in name or name in (".", ".."):
        raise AutocompressError(f"name: {name!r} must be a plain folder name (no '/')")
    train_config = train_config or TrainConfig()
    shared = attach_latency_model(space, settings, shared, store, job_id)
    raise_if_cancelled(store, job_id)  # fitting the latency model takes a while
    location = TuneRunLocation(settings.storage_path or shared.work_dir / "tune", name)
    experiment = location.experiment
    multi_objective = settings.searcher in MULTI_OBJECTIVE_SEARCHERS
    if points is None:
        searcher, num_samples = make_searcher(settings), settings.num_trials
    else:
        from autocompress.engine.searchers import GivenConfigs

        searcher, num_samples = GivenConfigs([dict(p) for p in points]), len(points)

    exists, owner = location.owner()
    if exists and owner != job_id:
        # a restored run records into the job it was started for: never mix two jobs' trials
        raise AutocompressError(
            f"name: the Tune run {experiment} belongs to job {owner!r}, not {job_id!r}; "
            "give each job its own name (its id) or storage_path"
        )
    restore = resume and exists and tune.Tuner.can_restore(experiment)
    # Tune saves its state every few seconds: a trial that finished after the last save would run
    # again on restore; the store knows it finished, so the trial gives its report back instead
    finished = finished_reports(store, job_id) if restore else {}
    trainable = tune.with_resources(
        tune.with_parameters(
            search_trainable,
            space=space,
            shared=shared,
            train_config=train_config,
            distill=distill,
            report_epochs=not multi_objective,
            finished=finished,
        ),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    recorder = TrialRecorder(store, job_id, space, train_config, distill, stage=stage)
    if restore:
        store.add_event(job_id, "search", f"resuming the Tune run at {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True)
    else:
        from autocompress.search.tune_space import to_tune

        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(settings, train_config),
                num_samples=num_samples,
                max_concurrent_trials=None if settings.searcher == "random" else settings.max_concurrent,
                reuse_actors=True,  # a trial's worker runs the next trial: no process start each
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=location.storage,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[
                    recorder,
                    *tracking_callbacks(tracking, store, job_id, space, train_config, distill),
                ],
                stop=CancelStopper(store, job_id),
                verbose=0,
            ),
        )
    location.claim(job_id)
    grid = tuner.fit()
    raise_if_cancelled(store, job_id)  # a cancelled job ends here: no winner, report or registration
    trials = []
    for index in range(len(grid)):
        result = grid[index]
        metrics = dict(result.metrics or {})
        error = str(result.error) if result.error is not None else None
        trials.append(
            TrialOutcome(
                trial_id=str(metrics.get("trial_id")),
                config=dict(result.config or {}),
                metrics=trial_metrics(metrics),
                status=TrialStatus.FAILED if error is not None else finished_status(metrics),
                error=error,
            )
        )
    if shared.latency_model is not None:
        skipped = sum(t.status is TrialStatus.SKIPPED for t in trials)
        store.add_event(
            job_id, "log", f"latency model: {skipped} of {len(trials)} trials skipped on their prediction"
        )
    return SearchOutcome(experiment_path=experiment, trials=trials)
