import json
import math
from typing import Any

import pytest

from autocompress.errors import AutocompressError
from autocompress.train import DistillConfig, TrainConfig


def test_train_config_round_trips_through_json() -> None:
    config = TrainConfig(
        epochs=3, lr=0.01, schedule="plateau", clip_grad_norm=1.0, early_stopping_patience=None, seed=7
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == 1
    assert TrainConfig.from_dict(data) == config


def test_train_config_stores_numbers_as_floats() -> None:
    config = TrainConfig(lr=1, clip_grad_norm=5)
    assert isinstance(config.lr, float) and config.lr == 1.0
    assert isinstance(config.to_dict()["clip_grad_norm"], float)


def test_from_dict_refuses_unknown_keys_by_name() -> None:
    with pytest.raises(AutocompressError, match=r"unknown field\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1, "epochs": 2})
    with pytest.raises(AutocompressError, match=r"allowed: .*'lr'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(AutocompressError, match=r"\['temp'\]"):
        DistillConfig.from_dict({"temp": 2.0})
    with pytest.raises(AutocompressError, match="expected a mapping"):
        TrainConfig.from_dict([("lr", 0.1)])  # type: ignore[arg-type]


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert TrainConfig.from_dict({"lr": 0.05}) == TrainConfig(lr=0.05)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("lr", 0.0, r"\(0, inf\)"),
        ("lr", -1e-3, r"\(0, inf\)"),
        ("lr", math.nan, r"\(0, inf\)"),
        ("lr", "fast", r"\(0, inf\)"),
        ("epochs", 0, ">= 1"),
        ("epochs", True, ">= 1"),
        ("epochs", 2.5, ">= 1"),
        ("batch_size", 0, ">= 1"),
        ("eval_batch_size", -4, ">= 1"),
        ("weight_decay", -0.1, r"\[0, inf\)"),
        ("optimizer", "sgd", r"\['adamw'\]"),
        ("schedule", "linear", r"\['constant', 'warmup_cosine', 'step', 'plateau'\]"),
        ("warmup_steps", -1, ">= 0"),
        ("step_size", 0, ">= 1"),
        ("gamma", 0.0, r"\(0, 1\]"),
        ("gamma", 1.5, r"\(0, 1\]"),
        ("plateau_patience", 0, ">= 1"),
        ("plateau_factor", 1.0, r"\(0, 1\)"),
        ("clip_grad_norm", 0.0, "null for off"),
        ("early_stopping_patience", 0, "null for off"),
        ("seed", -1, ">= 0"),
        ("device", "tpu", r"\['auto', 'cpu', 'cuda'\]"),
        ("amp", "yes", "true or false"),
        ("version", 2, "supported: 1"),
    ],
)
def test_bad_train_config_names_the_field_and_what_is_allowed(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(AutocompressError, match=rf"train config: {field}\b.*{allowed}"):
        TrainConfig(**{field: value})
    with pytest.raises(AutocompressError, match=rf"{field}\b"):
        TrainConfig.from_dict({field: value})


def test_distill_config_round_trips_and_checks_ranges() -> None:
    config = DistillConfig(temperature=4, alpha=0)
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.temperature == 4.0 and isinstance(config.alpha, float)
    with pytest.raises(AutocompressError, match=r"distill config: temperature .*\(0, inf\)"):
        DistillConfig(temperature=0.0)
    with pytest.raises(AutocompressError, match=r"distill config: alpha .*\[0, 1\]"):
        DistillConfig(alpha=1.5)
    with pytest.raises(AutocompressError, match=r"alpha .*\[0, 1\]"):
        DistillConfig(alpha=-0.1)
