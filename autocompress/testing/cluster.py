"""Ray clusters on this machine for tests and benchmarks: a multi-node one, and a head in a process.

``local_cluster`` starts a head and workers with ``ray.cluster_utils.Cluster`` (each a real raylet with
its own object store and worker processes), every address on 127.0.0.1, the GCS on a free port, in a
temporary folder of its own, and connects this process to it. Ray normally swaps a loopback address for
the machine's own IP, which a loopback-only GCS does not answer on: the cluster switch below keeps it on
127.0.0.1 for this process and the node processes it starts. Ray's address file stays in that folder,
so a later plain ``ray.init()`` on this machine does not find this (by then stopped) cluster.

``ray_head`` runs ``ray start --head --block`` as its own process group with its own temp folder
(so its address file stays out of ``/tmp/ray`` as well), and stops it through that process, never
with ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autocompress.local_ray import free_port

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def local_cluster(
    workers: int,
    *,
    cpus_per_node: int = 1,
    head_resources: Mapping[str, float] | None = None,
    object_store_mb: int = 80,
) -> Iterator[Any]:
    """A connected ``Cluster``: a head with ``head_resources`` and ``workers`` workers, each node with
    ``cpus_per_node`` CPUs.

    Yields the ``ray.cluster_utils.Cluster`` (``head_node``, ``worker_nodes``, ``remove_node``); Ray is
    shut down and every node stopped when the block ends.
    """
    import ray
    import ray._private.utils
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    temp_dir = own_dir = tempfile.mkdtemp(prefix="ac-mn-")  # short: Ray's socket paths must stay short
    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    write_address = ray._private.utils.write_ray_address
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def write_here(ray_address: str, temp_dir: str | None = None) -> Any:
        return write_address(ray_address, own_dir)

    ray._private.utils.write_ray_address = write_here
    common: dict[str, Any] = {
        "num_cpus": cpus_per_node,
        "object_store_memory": object_store_mb * 1024**2,
        "temp_dir": temp_dir,
        "include_dashboard": False,
        "node_ip_address": LOOPBACK,
    }
    cluster = None
    try:
        head = {"resources": dict(head_resources or {}), "gcs_server_port": free_port(LOOPBACK), **common}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(workers):
            cluster.add_node(**common)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray._private.utils.write_ray_address = write_address
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    ready: Callable[[], bool],
    ready_within_s: float,
    stop_within_s: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """``ray start --head <args> --block`` in a process of its own, yielded once ``ready()`` is true.

    Its output goes to ``log``; ``RuntimeError`` with the log's end if it exits or is not ready in
    ``ready_within_s``. At the end it gets SIGTERM, and SIGKILL (its whole group) after
    ``stop_within_s``.
    """
    temp_dir = tempfile.mkdtemp(prefix="ac-head-")  # short: Ray's socket paths must stay short
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", *args, f"--temp-dir={temp_dir}"]
    with log.open("w") as output:
        head = subprocess.Popen(
            [*command, "--block"],
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ready_within_s
        while not ready():
            if head.poll() is not None:
                raise RuntimeError(f"the Ray head exited ({head.returncode}): {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Ray head was not ready in {ready_within_s} s: {log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield head
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(stop_within_s)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)
