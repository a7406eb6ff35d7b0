"""One search trial as library code: build, train or distil, compress, export, measure, check the budget.

The Ray Tune trainable is a thin shell around ``run_trial``: it builds a ``TrialSpec`` from the
sampled config and forwards every dict handed to ``report``. The metric names below are stable:
the Tune callback and the store keep them as they are.

Per-epoch reports (``stage="train"``, one per training epoch, so ASHA can stop a trial):
``trial_id``, ``stage``, ``node_id`` (the trial's Ray node; None without Ray), ``epoch``,
``train_loss``, ``valid_auc``, ``valid_logloss``, ``lr``, ``seconds``.

The final report (``stage="final"``, once, after a trial that was not stopped):

- quality on the valid split from ONNX Runtime outputs: ``valid_auc``, ``valid_logloss`` (and
  ``valid_gauc``, ``valid_ndcg_at_10`` when the data has groups), ``delta_auc`` (candidate minus
  the reference's valid AUC), ``train_valid_auc`` (the torch model's best epoch), ``best_epoch``,
  ``epochs_trained``;
- latency on the target: ``latency_ms`` (at the budget's batch size and percentile),
  ``p50_ms_b{B}``, ``p95_ms_b{B}``, ``p99_ms_b{B}`` for every measured batch size B (the
  target's plus the budget's), ``latency_cache_hit``; where it ran: ``node_id``,
  ``latency_node_id`` and ``latency_resource`` (the node that measured, and the resource it
  was placed by: None when measured in the trial's process);
- how busy the measuring node was (``autocompress.measure.busy``): ``latency_busy``,
  ``latency_busy_warning`` (a sentence when busy, else None), ``latency_attempts``,
  ``latency_probe_ms`` (the slower calibration probe around the measurement),
  ``latency_quiet_probe_ms`` (the node's quiet figure), ``latency_probe_ratio``, and the noise
  ``cv_b{B}`` and ``p99_over_p50_b{B}`` for every measured batch size B; a figure from the cache
  keeps the load it was measured under;
- size: ``size_bytes`` (ONNX file plus external data), ``size_mb`` (10^6 bytes), ``size_ratio``
  (the reference's ONNX bytes over this model's: 16 means 16x smaller; None when unknown),
  ``params`` (parameters of the compressed torch model), ``macs`` (multiply-accumulates per
  example in the ONNX graph);
- budget: ``feasible``, ``violations`` (readable strings), ``distance_to_feasible``;
- ``onnx_path``, ``techniques`` (the applied steps in order), and wall seconds per stage:
  ``seconds_train``, ``seconds_compress``, ``seconds_evaluate``, ``seconds_latency``,
  ``seconds_size``, ``seconds_total``;
- with a latency model (``SharedResources.latency_model``), its prediction made before the
  candidate was built: ``predicted_latency_ms`` (the budget's batch size and percentile),
  ``predicted_p50_ms_b{B}``, ``predicted_p95_ms_b{B}``, ``predicted_p99_ms_b{B}`` and
  ``predicted_latency_exact`` (False where training may still change the structure).

The skipped report (``stage="skipped"``, once, instead of everything above): a candidate the
latency model predicts over the latency budget by more than ``shared.skip_margin`` is never
built or trained. It carries ``trial_id``, ``node_id``, ``status="skipped"``, the prediction
(as above), ``predicted_distance_to_feasible`` (the predicted relative overrun), ``skip_reason``
and ``seconds_total``. Only an exact prediction skips.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autocompress.data.table import Dataset
from autocompress.errors import AutocompressError
from autocompress.measure.busy import BusyPolicy
from autocompress.search.budget import Budget
from autocompress.spec import Target
from autocompress.techniques.policy import Policy
from autocompress.train.config import DistillConfig, TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from autocompress.engine.latency_model import LatencyModel, LatencyPrediction
    from autocompress.supernet import Supernet
    from autocompress.train import EpochReport

TRIAL_SPEC_VERSION = 1
IN_TRIAL_BUSY = BusyPolicy(retries=0)  # flagged, not waited for: the job measures again once trials end
TrialStatus = Literal["completed", "stopped", "skipped"]
Report = Callable[[dict[str, Any]], bool | None]

_TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TrialStopped(Exception):
    """Raised by a ``report`` callback (or returned as True) to end the trial early, e.g. by ASHA."""


@dataclass(frozen=True)
class TrialSpec:
    """One candidate: a family's architecture, a compression policy, and how to train it.

    With ``distill`` the student learns from the shared teacher's logits (``distill_config``)
    instead of the labels alone. ``arch`` is validated against the family and stored in its
    canonical ``to_dict`` form; ``trial_id`` names the trial's work folder.
    """

    trial_id: str
    family: str
    arch: Mapping[str, Any]
    policy: Policy = field(default_factory=Policy)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    distill: bool = False
    distill_config: DistillConfig = field(default_factory=DistillConfig)
    version: int = TRIAL_SPEC_VERSION

    def __post_init__(self) -> None:
        from autocompress.models import arch_class

        if self.version != TRIAL_SPEC_VERSION:
            raise AutocompressError(
                f"trial spec: version {self.version!r} is not supported (supported: {TRIAL_SPEC_VERSION})"
            )
        if not isinstance(self.trial_id, str) or not _TRIAL_ID.match(self.trial_id):
            raise AutocompressError(
                f"trial spec: trial_id must be 1-128 letters, digits, '_', '.' or '-' starting with a "
                f"letter or digit, got {self.trial_id!r}"
            )
        if not isinstance(self.distill, bool):
            raise AutocompressError(f"trial spec: distill must be true or false, got {self.distill!r}")
        arch = arch_class(self.family).from_dict(self.arch)
        object.__setattr__(self, "arch", arch.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the store keeps as the trial's config)."""
        return {
            "version": self.version,
            "trial_id": self.trial_id,
            "family": self.family,
            "arch": dict(self.arch),
            "policy": self.policy.to_dict(),
            "train_config": self.train_config.to_dict(),
            "distill": self.distill,
            "distill_config": self.distill_config.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSpec:
        """Strict load: unknown keys are refused by name; nested configs load strictly too."""
        if not isinstance(data, Mapping):
            raise AutocompressError(f"trial spec: expected a mapping, got {type(data).__name__}")
        allowed = {
            "version",
            "trial_id",
            "family",
            "arch",
            "policy",
            "train_config",
            "distill",
            "distill_config",
        }
        unknown = sorted(str(k) for k in set(data) - allowed)
        if unknown:
            raise AutocompressError(f"trial spec: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"trial_id", "family", "arch"} - set(data))
        if missing:
            raise AutocompressError(f"trial spec: missing field(s) {missing}")
        return cls(
            trial_id=data["trial_id"],
            family=data["family"],
            arch=data["arch"],
            policy=Policy.from_dict(data.get("policy", {})),
            train_config=TrainConfig.from_dict(data.get("train_config", {})),
            distill=data.get("distill", False),
            distill_config=DistillConfig.from_dict(data.get("distill_config", {})),
            version=data.get("version", TRIAL_SPEC_VERSION),
        )


@dataclass
class SharedResources:
    """What every trial of one job shares: the data, the trained reference (teacher), and the rules.

    ``reference_valid_auc`` is the reference's validation AUC (``delta_auc`` is measured against
    it); ``reference_size_bytes`` its ONNX size, when known, for ``size_ratio``. Trials write into
    ``work_dir/<trial_id>``; latency results are cached (and measurements serialised) in
    ``cache_dir``. With ``latency_model`` (fitted for this target, at the budget's batch size),
    every trial is predicted before it is built, and one predicted over the latency budget by more
    than ``skip_margin`` is skipped. With ``supernet`` (stage 2 of a two-stage search) a trial starts
    from its sub-network's trained weights (``Supernet.extract``) instead of a fresh model.
    """

    dataset: Dataset
    teacher: nn.Module | None
    reference_valid_auc: float
    target: Target
    budget: Budget
    work_dir: Path
    cache_dir: Path
    reference_size_bytes: int | None = None
    latency_model: LatencyModel | None = None
    skip_margin: float = 0.25
    supernet: Supernet | None = None

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.cache_dir = Path(self.cache_dir)


@dataclass
class TrialResult:
    """Outcome of one trial: ``completed`` with every final metric, ``stopped`` early by its report, or
    ``skipped`` on the latency model's prediction.

    A stopped trial has only the training history and the last epoch's metrics, and no ONNX file;
    a skipped one only its prediction.
    """

    trial_id: str
    status: TrialStatus
    metrics: dict[str, Any]
    history: list[EpochReport] = field(default_factory=list)
    onnx_path: Path | None = None


def predict_latency(spec: TrialSpec, shared: SharedResources) -> LatencyPrediction | None:
    """The latency model's prediction for the candidate; None without a model, or one it cannot describe."""
    model = shared.latency_model
    if model is None or model.family != spec.family or model.batch_size != shared.budget.batch_size:
        return None
    try:
        return model.predict(spec.arch, spec.policy)
    except AutocompressError:  # a technique the model does not describe: built and measured as usual
        return None


def skip_reason(prediction: LatencyPrediction, budget: Budget, margin: float) -> str | None:
    """Why a candidate is skipped (predicted over the latency budget by more than ``margin``), else None.

    Only an exact prediction skips: one whose structure training may still change is built.
    """
    if budget.latency_ms is None or not prediction.exact:
        return None
    predicted = prediction.at(budget.percentile)
    limit = budget.latency_ms * (1.0 + margin)
    if predicted <= limit:
        return None
    return (
        f"predicted p{budget.percentile} at batch {budget.batch_size} {predicted:.3g} ms > "
        f"{limit:.3g} ms (the budget's {budget.latency_ms:.3g} ms + {margin:.0%})"
    )


def measured_target(target: Target, budget: Budget) -> Target:
    """The target with the budget's batch size added, so the budget's latency is always measured."""
    if budget.batch_size in target.batch_sizes:
        return target
    return target.model_copy(update={"batch_sizes": sorted({*target.batch_sizes, budget.batch_size})})


def onnx_quality(onnx_path: Path, target: Target, table: Any) -> dict[str, float]:
    """What the ONNX file scores on ``table`` with ONNX Runtime on ``target`` (as runnable here):
    ``valid_auc``, ``valid_logloss`` and the other figures of ``quality_report``."""
    from autocompress.export import create_session
    from autocompress.measure.evaluation import onnx_logits, quality_report
    from autocompress.measure.placement import runnable_here

    session = create_session(onnx_path, runnable_here(target))
    quality = quality_report(table, onnx_logits(session, table))
    return {f"valid_{name.replace('@', '_at_')}": value for name, value in quality.items()}


def run_trial(spec: TrialSpec, shared: SharedResources, report: Report | None = None) -> TrialResult:
    """Run one candidate through the whole pipeline and return (and report) its final metrics.

    (with a latency model: predict its latency, and skip it when far over the budget) -> build(arch)
    (or slice it out of ``shared.supernet`` with its trained weights) -> train on labels, or distil
    from ``shared.teacher`` -> ``apply_policy`` (torch-level
    techniques, fine-tune, export, ONNX-level techniques) -> quality on the valid split from ONNX
    Runtime -> latency via ``measure_on_target`` -> size -> ``shared.budget.check``. ``report`` gets
    one dict per epoch and one final dict, or the one skipped dict (see the module docstring);
    returning True from it, or raising ``TrialStopped``, ends the trial with status ``stopped``.
    Other errors propagate.
    """

    from autocompress.measure import macs_per_example, onnx_size_bytes, parameter_count
    from autocompress.measure.latency_cache import cached_latency, latency_cache_key
    from autocompress.measure.placement import current_node_id, measure_on_target
    from autocompress.models import build, load_arch
    from autocompress.techniques import TechniqueContext, apply_policy
    from autocompress.train import fit

    started = time.perf_counter()
    data = shared.dataset
    if spec.distill and shared.teacher is None:
        raise AutocompressError(
            f"trial {spec.trial_id}: distill is true but the shared resources have no teacher model"
        )
    work_dir = shared.work_dir / spec.trial_id
    node_id = current_node_id()
    metrics: dict[str, Any] = {"trial_id": spec.trial_id, "node_id": node_id}
    stopped = False

    prediction = predict_latency(spec, shared)
    if prediction is not None:
        metrics.update(prediction.metrics())
        metrics["predicted_latency_ms"] = prediction.at(shared.budget.percentile)
        reason = skip_reason(prediction, shared.budget, shared.skip_margin)
        if reason is not None and shared.budget.latency_ms is not None:
            metrics.update(
                {
                    "stage": "skipped",
                    "status": "skipped",
                    "predicted_distance_to_feasible": (
                        metrics["predicted_latency_ms"] / shared.budget.latency_ms - 1.0
                    ),
                    "skip_reason": reason,
                    "seconds_total": time.perf_counter() - started,
                }
            )
            if report is not None:
                with contextlib.suppress(TrialStopped):
                    report(dict(metrics))
            return TrialResult(spec.trial_id, "skipped", metrics)

    def on_epoch(epoch: EpochReport) -> bool:
        nonlocal stopped
        if report is None:
            return False
        try:
            stop = report(
                {"trial_id": spec.trial_id, "stage": "train", "node_id": node_id, **epoch.to_dict()}
            )
            stop = stop is True
        except TrialStopped:
            stop = True
        stopped = stopped or stop
        return stop

    t0 = time.perf_counter()
    if shared.supernet is None:
        model = build(spec.family, data.schema, spec.arch, seed=spec.train_config.seed)
    else:
        model = shared.supernet.extract(load_arch(spec.arch)).train()
    trained = fit(
        model,
        data.train,
        data.valid,
        spec.train_config,
        teacher=shared.teacher if spec.distill else None,
        distill=spec.distill_config if spec.distill else None,
        on_epoch=on_epoch,
    )
    metrics["seconds_train"] = time.perf_counter() - t0
    metrics["epochs_trained"] = len(trained.history)
    metrics["best_epoch"] = trained.best_epoch
    metrics["train_valid_auc"] = trained.best_valid_auc
    if stopped:
        last = trained.history[-1]
        metrics.update(
            {
                "status": "stopped",
                "epoch": last.epoch,
                "valid_auc": last.valid_auc,
                "valid_logloss": last.valid_logloss,
            }
        )
        metrics["seconds_total"] = time.perf_counter() - started
        return TrialResult(spec.trial_id, "stopped", metrics, trained.history)

    t0 = time.perf_counter()
    ctx = TechniqueContext(
        schema=data.schema,
        work_dir=work_dir,
        train=data.train,
        valid=data.valid,
        train_config=spec.train_config,
        teacher=shared.teacher,
        target=shared.target,
    )
    compressed = apply_policy(model, spec.policy, ctx)
    onnx_path = compressed.onnx_path
    metrics["seconds_compress"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics.update(onnx_quality(onnx_path, shared.target, data.valid))
    metrics["delta_auc"] = metrics["valid_auc"] - shared.reference_valid_auc
    metrics["seconds_evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    budget = shared.budget
    target = measured_target(shared.target, budget)
    key = latency_cache_key(onnx_path, data.schema, target)
    metrics["latency_cache_hit"] = cached_latency(shared.cache_dir, key) is not None
    # no waiting for a quiet node here: other trials train beside this one, and the job measures
    # every finished candidate again once none does (``comparison.remeasure_latency``), waiting there
    placed = measure_on_target(
        onnx_path, data.schema, target, cache_dir=shared.cache_dir, key=key, busy_policy=IN_TRIAL_BUSY
    )
    latency = placed.report
    metrics["latency_node_id"] = placed.node_id
    metrics["latency_resource"] = placed.resource
    metrics["latency_ms"] = latency.at(budget.batch_size, budget.percentile)
    for row in latency.rows:
        for p in (50, 95, 99):
            metrics[f"p{p}_ms_b{row.batch_size}"] = getattr(row, f"p{p}_ms")
        metrics[f"cv_b{row.batch_size}"] = row.cv
        metrics[f"p99_over_p50_b{row.batch_size}"] = row.p99_over_p50
    load = latency.load
    metrics["latency_busy"] = latency.busy
    metrics["latency_busy_warning"] = latency.busy_warning
    metrics["latency_attempts"] = load.attempts if load else None
    metrics["latency_probe_ms"] = max(load.probe_before_ms, load.probe_after_ms) if load else None
    metrics["latency_quiet_probe_ms"] = load.quiet_probe_ms if load else None
    metrics["latency_probe_ratio"] = load.probe_ratio if load else None
    metrics["seconds_latency"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    size_bytes = onnx_size_bytes(onnx_path)
    metrics["size_bytes"] = size_bytes
    metrics["size_mb"] = size_bytes / 1e6
    ref_bytes = shared.reference_size_bytes
    metrics["size_ratio"] = ref_bytes / size_bytes if ref_bytes else None
    metrics["params"] = parameter_count(compressed.model)
    metrics["macs"] = macs_per_example(onnx_path)
    metrics["seconds_size"] = time.perf_counter() - t0

    feasibility = budget.check(metrics)
    metrics["feasible"] = feasibility.feasible
    metrics["violations"] = list(feasibility.violations)
    metrics["distance_to_feasible"] = feasibility.distance
    metrics["onnx_path"] = str(onnx_path)
    metrics["techniques"] = list(compressed.applied)
    metrics["status"] = "completed"
    metrics["seconds_total"] = time.perf_counter() - started
    if report is not None:
        with contextlib.suppress(TrialStopped):  # nothing is left to stop
            report({"stage": "final", **metrics})
    return TrialResult(spec.trial_id, "completed", metrics, trained.history, onnx_path)
