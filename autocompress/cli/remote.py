"""``autocompress jobs ...`` and ``autocompress models ...``: the REST job API from the command line.

Each command talks to the API at ``--url`` (or ``AUTOCOMPRESS_API_URL``) with ``--token`` (or
``AUTOCOMPRESS_API_TOKEN``); what the API refuses is printed as one line (exit 2), as is a server
that cannot be reached.
"""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from autocompress.cli._common import user_errors
from autocompress.client import API_TOKEN_ENV, API_URL_ENV, DEFAULT_API_URL, ApiClient
from autocompress.errors import AutocompressError

__all__ = ["jobs_app", "models_app"]

jobs_app = typer.Typer(
    help="Search jobs on the REST API: submit, list, show, trials, pareto, cancel, logs.",
    no_args_is_help=True,
)
models_app = typer.Typer(
    help="Registered models on the REST API: list, show, register a trial, download.", no_args_is_help=True
)
console = Console(soft_wrap=True)  # ids and paths stay whole, on one line
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")

Url = Annotated[str, typer.Option("--url", envvar=API_URL_ENV, help="the API's base URL")]
Token = Annotated[
    str | None, typer.Option("--token", envvar=API_TOKEN_ENV, help="bearer token", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value))


def _job_line(job: dict[str, Any]) -> str:
    return f"job {job['id']} ({job['name']}): {job['status']}" + (
        f" — {job['reason']}" if job.get("reason") else ""
    )


def _progress_line(job: dict[str, Any]) -> str:
    p = job["progress"]
    line = f"trials: {p['done']} done, {p['running']} running, {p['failed']} failed of {p['num_trials']}"
    best = job.get("best")
    if best:
        line += (
            f"; best so far {best['trial_key']}: valid AUC {best['valid_auc']:.4f}, "
            f"{best['latency_ms']:.3f} ms, {best['size_mb']:.2f} MB"
            + ("" if best["feasible"] else " (misses the budget)")
        )
    return line


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise AutocompressError(f"job spec file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise AutocompressError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AutocompressError(f"{path}: a job spec is a mapping of fields, got {type(data).__name__}")
    return data


@jobs_app.command("submit")
@user_errors
def jobs_submit(
    spec: Annotated[Path, typer.Argument(help="the job spec (YAML or JSON)")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="resubmitting with the same key returns the same job")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """Submit a search job; it runs when the server's queue has room."""
    with ApiClient(url, token) as client:
        job = client.submit_job(_read_spec(spec), idempotency_key=idempotency_key)
        console.print(_job_line(job))
        if wait:
            job = _wait(client, job["id"])
            if job["status"] != "SUCCEEDED":
                raise typer.Exit(1)


def _wait(client: ApiClient, job_id: str, poll_s: float = 2.0) -> dict[str, Any]:
    shown = ""
    while True:
        job = client.get_job(job_id)
        line = f"{job['status']}: {_progress_line(job)}"
        if line != shown:
            console.print(line, highlight=False)
            shown = line
        if job["status"] in TERMINAL:
            console.print(_job_line(job), highlight=False)
            return job
        time.sleep(poll_s)


@jobs_app.command("list")
@user_errors
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="PENDING | RUNNING | SUCCEEDED | FAILED | CANCELLED")
    ] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 50,
    offset: Annotated[int, typer.Option(help="jobs to skip")] = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """List jobs, newest first."""
    with ApiClient(url, token) as client:
        page = client.list_jobs(status, limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = RichTable(title=f"jobs {offset + 1}-{offset + len(page['jobs'])} of {page['total']}")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("name", "status", "reason", "created"):
        table.add_column(column)
    for job in page["jobs"]:
        table.add_row(job["id"], job["name"], job["status"], job["reason"] or "", job["created_at"][:19])
    console.print(table)


@jobs_app.command("show")
@user_errors
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """A job's state, progress, best trial so far and registered models."""
    with ApiClient(url, token) as client:
        job = client.get_job(job_id)
    if as_json:
        _print_json(job)
        return
    console.print(_job_line(job), highlight=False)
    console.print(_progress_line(job), highlight=False)
    budget = (job.get("result") or {}).get("budget")
    if budget:  # the rule as given and the ms / MB it resolved to on the job's target
        console.print("budget: " + "; ".join(budget["text"].values()), highlight=False)
    if job.get("cancel_requested_by") and job["status"] not in TERMINAL:
        console.print(f"cancel requested by {job['cancel_requested_by']}")
    for model_id in job.get("model_ids", []):
        console.print(f"model: {model_id}")
    if (job.get("result") or {}).get("report"):
        console.print(f"report: {client.url}/v1/jobs/{job['id']}/report")


def _trials_table(title: str, trials: list[dict[str, Any]]) -> RichTable:
    """Trials as rows: key, stage, status, valid AUC, latency (``~`` predicted), size, techniques,
    whether the final report met the budget."""
    table = RichTable(title=title)
    table.add_column("trial", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    for column in ("valid AUC", "latency ms", "MB"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("techniques", overflow="fold")  # the one that wraps on a narrow terminal
    table.add_column("in budget", no_wrap=True)
    for trial in trials:
        m = trial.get("metrics") or {}
        latency = _number(m.get("latency_ms"))
        if latency == "-" and isinstance(m.get("predicted_latency_ms"), int | float):
            latency = "~" + _number(m["predicted_latency_ms"])
        feasible = m.get("feasible")
        table.add_row(
            trial["trial_key"],
            str(m.get("stage") or "-"),
            trial["status"],
            _number(m.get("valid_auc")),
            latency,
            _number(m.get("size_mb")),
            " > ".join(m.get("techniques") or []) or "-",
            "-" if feasible is None else ("yes" if feasible else "no"),
        )
    return table


@jobs_app.command("trials")
@user_errors
def jobs_trials(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    status: Annotated[
        str | None, typer.Option(help="PENDING | RUNNING | COMPLETED | FAILED | STOPPED | SKIPPED")
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """A job's trials: stage, status, valid AUC, latency, size, techniques, in budget."""
    with ApiClient(url, token) as client:
        trials = client.list_trials(job_id, status=status)
    if as_json:
        _print_json(trials)
        return
    console.print(_trials_table(f"trials of job {job_id}: {len(trials)}", trials))


@jobs_app.command("pareto")
@user_errors
def jobs_pareto(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """The Pareto-optimal finished trials (valid AUC x latency x size), best AUC first, and the winner."""
    with ApiClient(url, token) as client:
        pareto = client.job_pareto(job_id)
        trials = {t["trial_key"]: t for t in client.list_trials(job_id, status="COMPLETED")}
    if as_json:
        _print_json(pareto)
        return
    front = [trials[c["trial_key"]] for c in pareto["front"] if c["trial_key"] in trials]
    console.print(_trials_table(f"Pareto front of job {job_id}: {len(front)} trials", front))
    if pareto["winner"] is not None:
        console.print(f"winner: {pareto['winner']['trial_key']}", highlight=False)
    elif pareto["reason"]:
        closest = ", ".join(c["trial_key"] for c in pareto["closest"])
        console.print(f"no winner: {pareto['reason']}; closest: {closest or '-'}", highlight=False)
    if front:
        console.print("register one: autocompress models register JOB TRIAL [--name N] [--tag k=v]")


@jobs_app.command("cancel")
@user_errors
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    by: Annotated[str | None, typer.Option(help="who cancels (default: your user name)")] = None,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """Cancel a job: a queued one at once, a running one within seconds."""
    with ApiClient(url, token) as client:
        job = client.cancel_job(job_id, by=by or getpass.getuser())
    console.print(_job_line(job), highlight=False)
    if job["status"] not in TERMINAL:
        console.print(f"cancel requested by {job['cancel_requested_by']}; the search stops within seconds")


@jobs_app.command("logs")
@user_errors
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """A job's log: state changes, trials, driver events."""
    after = 0
    with ApiClient(url, token) as client:
        while True:
            page = client.job_events(job_id, after_id=after)
            for event in page["events"]:
                console.print(f"{event['time'][:19]}  {event['kind']:<8} {event['message']}", highlight=False)
            after = page["next_after_id"]
            if not follow or (not page["events"] and client.get_job(job_id)["status"] in TERMINAL):
                return
            if not page["events"]:
                time.sleep(2.0)


@models_app.command("list")
@user_errors
def models_list(
    job: Annotated[str | None, typer.Option("--job", help="only the models of this job")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 50,
    offset: Annotated[int, typer.Option(help="models to skip")] = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """List registered models, newest first."""
    with ApiClient(url, token) as client:
        page = client.list_models(job_id=job, limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = RichTable(title="models")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("name", no_wrap=True)
    table.add_column("version", no_wrap=True)
    for column in ("tags", "job", "valid AUC", "latency ms", "MB"):
        table.add_column(column)
    for m in page["models"]:
        table.add_row(
            m["id"],
            m["name"],
            f"v{m['version']}",
            _tag_text(m.get("tags") or {}),
            m["job_id"] or "",
            _number(m["valid_auc"]),
            _number(m["latency_ms"]),
            _number(m["size_mb"]),
        )
    console.print(table)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _tag_text(tags: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" if v else k for k, v in tags.items())


def _parse_tags(tags: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for tag in tags:
        key, equals, value = tag.partition("=")
        if not equals or not key:
            raise AutocompressError(f"--tag: {tag!r} is not key=value")
        parsed[key] = value
    return parsed


@models_app.command("register")
@user_errors
def models_register(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    trial: Annotated[str, typer.Argument(help="the trial's key (see `autocompress jobs trials JOB`)")],
    name: Annotated[
        str | None, typer.Option(help="the model's name (default: the job's name and family)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag key=value (repeatable)")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """Register any finished trial of a job as the next version of a model."""
    tags = _parse_tags(tag or [])
    with ApiClient(url, token) as client:
        model = client.register_trial(job_id, trial, name=name, tags=tags)
    if as_json:
        _print_json(model)
        return
    what = f"{model['name']} v{model['version']} (model {model['id']})"
    console.print(f"registered trial {trial} of job {job_id} as {what}", highlight=False)


@models_app.command("show")
@user_errors
def models_show(
    model_id: Annotated[str, typer.Argument(help="the model's id")],
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """A registered model: metrics, feature schema and lineage, as JSON."""
    with ApiClient(url, token) as client:
        _print_json(client.get_model(model_id))


@models_app.command("download")
@user_errors
def models_download(
    model_id: Annotated[str, typer.Argument(help="the model's id")],
    out: Annotated[
        Path | None, typer.Option(help="where to write the ONNX file (default ./<id>.onnx)")
    ] = None,
    url: Url = DEFAULT_API_URL,
    token: Token = None,
) -> None:
    """Download a registered model's ONNX file."""
    target = out or Path(f"{model_id}.onnx")
    with ApiClient(url, token) as client:
        size = client.download_model(model_id, target)
    console.print(f"wrote {target} ({size:,} bytes)")
