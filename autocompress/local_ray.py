"""The one choice autocompress makes about Ray's token auth, and the free ports a local Ray is given.

A Ray that autocompress starts itself for one machine (``make run``, ``autocompress search`` or
``serve`` without ``--address``, the API's own head, which listens on 127.0.0.1) runs with token
auth off unless ``RAY_AUTH_MODE`` is set: Ray 2.60 turns token auth on for new local clusters, and
a local run should not need a token file. Set ``RAY_AUTH_MODE=token`` (and ``RAY_AUTH_TOKEN``) to
keep it on. A cluster autocompress joins (``--address``, ``RAY_ADDRESS``, ``ray job submit``) is
left as its owner configured it: the cluster files turn token auth on.

``free_port`` picks a port for a component the caller names (a head's GCS, an agent, an API); it is
never one that another Ray component takes by default unless told otherwise.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

__all__ = ["AUTH_ENV", "LOCAL_AUTH_MODE", "RAY_DEFAULT_PORTS", "free_port", "local_ray_env"]

AUTH_ENV = "RAY_AUTH_MODE"
LOCAL_AUTH_MODE = "disabled"
# Ray's default ports (ray_constants), Redis's here too (6379): GCS / Redis, client server, Serve's
# HTTP and gRPC proxies, the dashboard, the dashboard agent's HTTP port. The last one lies in the
# kernel's ephemeral range: a free port handed to one component could be the one another takes.
RAY_DEFAULT_PORTS = frozenset({6379, 10001, 8000, 9000, 8265, 52365})


def local_ray_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """``env`` (default: this process's environment) readied for a Ray started on this machine.

    Token auth off and usage stats off, each only where the user has not chosen already.
    """
    target = os.environ if env is None else env
    target.setdefault(AUTH_ENV, LOCAL_AUTH_MODE)
    target.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, and none of ``RAY_DEFAULT_PORTS``."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port
