"""``autocompress run``, ``search`` and ``report``: search jobs on Ray, driven from this process.

``search --job-id ID`` is also the driver the REST API's launcher starts for every job. Ray and
the engine are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table as RichTable

from autocompress.cli._common import Db, Rows, Scale, console, user_errors
from autocompress.errors import AutocompressError

__all__ = ["report", "run", "search"]

WorkDir = Annotated[Path, typer.Option(help="where trials, reports and artifacts go")]


@user_errors
def run(
    scale: Scale = "default",
    rows: Rows = None,
    trials: Annotated[int | None, typer.Option(help="trials to search (default: the job's 6)")] = None,
    db: Db = None,
    work_dir: WorkDir = Path("runs"),
) -> None:
    """The default job (examples/default_job.yaml): a DLRM `realtime` search on the embedded data.

    Trains the reference, searches architecture and compression policy with Ray Tune under the
    preset's latency budget, and prints the winner next to fp32 ONNX and ONNX Runtime dynamic int8
    on the test split, with the report's path.
    """
    from autocompress.job import DEFAULT_JOB_FILE, load_job_spec
    from autocompress.store import Store, default_store_url

    if rows is not None and rows < 1:
        raise AutocompressError(f"--rows must be a positive integer, got {rows}")
    if trials is not None and trials < 1:
        raise AutocompressError(f"--trials must be a positive integer, got {trials}")
    job_spec = load_job_spec(DEFAULT_JOB_FILE)
    dataset = job_spec.dataset.model_copy(
        update={
            "scale": scale,
            "options": {**job_spec.dataset.options, **({"n_rows": rows} if rows is not None else {})},
        }
    )
    search = job_spec.search.model_copy(update={"num_trials": trials or job_spec.search.num_trials})
    job_spec = type(job_spec).from_dict(
        {**job_spec.to_dict(), "dataset": dataset.model_dump(), "search": search.model_dump()}, where="run"
    )
    _search_and_print(job_spec, Store(db or default_store_url()), work_dir, address=None)


@user_errors
def search(
    spec: Annotated[Path | None, typer.Option("--spec", help="the job spec (YAML or JSON)")] = None,
    job_id: Annotated[
        str | None,
        typer.Option(
            "--job-id", help="run a recorded job (PENDING, or RUNNING to resume it); spec from the store"
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ] = None,
    db: Db = None,
    work_dir: WorkDir = Path("runs"),
) -> None:
    """Run a search job on Ray: reference, search, winner, test comparison, report.

    With ``--job-id`` this is the driver the REST API launches (and what ``ray job submit --
    autocompress search --job-id ID`` runs): the job's spec comes from the database.
    """
    from autocompress.job import JobSpec, load_job_spec
    from autocompress.store import Store, default_store_url

    if (spec is None) == (job_id is None):
        raise AutocompressError("give either --spec FILE (a new job) or --job-id ID (a recorded job)")
    store = Store(db or default_store_url())
    if job_id is not None:
        job = store.get_job(job_id)
        if job.status.terminal:
            raise AutocompressError(f"--job-id: job {job_id} is already {job.status.value}; nothing to run")
        job_spec = JobSpec.from_dict(job.spec, where=f"job {job_id}: spec")
    else:
        assert spec is not None
        job_spec = load_job_spec(spec)
    _search_and_print(job_spec, store, work_dir, address=address, job_id=job_id)


@user_errors
def report(
    job_id: Annotated[str, typer.Argument(help="the job id `autocompress search` printed")],
    db: Db = None,
) -> None:
    """Show a recorded job: its state, trials, the comparison on the test split and the report's path."""
    from autocompress.store import Store, default_store_url

    store = Store(db or default_store_url())
    job = store.get_job(job_id)
    progress = store.job_progress(job_id)
    console.print(
        f"job {job.id} ({job.name}): {job.status.value}" + (f" — {job.reason}" if job.reason else "")
    )
    console.print(f"trials: {progress.done} done, {progress.running} running, {progress.failed} failed")
    result = job.result or {}
    if result.get("budget"):
        console.print("budget: " + "; ".join(result["budget"]["text"].values()), highlight=False)
    if result.get("rows"):
        _print_comparison(result["rows"], "test split")
    if result.get("report"):
        console.print(f"report: {result['report']}")


def _search_and_print(
    job_spec: Any, store: Any, work_dir: Path, *, address: str | None, job_id: str | None = None
) -> Any:
    """Run one job on Ray with live progress (trials done / running / failed, best so far); print its end."""
    import os
    import threading

    from autocompress.engine.job import run_job
    from autocompress.local_ray import local_ray_env

    if address is None and not os.environ.get("RAY_ADDRESS"):  # a Ray of our own (see local_ray)
        local_ray_env()
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if job_id is None:
        job_id = store.create_job(job_spec.to_dict(), name=job_spec.name).id
    console.print(f"job {job_id}: {job_spec.name}, {job_spec.family}, {job_spec.search.num_trials} trials")
    finished = threading.Event()
    with Progress(
        TextColumn("[bold]trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("search", total=job_spec.search.num_trials, status="starting")

        def follow() -> None:
            while not finished.wait(2.0):
                try:
                    progress.update(task, **_progress_fields(store, job_id))
                except Exception:  # the display must never end the job
                    continue

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            result = run_job(job_spec, store, work_dir, job_id=job_id)
        finally:
            finished.set()
            follower.join()
    if result.status == "CANCELLED":
        console.print(f"job {result.job_id}: {result.reason}")
        return result
    _print_comparison(result.rows, f"job {result.job_id}: test split, {job_spec.family}")
    counts = store.job_progress(result.job_id)
    console.print(f"trials: {counts.done} done, {counts.failed} failed")
    if result.reason:
        console.print(f"[bold yellow]{result.reason}[/]: see the closest candidates in the report")
    if result.budget:
        console.print("budget: " + "; ".join(result.budget["text"].values()), highlight=False)
    for note in result.notes:
        console.print(f"[bold yellow]note:[/] {note}")
    console.print(f"report: {result.report_path}")
    return result


def _progress_fields(store: Any, job_id: str) -> dict[str, Any]:
    """The progress bar's state: trials finished, the latest log line, and the best feasible so far."""
    from autocompress.search.pareto import finished_candidates, select_winner

    counts = store.job_progress(job_id)
    finished = finished_candidates(store.list_trials(job_id))
    winner = select_winner(finished).winner if finished else None
    events = store.list_events(job_id)
    status = f"running {counts.running}, failed {counts.failed}"
    if winner is not None:
        status += f"; best within budget: valid AUC {winner.valid_auc:.4f}, {winner.latency_ms:.2f} ms"
    elif events:
        status += f"; {events[-1].message[:60]}"
    return {"completed": counts.done + counts.failed, "status": status}


def _print_comparison(rows: list[dict[str, Any]], title: str) -> None:
    """The winner next to fp32 ONNX and ORT dynamic int8, as ``run_job`` measured them."""
    table = RichTable(title=title)
    for col in ("model", "test AUC", "ΔAUC", "MB", "smaller", "b256 p99 ms", "b256 speed-up", "in budget"):
        table.add_column(col, justify="right")
    for r in rows:
        within = r.get("within_budget")  # absent in the results of jobs that predate the final check
        table.add_row(
            r["name"],
            f"{r['test_auc']:.4f}",
            f"{r['delta_auc']:+.4f}",
            f"{r['size_mb']:.2f}",
            f"{r['size_ratio']:.1f}x",
            f"{r['p99_ms_b256']:.3f}",
            f"{r['speedup_b256']:.2f}x",
            "-" if within is None else ("yes" if within else "no"),
        )
    console.print(table)
