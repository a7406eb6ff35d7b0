"""Specs a user writes (YAML/JSON) and the database stores: strict pydantic models, unknown fields refused.

For now this holds ``Target``; ``JobSpec``, ``Budget`` and ``SearchSettings`` join it in later issues.
Every spec model derives from ``SpecModel``: frozen, strict types, ``extra="forbid"``, and a
``from_dict`` that turns pydantic's errors into one ``AutocompressError`` naming each bad field.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocompress.errors import AutocompressError

Device = Literal["cpu", "cuda"]
ExecutionProvider = Literal["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]

DEFAULT_PROVIDER: dict[str, ExecutionProvider] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
PROVIDERS_ON_DEVICE: dict[str, tuple[ExecutionProvider, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
}


class SpecModel(BaseModel):
    """Base of every spec model: frozen, strict (no silent coercion), unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> Self:
        """Validate parsed YAML/JSON; errors become one ``AutocompressError`` naming each bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise AutocompressError(_describe(exc, where or cls.__name__.lower(), cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what the database stores and ``from_dict`` reads back)."""
        return self.model_dump(mode="json")


def _describe(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field; allowed: {_fields_at(model, err['loc'][:-1])}")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err['input']!r})")
    return "; ".join(lines)


def _fields_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The fields of the spec model nested at ``path`` (e.g. ``search.two_stage``) inside ``model``."""
    for part in path:
        info = model.model_fields.get(str(part))
        if info is None:
            break
        kinds = (info.annotation, *get_args(info.annotation))
        nested = next((t for t in kinds if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nested is None:
            break
        model = nested
    return sorted(model.model_fields)


class Target(SpecModel):
    """Where latency counts: the device and ONNX Runtime setup a model will be served with.

    Latency budgets are checked against measurements taken with exactly these settings (execution
    provider, threads, graph optimisation, batch sizes), at ``percentile`` of ``repetitions`` timed
    runs after ``warmup`` untimed ones, each batch size measured for at most ``max_seconds``. Each
    percentile is the median of that percentile over ``rounds`` consecutive slices of the runs: a
    burst of load from outside the measurement (a neighbour's training step) spoils one slice, not
    the figure. On a Ray cluster, latency is measured on the nodes that declare ``resource``
    (``autocompress.measure.placement``).
    """

    device: Device = "cpu"
    execution_provider: ExecutionProvider = Field(
        default="CPUExecutionProvider",
        description=(
            "ONNX Runtime provider; default: CPUExecutionProvider on cpu, CUDAExecutionProvider on cuda"
        ),
    )
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)
    graph_optimization: GraphOptimization = "all"
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 256], min_length=1)
    percentile: Literal[50, 95, 99] = 99
    warmup: int = Field(default=20, ge=0)
    repetitions: int = Field(default=200, ge=1)
    max_seconds: float = Field(default=10.0, gt=0)
    rounds: int = Field(
        default=3,
        ge=1,
        description="percentiles are the median over this many consecutive slices of the timed runs",
    )
    resource: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
        description=(
            "Ray resource of the nodes whose hardware this is: latency is measured only there; "
            "default: latency_<device> when the cluster declares it, else where the trial runs"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_provider_for_device(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("execution_provider") is None:
            device = data.get("device", "cpu")
            if device in DEFAULT_PROVIDER:
                data = {**data, "execution_provider": DEFAULT_PROVIDER[device]}
        return data

    @field_validator("batch_sizes")
    @classmethod
    def _unique_batch_sizes(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"batch sizes must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _provider_runs_on_device(self) -> Self:
        allowed = PROVIDERS_ON_DEVICE[self.device]
        if self.execution_provider not in allowed:
            raise ValueError(
                f"execution_provider {self.execution_provider!r} does not run on device "
                f"{self.device!r}; allowed there: {list(allowed)}"
            )
        return self


Searcher = Literal["random", "tpe", "nsga2", "evolution"]
MULTI_OBJECTIVE_SEARCHERS: tuple[str, ...] = ("nsga2",)

# URI schemes pyarrow.fs.FileSystem.from_uri opens, each with the pyarrow module it needs (a
# pyarrow build may lack one). Ray Tune reads and writes its runs through pyarrow.fs.
STORAGE_URI_SCHEMES: dict[str, str] = {
    "file": "pyarrow._fs",
    "s3": "pyarrow._s3fs",
    "gs": "pyarrow._gcsfs",
    "gcs": "pyarrow._gcsfs",
    "hdfs": "pyarrow._hdfs",
    "viewfs": "pyarrow._hdfs",
    "abfs": "pyarrow._azurefs",
    "abfss": "pyarrow._azurefs",
}
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def storage_uri_scheme(location: str) -> str | None:
    """The scheme of a storage URI (``s3`` of ``s3://bucket/prefix``); None for a local path."""
    match = _URI_SCHEME.match(location)
    return match.group(1) if match else None


class LatencyModelSettings(SpecModel):
    """The latency model of the target (``autocompress.engine.latency_model``) and when it skips a candidate.

    With ``enabled``, the search first fits a model of the target's latency at the budget's batch
    size on ``calibration_candidates`` candidates sampled from the space, built untrained and
    measured on the target (a few seconds each; cached in ``cache_dir``, default the job's latency
    cache, so a shared folder fits it once per node). Each trial is then predicted before it is
    built: one predicted over the latency budget by more than ``skip_margin`` (0.25: over 1.25x
    the budget) ends SKIPPED with its prediction, untrained. Off by default: the default job's
    ``realtime`` preset is already near its budget (none of 300 of its candidates is predicted
    over 1.25x it), so calibrating (~30 s quiet, ~90 s on a busy 2-core node) would save nothing.
    """

    enabled: bool = False
    skip_margin: float = Field(default=0.25, ge=0)
    calibration_candidates: int = Field(default=40, ge=8, le=1000)
    cache_dir: str | None = Field(default=None, min_length=1)


SearchStrategy = Literal["per_trial", "two_stage"]


class TwoStageSettings(SpecModel):
    """The two-stage search (``search.strategy: two_stage``; ``autocompress.engine.two_stage``).

    Stage 0 trains one weight-sharing supernet of the space for ``supernet_epochs`` (sandwich rule,
    distilled from the reference). Stage 1 scores ``candidates`` candidates, ``candidates_per_trial``
    per Tune trial, on the supernet's inherited weights with the post-training part of their policy,
    valid AUC on the first ``valid_sample_rows`` validation rows. Stage 2 trains the ``top_k`` best
    of stage 1's Pareto front from their inherited weights for ``finetune_epochs`` (at the job's
    learning rate) with their whole policy, as a per-trial search trains a candidate; the
    winner comes from stage 2 only. Stage 2 takes first the candidates whose stage-1 latency is
    ``latency_margin`` (a fraction) under the latency bound: a p99 at the bound, read again, moved
    by about 10% on the default job.
    """

    supernet_epochs: int = Field(default=3, ge=1)
    candidates: int = Field(default=300, ge=1)
    candidates_per_trial: int = Field(default=25, ge=1)
    top_k: int = Field(default=4, ge=1)
    valid_sample_rows: int = Field(default=20_000, ge=100)
    finetune_epochs: int = Field(default=1, ge=1)
    latency_margin: float = Field(default=0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _top_k_within_candidates(self) -> Self:
        if self.top_k > self.candidates:
            raise ValueError(
                f"top_k ({self.top_k}) must be at most candidates ({self.candidates}): stage 2 takes "
                "its candidates from stage 1's"
            )
        return self


class SearchSettings(SpecModel):
    """How a job searches: the searcher by name, the trial budget, resources per trial, retries, storage.

    ``random`` is the baseline, ``tpe`` and ``evolution`` (regularised evolution) maximise ``metric``
    with the budget as a penalty, ``nsga2`` keeps the quality x latency x size front; ``asha``
    stops weak single-objective trials after their first epochs. ``storage_path`` is where Tune
    keeps its run (default: under the job's work folder): a local folder, or a URI pyarrow.fs
    opens such as ``s3://bucket/prefix`` (for MinIO or another S3-compatible server:
    ``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``), credentials coming from the
    environment; ``max_failures`` retries a crashed trial that many times; ``latency_model``
    skips candidates predicted far over the latency budget (``LatencyModelSettings``).
    ``strategy``: ``per_trial`` trains every candidate from scratch in its own trial
    (``num_trials`` of them); ``two_stage`` scores many candidates on a supernet's shared weights
    and trains only the best (``two_stage``: ``TwoStageSettings``; ``num_trials`` is unused).
    """

    searcher: Searcher = "tpe"
    num_trials: int = Field(default=20, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    asha: bool = False
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_failures: int = Field(default=1, ge=0)
    storage_path: str | None = Field(default=None, min_length=1)
    seed: int = 0
    metric: Literal["valid_auc"] = "valid_auc"
    latency_model: LatencyModelSettings = Field(default_factory=LatencyModelSettings)
    strategy: SearchStrategy = "per_trial"
    two_stage: TwoStageSettings = Field(default_factory=TwoStageSettings)

    @field_validator("storage_path")
    @classmethod
    def _storage_path_or_known_uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = storage_uri_scheme(value)
        if scheme is None:
            if "://" in value:
                raise ValueError("a URI needs a scheme such as s3:// (or give a local folder)")
            return value
        if scheme not in STORAGE_URI_SCHEMES:
            raise ValueError(
                f"URI scheme {scheme!r} is not one pyarrow.fs opens; give a local folder or a URI "
                f"with one of {sorted(STORAGE_URI_SCHEMES)}"
            )
        if importlib.util.find_spec(STORAGE_URI_SCHEMES[scheme]) is None:
            raise ValueError(f"this pyarrow build cannot open {scheme}:// URIs")
        parts = urlsplit(value)
        if scheme != "file" and not parts.hostname:
            raise ValueError(f"a {scheme}:// URI needs a bucket or host: {scheme}://bucket/prefix")
        if parts.password is not None:
            # the spec is stored with the job and shown back: secrets belong in the environment
            raise ValueError(
                "credentials do not belong in the URI; give them through the environment "
                "(e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        return value

    @model_validator(mode="after")
    def _asha_per_trial(self) -> Self:
        if self.asha and self.strategy == "two_stage":
            raise ValueError(
                "asha stops trials between training epochs: it applies to strategy 'per_trial' only, "
                "got strategy 'two_stage'"
            )
        return self

    @model_validator(mode="after")
    def _asha_single_objective(self) -> Self:
        if self.asha and self.searcher in MULTI_OBJECTIVE_SEARCHERS:
            from typing import get_args

            single = [s for s in get_args(Searcher) if s not in MULTI_OBJECTIVE_SEARCHERS]
            raise ValueError(
                f"asha needs a single-objective searcher, got searcher {self.searcher!r}; "
                f"allowed with asha: {single}"
            )
        return self
