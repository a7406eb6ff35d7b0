"""The one choice autocompress makes about Ray's token auth, and the free ports a local Ray is given.

A Ray that autocompress starts itself for one machine (``make run``, ``autocompress search`` or
``serve`` without ``--address``, the API's own head, which listens on 127.0.0.1) runs with token
auth off unless ``RAY_AUTH_MODE`` is set: Ray 2.60 turns token auth on for new local clusters, and
a local run should not need a token file. Set ``RAY_AUTH_MODE=token`` (and ``RAY_AUTH_TOKEN``) to
keep it on. A cluster autocompress joins (``--address``, ``RAY_ADDRESS``, ``ray job submit``) is
left as its owner configured it: the cluster files turn token auth on.

``free_port`` picks a port for a component the caller names (a head's GCS, an agent, an API); it is
never one that another Ray component takes by default unless told otherwise, nor, where the kernel
leaves room, one it may give a socket bound to port 0.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import MutableMapping
from pathlib import Path

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
    """A TCP port free on ``host`` now that nothing else is about to take: none of
    ``RAY_DEFAULT_PORTS``, none this process handed out before and, where the kernel leaves room,
    none from its ephemeral range (``ip_local_port_range``) or Ray's worker ports (10002-19999).

    A port from the ephemeral range can be taken between this call and the caller's bind by any
    socket the kernel numbers itself: the ports a starting Ray binds to 0, each outgoing
    connection. Once such a race failed a Serve proxy's bind in CI.
    """
    low, high = _ABOVE_RAY_WORKERS, _ephemeral_ports()[0]
    while True:
        port = _RANDOM.randrange(low, high) if high - low >= 1000 else _kernel_port(host)
        if port in RAY_DEFAULT_PORTS or port in _HANDED_OUT:
            continue
        try:
            with socket.socket() as sock:
                sock.bind((host, port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port


_ABOVE_RAY_WORKERS = 20000
_HANDED_OUT: set[int] = set()
_RANDOM = random.SystemRandom()  # not the global generator, which a test or a trial may seed


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _kernel_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port
