"""Ray's token auth: off only for a Ray autocompress starts on this machine, and only unless chosen."""

import pytest

from autocompress.local_ray import AUTH_ENV, local_ray_env
from serve_app.launcher import _driver_env


def test_a_local_ray_runs_without_token_auth_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_ray_env({})[AUTH_ENV] == "disabled"
    assert local_ray_env({AUTH_ENV: "token"})[AUTH_ENV] == "token"  # the user's choice stands
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert _driver_env(local=True)[AUTH_ENV] == "disabled"  # drivers of the API's own head


def test_drivers_joining_a_cluster_keep_its_auth_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert AUTH_ENV not in _driver_env("sqlite:///x.db", local=False)  # Ray's secure default applies
    monkeypatch.setenv(AUTH_ENV, "token")
    assert _driver_env(local=False)[AUTH_ENV] == "token"
