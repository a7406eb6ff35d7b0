"""A search on a multi-node Ray cluster on this machine: trials spread over the nodes, latency is measured
only on the node labelled with the target's resource, and a worker node killed mid-search does not lose
the search (its trials are retried on the nodes that are left).

Three real Ray nodes (``autocompress.testing.cluster.local_cluster``: a head and two workers, one CPU
each, on 127.0.0.1), tiny data, a real SQLite store. Only the head declares ``latency_cpu``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress.engine.tuner import run_search
from autocompress.store import Store, TrialStatus
from autocompress.testing.cluster import local_cluster
from tests.engine.test_faults import TRAIN, _settings, _shared, _space

pytestmark = pytest.mark.slow


@pytest.fixture()
def cluster() -> Iterator[Any]:
    """Head (1 CPU, ``latency_cpu: 1``) and two workers (1 CPU each), on 127.0.0.1 and free ports."""
    with local_cluster(workers=2, head_resources={"latency_cpu": 1}) as started:
        yield started


def _kill_a_busy_worker(
    cluster: Any, db: Path, job_id: str, stop: threading.Event, killed: list[str]
) -> None:
    """Once a trial has reported from a worker node and still runs, remove that node (kill -9 of its
    processes)."""
    workers = {node.node_id: node for node in cluster.worker_nodes}
    deadline = time.monotonic() + 240
    with Store(db) as store:
        while not stop.is_set() and time.monotonic() < deadline:
            for row in store.list_trials(job_id):
                node_id = (row.metrics or {}).get("node_id")
                if row.status is TrialStatus.RUNNING and node_id in workers:
                    cluster.remove_node(workers[node_id], allow_graceful=False)
                    killed.append(node_id)
                    return
            time.sleep(0.1)


def test_a_search_spreads_over_nodes_measures_on_the_target_node_and_survives_a_killed_worker(
    tmp_path: Path, cluster: Any
) -> None:
    head_id = cluster.head_node.node_id
    worker_ids = {node.node_id for node in cluster.worker_nodes}
    stop, killed = threading.Event(), []
    with Store(tmp_path / "store.db") as store:
        job = store.create_job({"name": "multinode"}, name="multinode")
        killer = threading.Thread(
            target=_kill_a_busy_worker,
            args=(cluster, tmp_path / "store.db", job.id, stop, killed),
            daemon=True,
        )
        killer.start()
        try:
            outcome = run_search(
                _space(tmp_path),
                _settings(tmp_path, num_trials=5, max_concurrent=3, max_failures=2),
                _shared(tmp_path),
                store=store,
                job_id=job.id,
                name="multinode",
                train_config=TRAIN,
            )
        finally:
            stop.set()
            killer.join(10)
        rows = store.list_trials(job.id)

    assert len(killed) == 1 and killed[0] in worker_ids  # a worker node really died mid-search
    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 5
    assert len(rows) == 5 and all(r.status is TrialStatus.COMPLETED for r in rows)  # nothing lost
    assert any(r.attempts >= 2 for r in rows)  # the killed node's trial ran again
    metrics = [r.metrics for r in rows]
    # trials trained on more than one node, and finished on nodes that were alive at the end
    assert len({m["node_id"] for m in metrics}) >= 2
    assert killed[0] not in {m["node_id"] for m in metrics}
    # every latency figure was taken on the head, the one node declaring latency_cpu
    assert {m["latency_node_id"] for m in metrics} == {head_id}
    assert {m["latency_resource"] for m in metrics} == {"latency_cpu"}
    assert all(m["latency_ms"] > 0 for m in metrics)
