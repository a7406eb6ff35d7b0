"""Ray's token auth: off only for a Ray autocompress starts on this machine, and only unless chosen;
the ports a local Ray is given."""

import socket
from typing import Any

import pytest

from autocompress import local_ray
from autocompress.local_ray import AUTH_ENV, RAY_DEFAULT_PORTS, free_port, local_ray_env
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


def test_a_free_port_is_never_one_a_ray_component_takes_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GCS given port 52365 failed a cluster's start: the dashboard agent takes it by default."""
    monkeypatch.setattr(local_ray, "_ephemeral_ports", lambda: (1024, 65535))  # no room: the kernel picks
    offered = [6379, 52365, 41234]

    class Kernel(socket.socket):  # hands out the offered ports as if they were the free ones
        def getsockname(self) -> Any:
            return ("127.0.0.1", offered.pop(0))

    monkeypatch.setattr(local_ray.socket, "socket", Kernel)
    assert free_port() == 41234 and not offered
    assert {6379, 52365, 8265} <= RAY_DEFAULT_PORTS


def test_a_free_port_is_none_the_kernel_or_ray_numbers_itself_nor_one_handed_out_before() -> None:
    """A Serve proxy once failed to bind its free port: a starting Ray had bound it to 0 meanwhile."""
    ephemeral_low, _ = local_ray._ephemeral_ports()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= port < ephemeral_low for port in ports), sorted(ports)[:3] + sorted(ports)[-3:]
    assert not set(ports) & RAY_DEFAULT_PORTS
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # still free


def test_a_taken_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        offered = [taken.getsockname()[1], 8000]
        spare = free_port()

        class Offer:
            def randrange(self, low: int, high: int) -> int:
                return offered.pop(0) if offered else spare

        monkeypatch.setattr(local_ray, "_HANDED_OUT", set())
        monkeypatch.setattr(local_ray, "_RANDOM", Offer())
        assert free_port() == spare and not offered
