"""JobSpec: what a user submits (YAML or JSON), versioned and strict.

It composes the lower-level specs (dataset, target, budget, search settings, training recipe), so
it lives above them rather than in ``autocompress.spec``, which they import.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from autocompress.data.registry import DatasetSpec
from autocompress.errors import AutocompressError
from autocompress.search.budget import Budget
from autocompress.spec import SearchSettings, SpecModel, Target
from autocompress.tracking import TrackingSettings

JOB_SPEC_VERSION: Literal[1] = 1
# the job `make run` (`autocompress run`) runs; shipped in the package, like the search spaces
DEFAULT_JOB_FILE = Path(str(files("autocompress") / "examples" / "default_job.yaml"))


class JobSpec(SpecModel):
    """One search job: data, model family, search space and preset, budget, target, search settings.

    ``budget`` overrides the preset's; ``train`` holds TrainConfig fields for the reference and the
    trials; ``distill`` makes trials learn from the reference (the teacher).
    """

    version: Literal[1] = JOB_SPEC_VERSION
    name: str = Field(default="job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    family: str = "dlrm"
    preset: str | None = None
    search_space: str | None = None
    budget: Budget | None = None
    target: Target = Field(default_factory=Target)
    search: SearchSettings = Field(default_factory=SearchSettings)
    train: dict[str, Any] = Field(default_factory=dict)
    distill: bool = True
    deploy: bool = False
    tracking: TrackingSettings | None = None  # MLflow: each trial a run, the winner a model

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from autocompress.models import FAMILIES

        if value not in FAMILIES:
            raise ValueError(f"unknown model family {value!r}; known: {list(FAMILIES)}")
        return value

    @field_validator("train")
    @classmethod
    def _train_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        from autocompress.train import TrainConfig

        TrainConfig.from_dict(value)  # refuses unknown fields and bad values, naming them
        return value

    def train_config(self) -> Any:
        """The TrainConfig of the reference and the trials."""
        from autocompress.train import TrainConfig

        return TrainConfig.from_dict(self.train)


def load_job_spec(path: str | Path) -> JobSpec:
    """Read a JobSpec from a YAML or JSON file; errors name the file and the field."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise AutocompressError(f"job spec file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise AutocompressError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise AutocompressError(f"{p}: a job spec is a mapping of fields, got {type(data).__name__}")
    return JobSpec.from_dict(data, where=str(p))
