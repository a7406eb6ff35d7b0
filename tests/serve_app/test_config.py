"""``serve_app/config.yaml`` is a Serve config whose args build the application; bad args name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autocompress.errors import AutocompressError

CONFIG = Path(__file__).parents[2] / "serve_app" / "config.yaml"


def test_config_yaml_is_a_serve_config_that_builds_the_app() -> None:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.import_path == "serve_app.serve:build_app"
    assert schema.http_options.host == "127.0.0.1"

    from serve_app.serve import ServeSettings, build_app

    settings = ServeSettings.from_dict(app.args)
    assert settings.model_server.autoscaling is not None
    assert settings.model_server.autoscaling.max_replicas == 4
    assert settings.model_server.batching.enabled
    assert isinstance(build_app(app.args), Application)


def test_settings_are_resolved_to_absolute_folders(tmp_path: Path) -> None:
    from serve_app.serve import ServeSettings

    settings = ServeSettings.from_dict({"db_url": "sqlite:///x.db", "base_dir": str(tmp_path)}).resolved()
    assert settings.artifact_root == str((tmp_path / "runs").resolve())
    assert settings.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"model_server": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "min_replicas (3)"),
        ({"model_server": {"batching": {"max_batch_size": 0}}}, "model_server.batching.max_batch_size"),
        ({"model_server": {"replicas": 2}}, "model_server.replicas: unknown field"),
        ({"api_auth": "nobody"}, "api_auth"),
    ],
)
def test_bad_args_are_refused_naming_the_field(args: dict[str, object], words: str) -> None:
    from serve_app.serve import build_app

    with pytest.raises(AutocompressError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build_app({"db_url": "sqlite:///x.db", **args})
