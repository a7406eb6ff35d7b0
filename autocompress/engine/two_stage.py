"""The two-stage search (``search.strategy: two_stage``): a weight-sharing supernet, explore, confirm.

Stage 0 (``prepare_supernet``, in the driver): the supernet of the search space (its largest
architecture, ``supernet_archs``) is trained once by the sandwich rule, distilled from the job's
reference, and saved as ``supernet.pt`` in the job's folder; a resumed job loads it instead.

Stage 1 (``run_stage_one``), explore: Ray Tune trials, each scoring ``candidates_per_trial``
candidates on the supernet's inherited weights in seconds (``autocompress.engine.explore``), so
Ray's per-trial overhead is paid once per batch and batches spread over the cluster like trials.
The searcher keeps its feedback loop: Tune proposes one config per trial, so the job's searcher
(random, TPE, NSGA-II, evolution: the Tune searchers of ``tuner.SEARCHERS``) is wrapped in
``searchers.CandidateBatches``, which asks it for one candidate at a time to fill a trial's batch
and tells it each candidate's outcome as soon as the trial reports it; the next batch is proposed
from everything scored so far. Every candidate is a row in the store (``stage: 1``,
``recording.CandidateRecorder``), none of them a winner.

Stage 2 (``select_finalists`` + ``tuner.run_search`` with ``points``), confirm: the ``top_k`` best of
stage 1 (the successive Pareto fronts of its candidates within the latency and size bounds, those
with ``latency_margin`` to spare first, then the rest closest to the bounds; the AUC drop is not
judged before fine-tuning) go through the per-trial pipeline (``trial.run_trial``) starting from their
inherited weights: ``finetune_epochs`` of training or distillation at the job's learning rate
(``FINETUNE_LR_SCALE``), the whole policy, export, real latency, the budget. Recorded with
``stage: 2``; the job picks its winner from them only (``search.pareto.finished_candidates``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autocompress.engine.cancel import CancelStopper, raise_if_cancelled
from autocompress.engine.tuner import (
    OBJECTIVE,
    SearchOutcome,
    TuneRunLocation,
    attach_latency_model,
    make_searcher,
    run_search,
)
from autocompress.errors import AutocompressError
from autocompress.search.pareto import Candidate, finished_candidates, pareto_front
from autocompress.spec import LatencyModelSettings, SearchSettings, TwoStageSettings
from autocompress.store import Store, TrialRecord, TrialStatus
from autocompress.train.config import DistillConfig, TrainConfig

if TYPE_CHECKING:
    from autocompress.engine.searchers import CandidateBatches
    from autocompress.engine.trial import SharedResources
    from autocompress.search.budget import Budget
    from autocompress.search.space import SearchSpace
    from autocompress.supernet import Supernet
    from autocompress.tracking import TrackingSettings

__all__ = [
    "SUPERNET_FILE",
    "StageOneOutcome",
    "TwoStageOutcome",
    "prepare_supernet",
    "run_stage_one",
    "run_two_stage",
    "select_finalists",
]

SUPERNET_FILE = "supernet.pt"
# Stage 2 trains its finalists at the job's learning rate, not a technique fine-tune's tenth: a
# supernet's sub-network after one or a few epochs is a start, not a trained model. At a tenth,
# the search benchmark's four finalists (2026-12-07) lost 0.0051-0.0101 of valid AUC where stage 1
# read about 0.0033; three of them trained again at the full rate dropped 0.0014-0.0022 (by hand).
FINETUNE_LR_SCALE = 1.0


@dataclass(frozen=True)
class StageOneOutcome:
    """Stage 1 in figures: candidates by status, wall seconds of this run (``resumed``: of its rest),
    and where Tune keeps the run."""

    experiment_path: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False

    @property
    def scored(self) -> int:
        """Candidates that ended with a report (completed, skipped or failed)."""
        return sum(n for status, n in self.counts.items() if status in ("COMPLETED", "SKIPPED", "FAILED"))

    @property
    def candidates_per_minute(self) -> float:
        return 60.0 * self.scored / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class TwoStageOutcome:
    """A whole two-stage search: the supernet's origin, stage 1's figures, the finalists, stage 2's trials."""

    supernet_loaded: bool
    stage_one: StageOneOutcome
    finalists: list[str]
    stage_two: SearchOutcome | None


def run_two_stage(
    space: SearchSpace,
    settings: SearchSettings,
    shared: SharedResources,
    *,
    store: Store,
    job_id: str,
    name: str,
    supernet_path: str | Path,
    train_config: TrainConfig | None = None,
    distill: bool = False,
    tracking: TrackingSettings | None = None,
) -> TwoStageOutcome:
    """Stages 0, 1 and 2 (see the module docstring), every step an event of ``job_id``.

    ``name`` names the Tune runs (``<name>.stage1``, ``<name>.stage2``), resumed like
    ``run_search``'s; ``supernet_path`` is where the supernet is saved, and loaded from on a resume.
    """
    options = settings.two_stage
    train_config = train_config or TrainConfig()
    shared = attach_latency_model(space, settings, shared, store, job_id)
    raise_if_cancelled(store, job_id)
    supernet, loaded = prepare_supernet(
        space, shared, options, train_config, Path(supernet_path), store=store, job_id=job_id
    )
    raise_if_cancelled(store, job_id)

    stage_one = run_stage_one(
        space,
        settings,
        shared,
        supernet,
        store=store,
        job_id=job_id,
        name=f"{name}.stage1",
        train_config=train_config,
        distill=distill,
    )
    counts = ", ".join(f"{n} {status.lower()}" for status, n in sorted(stage_one.counts.items()))
    rate = "resumed run" if stage_one.resumed else f"{stage_one.candidates_per_minute:.1f} per minute"
    store.add_event(
        job_id,
        "log",
        f"stage 1: {stage_one.scored} candidates scored in {stage_one.seconds:.0f} s ({rate}; {counts})",
    )
    finalists = select_finalists(
        store.list_trials(job_id), options.top_k, shared.budget, options.latency_margin
    )
    if not finalists:
        store.add_event(job_id, "warning", "stage 2: no stage-1 candidate completed; nothing to confirm")
        return TwoStageOutcome(loaded, stage_one, [], None)
    store.add_event(
        job_id,
        "log",
        f"stage 2: training the {len(finalists)} best of stage 1 from their inherited weights "
        f"({', '.join(t.trial_key for t in finalists)}) for {options.finetune_epochs} epoch(s)",
    )
    finetune = dataclasses.replace(
        train_config, epochs=options.finetune_epochs, lr=train_config.lr * FINETUNE_LR_SCALE
    )
    stage_two = run_search(
        space,
        # the latency model is attached already: not fitted (or loaded and announced) a second time
        settings.model_copy(update={"latency_model": LatencyModelSettings()}),
        dataclasses.replace(shared, supernet=supernet),
        store=store,
        job_id=job_id,
        name=f"{name}.stage2",
        train_config=finetune,
        distill=distill,
        tracking=tracking,
        points=[t.config["sampled"] for t in finalists],
        stage=2,
    )
    return TwoStageOutcome(loaded, stage_one, [t.trial_key for t in finalists], stage_two)


# -- stage 0 ----------------------------------------------------------------------------------------


def prepare_supernet(
    space: SearchSpace,
    shared: SharedResources,
    options: TwoStageSettings,
    train_config: TrainConfig,
    path: Path,
    *,
    store: Store,
    job_id: str,
) -> tuple[Supernet, bool]:
    """The space's supernet and whether it was loaded: from ``path`` when a run of this job saved one
    for the same largest architecture and data, else trained (and saved to ``path``).

    Trained for ``options.supernet_epochs`` with ``train_config``'s recipe by the sandwich rule
    (``train_supernet``: the largest, the smallest and two random architectures of the space per
    step), distilled from ``shared.teacher`` when there is one. Returned on the CPU, in eval mode.
    """
    from autocompress.supernet import Supernet, arch_sampler, supernet_archs, train_supernet

    largest, smallest = supernet_archs(space)
    schema = shared.dataset.schema
    if path.is_file():
        try:
            saved = Supernet.load(path)
        except AutocompressError as exc:
            store.add_event(job_id, "warning", f"supernet: {exc}; training it again")
        else:
            if saved.largest_arch == largest and saved.schema == schema:
                store.add_event(job_id, "log", f"supernet: loaded from {path} (trained by an earlier run)")
                return saved.eval(), True
            store.add_event(job_id, "log", f"supernet: {path} is for another space or data; training again")
    store.add_event(
        job_id,
        "log",
        f"supernet: training {space.family} from {smallest.to_json()} to {largest.to_json()} for "
        f"{options.supernet_epochs} epoch(s) by the sandwich rule"
        + (", distilled from the reference" if shared.teacher is not None else ""),
    )
    import torch

    started = time.perf_counter()
    torch.manual_seed(train_config.seed)
    supernet = Supernet.for_family(schema, largest)
    result = train_supernet(
        supernet,
        shared.dataset.train,
        shared.dataset.valid,
        smallest=smallest,
        sample_arch=arch_sampler(space),
        config=dataclasses.replace(train_config, epochs=options.supernet_epochs),
        teacher=shared.teacher,
        distill=DistillConfig() if shared.teacher is not None else None,
    )
    supernet.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    supernet.save(path)
    best = result.history[result.best_epoch - 1]
    store.add_event(
        job_id,
        "log",
        f"supernet: trained in {time.perf_counter() - started:.0f} s ({result.steps} steps on "
        f"{result.device}; valid AUC of the largest {best.largest_auc:.4f}, the smallest "
        f"{best.smallest_auc:.4f}), saved to {path}",
    )
    return supernet, False


# -- stage 1 ----------------------------------------------------------------------------------------


def stage_one_searcher(space: SearchSpace, settings: SearchSettings) -> CandidateBatches:
    """The job's searcher, proposing candidates one by one into batches of ``candidates_per_trial``.

    Model-based searchers are set up for ``two_stage.candidates`` evaluations (their random warm-up
    follows); ``random`` is Optuna's random sampler, which, unlike Tune's variant generator, is a
    Searcher that proposes one config at a time.
    """
    from autocompress.engine.searchers import CandidateBatches
    from autocompress.search.tune_space import to_tune

    options = settings.two_stage
    if settings.searcher == "random":
        from optuna.samplers import RandomSampler
        from ray.tune.search.optuna import OptunaSearch

        from autocompress.engine.tuner import _quiet_optuna_list_choices

        _quiet_optuna_list_choices()
        inner = OptunaSearch(metric=OBJECTIVE, mode="max", sampler=RandomSampler(seed=settings.seed))
    else:
        inner = make_searcher(settings.model_copy(update={"num_trials": options.candidates}))
    return CandidateBatches(
        inner, to_tune(space), per_trial=options.candidates_per_trial, total=options.candidates
    )


def run_stage_one(
    space: SearchSpace,
    settings: SearchSettings,
    shared: SharedResources,
    supernet: Supernet,
    *,
    store: Store,
    job_id: str,
    name: str,
    train_config: TrainConfig,
    distill: bool = False,
    resume: bool = True,
) -> StageOneOutcome:
    """Score ``two_stage.candidates`` candidates on ``supernet``, ``candidates_per_trial`` per Tune trial.

    The Tune run ``name`` lives under ``settings.storage_path`` (default ``shared.work_dir/tune``) and
    is resumed with ``Tuner.restore`` when ``resume`` and it exists (a run of another job is
    refused). Each trial has ``cpus_per_trial`` / ``gpus_per_trial``; every candidate is recorded
    as it is scored (``CandidateRecorder``).
    """
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from autocompress.engine.explore import explore_trainable
    from autocompress.engine.recording import CandidateRecorder

    options = settings.two_stage
    location = TuneRunLocation(settings.storage_path or shared.work_dir / "tune", name)
    experiment = location.experiment
    trainable = tune.with_resources(
        tune.with_parameters(
            explore_trainable,
            space=space,
            shared=shared,
            supernet=supernet,
            sample_rows=options.valid_sample_rows,
        ),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    exists, owner = location.owner()
    if exists and owner != job_id:
        raise AutocompressError(
            f"name: the Tune run {experiment} belongs to job {owner!r}, not {job_id!r}; "
            "give each job its own name (its id) or storage_path"
        )
    started = time.perf_counter()
    resumed = resume and exists and tune.Tuner.can_restore(experiment)
    if resumed:
        store.add_event(job_id, "search", f"stage 1: resuming the Tune run at {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True)
    else:
        store.add_event(
            job_id,
            "search",
            f"stage 1: scoring {options.candidates} candidates proposed by {settings.searcher}, "
            f"{options.candidates_per_trial} per trial, on the supernet's weights",
        )
        tuner = tune.Tuner(
            trainable,
            param_space={},  # the space travels with the searcher (CandidateBatches)
            tune_config=tune.TuneConfig(
                search_alg=stage_one_searcher(space, settings),
                scheduler=FIFOScheduler(),
                num_samples=math.ceil(options.candidates / options.candidates_per_trial),
                max_concurrent_trials=settings.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=location.storage,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[CandidateRecorder(store, job_id, space, train_config, distill)],
                stop=CancelStopper(store, job_id),
                verbose=0,
            ),
        )
    location.claim(job_id)
    tuner.fit()
    seconds = time.perf_counter() - started
    raise_if_cancelled(store, job_id)
    counts: dict[str, int] = {}
    for trial in store.list_trials(job_id):
        if trial.config.get("stage") == 1:
            counts[trial.status.value] = counts.get(trial.status.value, 0) + 1
    return StageOneOutcome(experiment_path=experiment, seconds=seconds, counts=counts, resumed=resumed)


# -- stage 2 ----------------------------------------------------------------------------------------


def select_finalists(
    trials: list[TrialRecord], top_k: int, budget: Budget, latency_margin: float = 0.0
) -> list[TrialRecord]:
    """The ``top_k`` stage-1 candidates stage 2 trains, best first, one per distinct config.

    Stage 1 measures latency and size as stage 2 will, but its AUC comes before any fine-tuning
    (stage 2 recovered 0.0009-0.0016 of it on the default data), so only the ranking uses the AUC,
    not ``max_auc_drop``. First the candidates within the latency bound with ``latency_margin`` of
    it to spare and within the size bound (a p99 read again at the bound moves by ~10%), then those
    within the bounds, each group as successive Pareto fronts (valid AUC, latency, size; best AUC
    first); then the rest, closest to the bounds first (then best AUC).
    """
    records = {t.trial_key: t for t in trials}
    pool = finished_candidates(trials, stage=1)
    hardware = budget.model_copy(update={"max_auc_drop": None})
    spared = hardware
    if hardware.latency_ms is not None:
        spared = hardware.model_copy(update={"latency_ms": hardware.latency_ms * (1.0 - latency_margin)})
    ranked: list[Candidate] = []
    for bounds in (spared, hardware):
        taken = {c.trial_id for c in ranked}
        group = [c for c in pool if c.trial_id not in taken and bounds.check(c.metrics).feasible]
        while group:
            front = pareto_front(group)
            ranked += front
            chosen = {c.trial_id for c in front}
            group = [c for c in group if c.trial_id not in chosen]
    taken = {c.trial_id for c in ranked}
    ranked += sorted(
        (c for c in pool if c.trial_id not in taken),
        key=lambda c: (hardware.check(c.metrics).distance, -c.valid_auc),
    )
    finalists: list[TrialRecord] = []
    seen: set[str] = set()
    for candidate in ranked:
        record = records[candidate.trial_id]
        sampled = record.config.get("sampled")
        signature = json.dumps(sampled, sort_keys=True)
        if sampled is None or signature in seen or record.status is not TrialStatus.COMPLETED:
            continue
        seen.add(signature)
        finalists.append(record)
        if len(finalists) == top_k:
            break
    return finalists
