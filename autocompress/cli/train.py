"""``autocompress train``, ``evaluate`` and ``data ...``: one model family on one dataset, no search.

Torch, the data loaders and the engine are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from autocompress.cli._common import Rows, Scale, console, user_errors
from autocompress.errors import AutocompressError

__all__ = ["data_app", "data_generate", "evaluate", "train"]

data_app = typer.Typer(help="Datasets: generate the synthetic e-commerce log.", no_args_is_help=True)

DatasetKind = Annotated[str, typer.Option("--dataset", help="synthetic | criteo | movielens | tabular")]
DataPath = Annotated[
    str | None, typer.Option("--path", help="data file or folder (criteo, movielens, tabular)")
]
SchemaPath = Annotated[str | None, typer.Option("--schema", help="YAML schema file (tabular)")]


@user_errors
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


@user_errors
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


@data_app.command("generate")
@user_errors
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


def _dataset(kind: str, scale: str, path: str | None, schema: str | None, rows: int | None) -> Any:
    """Load the dataset the options name, printing its split sizes and how long loading took."""
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
    """Train, export and measure one model with a live progress bar; print its report."""
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
    """One trained model's quality, size and latency on the test split, as a table."""
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
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


def _json_option(name: str, text: str | None) -> dict[str, Any] | None:
    """Parse an option given as a JSON object; a user error names the option when it is not one."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutocompressError(f"{name} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise AutocompressError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value
