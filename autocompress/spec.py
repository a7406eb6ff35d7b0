"""Specs a user writes (YAML/JSON) and the database stores: strict pydantic models, unknown fields refused.

For now this holds ``Target``; ``JobSpec``, ``Budget`` and ``SearchSettings`` join it in later issues.
Every spec model derives from ``SpecModel``: frozen, strict types, ``extra="forbid"``, and a
``from_dict`` that turns pydantic's errors into one ``AutocompressError`` naming each bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

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
            raise AutocompressError(
                _describe(exc, where or cls.__name__.lower(), sorted(cls.model_fields))
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what the database stores and ``from_dict`` reads back)."""
        return self.model_dump(mode="json")


def _describe(exc: ValidationError, where: str, allowed: list[str]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field; allowed: {allowed}")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err['input']!r})")
    return "; ".join(lines)


class Target(SpecModel):
    """Where latency counts: the device and ONNX Runtime setup a model will be served with.

    Latency budgets are checked against measurements taken with exactly these settings (execution
    provider, threads, graph optimisation, batch sizes), at ``percentile`` of ``repetitions`` timed
    runs after ``warmup`` untimed ones, each batch size measured for at most ``max_seconds``. Each
    percentile is the median of that percentile over ``rounds`` consecutive slices of the runs: a
    burst of load from outside the measurement (a neighbour's training step) spoils one slice, not
    the figure.
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


class SearchSettings(SpecModel):
    """How a job searches: the searcher by name, the trial budget, resources per trial, retries, storage.

    ``random`` is the baseline, ``tpe`` and ``evolution`` (regularised evolution) maximise ``metric``
    with the budget as a penalty, ``nsga2`` keeps the quality x latency x size front; ``asha``
    stops weak single-objective trials after their first epochs. ``storage_path`` is where Tune
    keeps its run (default: under the job's work folder); ``max_failures`` retries a crashed
    trial that many times.
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
