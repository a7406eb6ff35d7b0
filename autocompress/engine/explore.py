"""Stage 1 of a two-stage search: candidates scored in seconds on a supernet's inherited weights.

One candidate (``Explorer.evaluate``): with a latency model, its prediction (a candidate predicted
far over the latency budget is skipped, as a per-trial search skips it) -> its sub-network sliced
out of the supernet with the trained weights (``Supernet.extract``) -> the post-training part of its
policy -> export to ONNX -> valid AUC by ONNX Runtime on a validation sample (next to the
reference's AUC on the same rows, for ``delta_auc``) -> latency: the prediction when the job has a
latency model, else measured on the target with the latency model's short settings
(``calibration_target``) -> size -> the budget. Its ONNX file is not kept: stage 2 builds again.

The post-training part of a policy is its structural part, ``structural_policy``, read from the
techniques' own metadata: ONNX-level techniques (``level == "onnx"``: dynamic and static int8, int4
matmuls, fp16, 4/8-bit tables) run as they are; torch-level techniques that change the structure
(pruning, low rank, frequency hashing, narrower or split tables) run with their ``finetune_epochs``
at 0 and Taylor pruning ranks by L1 (no gradient step); distillation, which only trains, is left out.
Stage 2 trains the finalists with the whole policy.

``explore_trainable`` is the thin Tune trainable: its config is a batch of candidates
(``searchers.CandidateBatches``), each scored and reported as one result carrying its index as
``candidate`` (``recording.CandidateRecorder`` writes it to the store, the searcher learns from it).
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.engine.trial import (
    IN_TRIAL_BUSY,
    SharedResources,
    TrialSpec,
    onnx_quality,
    predict_latency,
    skip_reason,
)
from autocompress.search.space import SearchSpace, decode

if TYPE_CHECKING:
    from autocompress.data.table import Table
    from autocompress.spec import Target
    from autocompress.supernet import Supernet

__all__ = ["Explorer", "explore_trainable"]

MAX_ERROR_CHARS = 4_000


class Explorer:
    """Scores stage-1 candidates of ``space`` on ``supernet``'s weights (see the module docstring).

    The validation sample is the first ``sample_rows`` rows of the valid split; the reference's AUC
    on it (the teacher's, else ``shared.reference_valid_auc``) is computed once.
    """

    def __init__(
        self, space: SearchSpace, shared: SharedResources, supernet: Supernet, sample_rows: int
    ) -> None:
        from autocompress.engine.latency_model import calibration_target
        from autocompress.measure.quality import auc
        from autocompress.train import predict

        self.space = space
        self.shared = shared
        self.supernet = supernet
        self.sample: Table = shared.dataset.valid.head(sample_rows)
        teacher = shared.teacher
        self.reference_auc = (
            shared.reference_valid_auc
            if teacher is None
            else auc(self.sample.labels, predict(teacher, self.sample))
        )
        self.quick_target: Target = calibration_target(shared.target, shared.budget.batch_size)

    def evaluate(self, candidate_id: str, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The candidate's report: ``stage`` ``final``, ``skipped`` or ``failed`` (with ``error``).

        Never raises for a candidate that cannot be built, compressed or scored: it fails alone.
        """
        from autocompress.measure.placement import current_node_id

        started = time.perf_counter()
        metrics: dict[str, Any] = {"trial_id": candidate_id, "node_id": current_node_id(), "search_stage": 1}
        try:
            arch, policy = decode(self.space, sampled)
            spec = TrialSpec(trial_id=candidate_id, family=self.space.family, arch=arch, policy=policy)
            prediction = predict_latency(spec, self.shared)
            budget = self.shared.budget
            if prediction is not None:
                metrics.update(prediction.metrics())
                metrics["predicted_latency_ms"] = prediction.at(budget.percentile)
                reason = skip_reason(prediction, budget, self.shared.skip_margin)
                if reason is not None and budget.latency_ms is not None:
                    return {
                        **metrics,
                        "stage": "skipped",
                        "status": "skipped",
                        "predicted_distance_to_feasible": metrics["predicted_latency_ms"] / budget.latency_ms
                        - 1,
                        "skip_reason": reason,
                        "seconds_total": time.perf_counter() - started,
                    }
            metrics.update(self._score(spec, metrics.get("predicted_latency_ms")))
        except Exception as exc:  # one candidate's failure is its own, not its batch's
            text = "".join(traceback.format_exception(exc))
            return {
                **metrics,
                "stage": "failed",
                "status": "failed",
                "error": text if len(text) <= MAX_ERROR_CHARS else "..." + text[-MAX_ERROR_CHARS:],
                "seconds_total": time.perf_counter() - started,
            }
        metrics.update(stage="final", status="completed", seconds_total=time.perf_counter() - started)
        return metrics

    def _score(self, spec: TrialSpec, predicted_ms: float | None) -> dict[str, Any]:
        from autocompress.engine.latency_model import structural_policy
        from autocompress.measure import onnx_size_bytes, parameter_count
        from autocompress.measure.placement import measure_on_target
        from autocompress.models import load_arch
        from autocompress.techniques import TechniqueContext, apply_policy

        shared, budget, data = self.shared, self.shared.budget, self.shared.dataset
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        model = self.supernet.extract(load_arch(spec.arch))
        out["seconds_extract"] = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="ac-stage1-") as tmp:
            t0 = time.perf_counter()
            # train: id counts (frequency hashing) and calibration rows; nothing is fine-tuned
            ctx = TechniqueContext(
                schema=data.schema, work_dir=Path(tmp), train=data.train, valid=None, target=shared.target
            )
            compressed = apply_policy(model, structural_policy(spec.policy), ctx)
            onnx_path = compressed.onnx_path
            out["techniques"] = list(compressed.applied)
            out["seconds_compress"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            out.update(onnx_quality(onnx_path, shared.target, self.sample))
            out["valid_rows"] = len(self.sample)
            out["delta_auc"] = out["valid_auc"] - self.reference_auc
            out["seconds_evaluate"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            if predicted_ms is not None:
                out["latency_ms"], out["latency_source"] = predicted_ms, "predicted"
            else:
                placed = measure_on_target(
                    onnx_path,
                    data.schema,
                    self.quick_target,
                    cache_dir=shared.cache_dir,
                    busy_policy=IN_TRIAL_BUSY,
                )
                report = placed.report
                out["latency_ms"] = report.at(budget.batch_size, budget.percentile)
                out["latency_source"] = "measured"
                out["latency_busy"] = report.busy
                out["latency_node_id"] = placed.node_id
                for row in report.rows:
                    for p in (50, 95, 99):
                        out[f"p{p}_ms_b{row.batch_size}"] = getattr(row, f"p{p}_ms")
            out["seconds_latency"] = time.perf_counter() - t0
            size_bytes = onnx_size_bytes(onnx_path)
        out["size_bytes"] = size_bytes
        out["size_mb"] = size_bytes / 1e6
        ref_bytes = shared.reference_size_bytes
        out["size_ratio"] = ref_bytes / size_bytes if ref_bytes else None
        out["params"] = parameter_count(compressed.model)
        feasibility = budget.check(out)
        out["feasible"] = feasibility.feasible
        out["violations"] = list(feasibility.violations)
        out["distance_to_feasible"] = feasibility.distance
        return out


def explore_trainable(
    config: dict[str, Any],
    *,
    space: SearchSpace,
    shared: SharedResources,
    supernet: Supernet,
    sample_rows: int,
) -> None:
    """One stage-1 Tune trial: score each candidate of ``config["candidates"]`` and report it at once."""
    from ray import tune

    from autocompress.engine.recording import candidate_key
    from autocompress.engine.tuner import OBJECTIVE, objective, searcher_stand_ins

    trial_id = tune.get_context().get_trial_id()
    explorer = Explorer(space, shared, supernet, sample_rows)
    for index, sampled in enumerate(config["candidates"]):
        metrics = explorer.evaluate(candidate_key(trial_id, index), sampled)
        report = {**metrics, "candidate": index}
        if metrics["stage"] != "failed":
            report.update(searcher_stand_ins(metrics, shared))
            report[OBJECTIVE] = objective(metrics)
        tune.report(report)
