"""``serve_app/config.yaml`` is a Serve config of both applications; bad args name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autocompress.errors import AutocompressError

CONFIG = Path(__file__).parents[2] / "serve_app" / "config.yaml"


def test_config_yaml_describes_the_job_api_and_the_serving_application() -> None:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(data)
    control, serving = schema.applications
    assert (control.name, control.route_prefix) == ("autocompress", "/")
    assert control.import_path == "serve_app.serve:build_control_app"
    assert serving.import_path == "serve_app.serve:build_serving_app"
    assert schema.http_options.host == "127.0.0.1"
    assert control.args == serving.args  # one set of settings (a YAML anchor)

    from serve_app.serve import SERVING_APP_NAME, ServeSettings, build_control_app, build_serving_app

    settings = ServeSettings.from_dict(serving.args)
    assert serving.name == SERVING_APP_NAME
    assert (
        serving.route_prefix == settings.model_server.route_prefix == "/serving"
    )  # the job API redirects there
    assert settings.model_server.autoscaling is not None
    assert settings.model_server.autoscaling.max_replicas == 4
    assert settings.model_server.batching.enabled
    assert settings.model_server.alias_refresh_s <= 2  # an alias move reaches the replicas within 2 s
    assert isinstance(build_control_app(control.args), Application)
    assert isinstance(build_serving_app(serving.args), Application)


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
        ({"model_server": {"route_prefix": "serving"}}, "model_server.route_prefix"),
        ({"model_server": {"alias_refresh_s": 0}}, "model_server.alias_refresh_s"),
        ({"ingress": {"num_cpus": 1}}, "args.ingress: unknown field"),
        ({"api_auth": "nobody"}, "api_auth"),
    ],
)
def test_bad_args_are_refused_naming_the_field(args: dict[str, object], words: str) -> None:
    from serve_app.serve import build_control_app, build_serving_app

    for build in (build_control_app, build_serving_app):
        with pytest.raises(AutocompressError, match=words.replace("(", r"\(").replace(")", r"\)")):
            build({"db_url": "sqlite:///x.db", **args})
