"""The one choice autocompress makes about Ray's token auth, written once.

A Ray that autocompress starts itself for one machine (``make run``, ``autocompress search`` or
``serve`` without ``--address``, the API's own head, which listens on 127.0.0.1) runs with token
auth off unless ``RAY_AUTH_MODE`` is set: Ray 2.60 turns token auth on for new local clusters, and
a local run should not need a token file. Set ``RAY_AUTH_MODE=token`` (and ``RAY_AUTH_TOKEN``) to
keep it on. A cluster autocompress joins (``--address``, ``RAY_ADDRESS``, ``ray job submit``) is
left as its owner configured it: the cluster files turn token auth on.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["AUTH_ENV", "LOCAL_AUTH_MODE", "local_ray_env"]

AUTH_ENV = "RAY_AUTH_MODE"
LOCAL_AUTH_MODE = "disabled"


def local_ray_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """``env`` (default: this process's environment) readied for a Ray started on this machine.

    Token auth off and usage stats off, each only where the user has not chosen already.
    """
    target = os.environ if env is None else env
    target.setdefault(AUTH_ENV, LOCAL_AUTH_MODE)
    target.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return target
