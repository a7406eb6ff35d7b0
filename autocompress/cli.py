"""The ``autocompress`` command line: generate data, train and evaluate models, run the default job.

Every error a user can cause is printed as one line naming the field or file, with exit code 2;
no traceback.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from autocompress.errors import AutocompressError

app = typer.Typer(
    help="Compress e-commerce ranking and retrieval models under a latency budget.", no_args_is_help=True
)
data_app = typer.Typer(help="Datasets: generate the synthetic e-commerce log.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Print user errors as one clear line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutocompressError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "input"
                console.print(f"[bold red]error:[/] {where}: {err['msg']}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


DatasetKind = Annotated[str, typer.Option("--dataset", help="synthetic | criteo | movielens | tabular")]
Scale = Annotated[str, typer.Option(help="synthetic data size: default (200k items, 100k users) | tiny")]
DataPath = Annotated[
    str | None, typer.Option("--path", help="data file or folder (criteo, movielens, tabular)")
]
SchemaPath = Annotated[str | None, typer.Option("--schema", help="YAML schema file (tabular)")]
Rows = Annotated[int | None, typer.Option("--rows", help="synthetic rows (overrides the scale's)")]


def _dataset(kind: str, scale: str, path: str | None, schema: str | None, rows: int | None) -> Any:
    from autocompress.data.registry import DatasetSpec, load_dataset

    options: dict[str, Any] = {}
    if rows is not None:
        if kind != "synthetic":
            raise AutocompressError("--rows applies to the synthetic dataset only")
        options["n_rows"] = rows
    spec = DatasetSpec.model_validate(
        {"kind": kind, "scale": scale, "path": path, "schema_path": schema, "options": options}
    )
    with console.status(f"loading {kind} data ..."):
        started = time.perf_counter()
        dataset = load_dataset(spec)
    console.print(
        f"data: {dataset.name}, train {len(dataset.train):,} / valid {len(dataset.valid):,} / "
        f"test {len(dataset.test):,} rows ({time.perf_counter() - started:.1f} s)"
    )
    return dataset


def _train_and_print(
    dataset: Any, family: str, arch: dict[str, Any] | None, train_config: Any, out: Path, threads: int
) -> Any:
    from autocompress.engine.model import train_and_measure
    from autocompress.spec import Target

    target = Target(intra_op_threads=threads)
    with Progress(
        TextColumn("[bold]training {task.fields[family]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=None, family=family, status="")

        def on_step(step: int, total: int) -> None:
            if step % 20 == 0 or step == total:
                progress.update(task, completed=step, total=total)

        def on_epoch(epoch: Any) -> None:
            progress.update(task, status=f"epoch {epoch.epoch}: valid AUC {epoch.valid_auc:.4f}")

        report = train_and_measure(
            dataset, family, arch, train_config, target, out, on_step=on_step, on_epoch=on_epoch
        )
    _print_report(report)
    console.print(f"artifacts: {out}/ (model.onnx, model.pt, schema.json, arch.json, report.json)")
    return report


def _print_report(report: Any) -> None:
    table = RichTable(title=f"{report.family} on {report.dataset} (ONNX Runtime, test split)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("test AUC", f"{report.test['auc']:.4f}")
    if report.oracle_auc is not None:
        table.add_row("oracle AUC (ceiling)", f"{report.oracle_auc:.4f}")
        table.add_row("gap to oracle", f"{report.oracle_auc - report.test['auc']:.4f}")
    table.add_row("popularity-only AUC", f"{report.popularity_auc:.4f}")
    table.add_row("test logloss", f"{report.test['logloss']:.4f}")
    if "gauc" in report.test:
        table.add_row("test GAUC (per session)", f"{report.test['gauc']:.4f}")
        table.add_row("test NDCG@10", f"{report.test['ndcg@10']:.4f}")
    table.add_row("size (MB)", f"{report.size_bytes / 1e6:.2f}")
    table.add_row("parameters", f"{report.parameters:,}")
    table.add_row("MACs per example", f"{report.macs_per_example:,}")
    threads = report.latency["target"]["intra_op_threads"]
    for row in report.latency["rows"]:
        b = row["batch_size"]
        table.add_row(
            f"latency batch {b} p50 / p99 (ms, {threads} thread)",
            f"{row['p50_ms']:.3f} / {row['p99_ms']:.3f}",
        )
    table.add_row("train seconds", f"{report.seconds['train']:.1f}")
    console.print(table)


@app.command()
@_user_errors
def run(
    scale: Scale = "default",
    rows: Rows = None,
    trials: Annotated[int | None, typer.Option(help="trials to search (default: the job's 6)")] = None,
    db: Annotated[
        str | None, typer.Option(help="database URL (default: AUTOCOMPRESS_DB_URL or ./autocompress.db)")
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="where trials, reports and artifacts go")] = Path("runs"),
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


@app.command()
@_user_errors
def train(
    family: Annotated[
        str, typer.Option(help="model family: dlrm | deepfm | dcn_v2 | two_tower | din")
    ] = "dlrm",
    arch: Annotated[
        str | None, typer.Option(help="ArchConfig as JSON (default: the family's reference)")
    ] = None,
    dataset: DatasetKind = "synthetic",
    scale: Scale = "default",
    path: DataPath = None,
    schema: SchemaPath = None,
    rows: Rows = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 3,
    batch_size: Annotated[int, typer.Option(help="training batch size")] = 2048,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads for latency")] = 1,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/<family>)")] = None,
) -> None:
    """Train one model family on a dataset, export it to ONNX and report its quality and latency."""
    from autocompress.models import FAMILIES
    from autocompress.train import TrainConfig

    if family not in FAMILIES:
        raise AutocompressError(f"unknown model family {family!r}; known: {list(FAMILIES)}")
    arch_dict = _json_option("--arch", arch)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    data = _dataset(dataset, scale, path, schema, rows)
    _train_and_print(data, family, arch_dict, config, out or Path("runs") / family, threads)


@app.command()
@_user_errors
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="a folder written by `autocompress train` or `run`")],
    dataset: DatasetKind = "synthetic",
    scale: Scale = "default",
    path: DataPath = None,
    schema: SchemaPath = None,
    rows: Rows = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads")] = 1,
) -> None:
    """Score an exported model on a dataset's test split and measure its latency."""
    from autocompress.data.schema import FeatureSchema
    from autocompress.export import create_session
    from autocompress.measure import measure_latency
    from autocompress.measure.evaluation import onnx_logits, quality_report
    from autocompress.spec import Target

    onnx_path, schema_path = model_dir / "model.onnx", model_dir / "schema.json"
    for needed in (onnx_path, schema_path):
        if not needed.is_file():
            raise AutocompressError(f"{needed} does not exist: give a folder written by `autocompress train`")
    model_schema = FeatureSchema.from_json(schema_path.read_text())
    data = _dataset(dataset, scale, path, schema, rows)
    if data.schema != model_schema:
        raise AutocompressError(
            f"the model's schema ({schema_path}) does not match the {dataset} data's schema: "
            "evaluate on the data it was trained on"
        )
    target = Target(intra_op_threads=threads)
    session = create_session(onnx_path, target)
    quality = quality_report(data.test, onnx_logits(session, data.test))
    if data.oracle_auc is not None:
        quality["oracle_auc"] = data.oracle_auc
    latency = measure_latency(session, model_schema, target)
    table = RichTable(title=f"{model_dir} on {data.name} test")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in quality.items():
        table.add_row(key, f"{value:.4f}")
    for row in latency.rows:
        table.add_row(
            f"latency batch {row.batch_size} p50 / p99 (ms)", f"{row.p50_ms:.3f} / {row.p99_ms:.3f}"
        )
    console.print(table)


@app.command()
@_user_errors
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
    db: Annotated[
        str | None, typer.Option(help="database URL (default: AUTOCOMPRESS_DB_URL or ./autocompress.db)")
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="where trials, reports and artifacts go")] = Path("runs"),
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


@app.command()
@_user_errors
def report(
    job_id: Annotated[str, typer.Argument(help="the job id `autocompress search` printed")],
    db: Annotated[
        str | None, typer.Option(help="database URL (default: AUTOCOMPRESS_DB_URL or ./autocompress.db)")
    ] = None,
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
    if result.get("rows"):
        _print_comparison(result["rows"], "test split")
    if result.get("report"):
        console.print(f"report: {result['report']}")


@data_app.command("generate")
@_user_errors
def data_generate(
    out: Annotated[Path, typer.Option(help="output folder: data.parquet + schema.json + generator.json")],
    scale: Scale = "default",
    rows: Rows = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Stream the synthetic e-commerce log to Parquet, one chunk of sessions at a time."""
    from autocompress.data.synthetic import SyntheticConfig, write_parquet

    overrides: dict[str, Any] = {"seed": seed}
    if rows is not None:
        overrides["n_rows"] = rows
    config = SyntheticConfig.tiny(**overrides) if scale == "tiny" else SyntheticConfig(**overrides)
    summary = write_parquet(config, out)
    console.print(
        f"wrote {summary['rows']:,} rows ({summary['sessions']:,} sessions, CTR {summary['ctr']:.3f}, "
        f"oracle AUC over all rows {summary['oracle_auc']:.4f}) to {out}"
    )


def _search_and_print(
    job_spec: Any, store: Any, work_dir: Path, *, address: str | None, job_id: str | None = None
) -> Any:
    """Run one job on Ray with live progress (trials done / running / failed, best so far); print its end."""
    import os
    import threading

    from autocompress.engine.job import run_job

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
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
    for col in ("model", "test AUC", "ΔAUC", "MB", "smaller", "b256 p99 ms", "b256 speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["name"],
            f"{r['test_auc']:.4f}",
            f"{r['delta_auc']:+.4f}",
            f"{r['size_mb']:.2f}",
            f"{r['size_ratio']:.1f}x",
            f"{r['p99_ms_b256']:.3f}",
            f"{r['speedup_b256']:.2f}x",
        )
    console.print(table)


def _json_option(name: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutocompressError(f"{name} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise AutocompressError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


from autocompress.cli_remote import jobs_app, models_app  # noqa: E402  (after _user_errors: they use it)

app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
import autocompress.cli_serve  # noqa: E402, F401  (adds `serve` and `predict`)

if __name__ == "__main__":
    app()
