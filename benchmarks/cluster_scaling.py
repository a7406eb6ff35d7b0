"""Trials per hour against node count, on a multi-node Ray cluster on this one machine.

For 1, 2 and 3 nodes (``autocompress.testing.cluster.local_cluster``: one CPU each, the head declaring
``latency_cpu`` so every latency measurement runs there, as on a real cluster), the same random search
(tiny data, the DLRM mechanics space of the tests, one training epoch) runs with as many trials at a
time as there are nodes. Wall time from the search's start to its end gives trials per hour; the speed-up
is against one node, measured in the same run.

The limit is stated, not hidden: every node here shares this machine's cores (2 on the development
machine), so beyond that many nodes the extra trials only contend for the same CPUs, and the latency
measurements, serialised on the head, queue behind each other. On real nodes each node brings its own
cores and the search scales with trials at a time until the latency node or the searcher's sequential
suggestions become the bottleneck. Writes ``benchmarks/results/cluster_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autocompress.engine.trial import SharedResources
from autocompress.engine.tuner import run_search
from autocompress.local_ray import local_ray_env
from autocompress.measure.quality import auc
from autocompress.search.budget import Budget
from autocompress.search.space import load_search_space
from autocompress.spec import SearchSettings, Target
from autocompress.store import Store, TrialStatus
from autocompress.testing import tiny_setup
from autocompress.testing.cluster import local_cluster
from autocompress.train import TrainConfig, predict

RESULTS = Path(__file__).parent / "results" / "cluster_scaling.json"
SPACE = Path(__file__).resolve().parents[1] / "tests" / "search" / "spaces" / "dlrm.yaml"
TRAIN = TrainConfig(epochs=1, batch_size=256, lr=1e-2, early_stopping_patience=None)
TARGET = Target(batch_sizes=[1, 64], warmup=2, repetitions=20, max_seconds=1)


def run_once(nodes: int, trials: int, root: Path) -> dict[str, Any]:
    """One search of ``trials`` trials on ``nodes`` one-CPU nodes; its wall time and where things ran."""
    setup = tiny_setup("dlrm")
    space = load_search_space("dlrm", path=SPACE)
    budget = Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0)
    shared = SharedResources(
        dataset=setup.dataset,
        teacher=setup.trained,
        reference_valid_auc=auc(setup.dataset.valid.labels, predict(setup.trained, setup.dataset.valid)),
        target=TARGET,
        budget=budget,
        work_dir=root / "work",
        cache_dir=root / "cache",
    )
    settings = SearchSettings(
        searcher="random",
        num_trials=trials,
        max_concurrent=nodes,
        cpus_per_trial=1.0,
        storage_path=str(root / "tune"),
        seed=0,
    )
    with local_cluster(workers=nodes - 1, head_resources={"latency_cpu": 1}) as cluster:
        head = cluster.head_node.node_id
        with Store(root / "store.db") as store:
            job = store.create_job({"name": f"scaling-{nodes}"}, name=f"scaling-{nodes}")
            started = time.perf_counter()
            run_search(
                space, settings, shared, store=store, job_id=job.id, name="scaling", train_config=TRAIN
            )
            wall = time.perf_counter() - started
            rows = store.list_trials(job.id)
    done = [r for r in rows if r.status is TrialStatus.COMPLETED]
    return {
        "nodes": nodes,
        "trials": len(done),
        "wall_s": wall,
        "trials_per_hour": len(done) / wall * 3600,
        "nodes_used_for_training": len({r.metrics.get("node_id") for r in done}),
        "latency_on_head_only": all(r.metrics.get("latency_node_id") == head for r in done),
        "trial_seconds": sum(float(r.metrics.get("seconds_total", 0.0)) for r in done),
    }


def main() -> int:
    local_ray_env()  # Rays of our own on this machine (autocompress.local_ray)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6, help="trials per search (default 6)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="node counts (default 1 2 3)")
    args = parser.parse_args()
    rows = []
    for nodes in args.nodes:
        with tempfile.TemporaryDirectory(prefix="ac-scaling-") as tmp:
            rows.append(run_once(nodes, args.trials, Path(tmp)))
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["speedup"] = row["trials_per_hour"] / base
    table = Table(title=f"trials per hour against node count ({os.cpu_count()} cores shared by every node)")
    for column in ("nodes", "trials", "wall s", "trials / hour", "speed-up", "trained on", "latency on head"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["nodes"]),
            str(r["trials"]),
            f"{r['wall_s']:.0f}",
            f"{r['trials_per_hour']:.0f}",
            f"{r['speedup']:.2f}x",
            f"{r['nodes_used_for_training']} node(s)",
            "yes" if r["latency_on_head_only"] else "NO",
        )
    Console().print(table)
    RESULTS.write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
