"""``autocompress jobs trials``, ``jobs pareto`` and ``models register`` against the real API (uvicorn on a
free port, a seeded SQLite store, no search running)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autocompress.cli import app as cli_app
from serve_app.api import Settings
from tests.api.conftest import RunningApi, running_api
from tests.api.test_register_trial import Seeded, seed


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[RunningApi, Seeded]]:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'cli.db'}", work_dir=tmp_path / "runs", max_running_jobs=0
    )
    with running_api(settings) as api:
        yield api, seed(api.store, settings.work_dir)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 200 columns wide: the console reads COLUMNS once, maybe before this test (xdist)."""
    from autocompress.cli import remote

    monkeypatch.setattr(remote.console, "_width", 200)


def run(api: RunningApi, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli_app, [*args, "--url", api.url], env={"COLUMNS": "200"})
    assert result.exit_code == code, (args, result.output)
    assert "Traceback" not in result.output
    return result.output


def rows(output: str) -> dict[str, list[str]]:
    """A rich table's body rows by their first cell (the trial key)."""
    table: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0].startswith("t_"):
            table[cells[0]] = cells[1:]
    return table


def test_jobs_trials_prints_every_trial_with_its_figures(site: tuple[RunningApi, Seeded]) -> None:
    api, seeded = site
    table = rows(run(api, "jobs", "trials", seeded.job))
    assert set(table) == {
        "t_best",
        "t_fast",
        "t_worse",
        "t_running",
        "t_no_final",
        "t_no_onnx",
        "t_gone",
        "t_outside",
    }
    # stage, status, valid AUC, latency ms, MB, techniques, in budget
    assert table["t_fast"] == ["final", "COMPLETED", "0.7", "0.4", "1", "dynamic_int8", "yes"]
    assert table["t_best"][:4] == ["final", "COMPLETED", "0.74", "0.9"]
    assert table["t_running"] == ["train", "RUNNING", "-", "-", "-", "-", "-"]
    running = rows(run(api, "jobs", "trials", seeded.job, "--status", "RUNNING"))
    assert list(running) == ["t_running"]
    listed = json.loads(run(api, "jobs", "trials", seeded.job, "--json"))
    assert len(listed) == 8 and all("metrics" in t for t in listed)
    assert "error: HTTP 404: job_id: no job 'nope'" in " ".join(
        run(api, "jobs", "trials", "nope", code=2).split()
    )


def test_jobs_pareto_prints_only_the_pareto_optimal_finished_trials(site: tuple[RunningApi, Seeded]) -> None:
    api, seeded = site
    output = run(api, "jobs", "pareto", seeded.job)
    front = rows(output)
    # t_worse is dominated by t_fast; the trials without a final report are no candidates; the three
    # seeded at 0.3 ms (those that cannot be registered) are the fastest, so on the front
    assert set(front) == {"t_best", "t_fast", "t_no_onnx", "t_gone", "t_outside"}
    assert next(iter(front)) == "t_best"  # best AUC first
    assert "winner: t_best" in output
    document = json.loads(run(api, "jobs", "pareto", seeded.job, "--json"))
    assert {c["trial_key"] for c in document["front"]} == set(front)


def test_models_register_registers_any_finished_trial_as_the_next_version(
    site: tuple[RunningApi, Seeded],
) -> None:
    api, seeded = site
    first = " ".join(run(api, "models", "register", seeded.job, "t_fast", "--tag", "choice=fastest").split())
    model = api.store.list_models()[0]
    assert first == f"registered trial t_fast of job {seeded.job} as ranking-dlrm v1 (model {model.id})"
    assert (
        model.tags == {"choice": "fastest"} and model.trial_id == api.store.get_trial(seeded.job, "t_fast").id
    )
    second = json.loads(
        run(
            api,
            "models",
            "register",
            seeded.job,
            "t_worse",
            "--name",
            "ranking-dlrm",
            "--tag",
            "a=1",
            "--tag",
            "b=",
            "--json",
        )
    )
    assert (second["name"], second["version"], second["tags"]) == ("ranking-dlrm", 2, {"a": "1", "b": ""})
    listed = run(api, "models", "list")
    assert "v2" in listed and "v1" in listed and "choice=fastest" in listed

    def refused(*args: str) -> str:
        return " ".join(run(api, "models", "register", *args, code=2).split())

    assert refused(seeded.job, "t_running").startswith("error: HTTP 409: trial: t_running is RUNNING;")
    assert refused(seeded.job, "nope") == f"error: HTTP 404: trial: no trial 'nope' in job {seeded.job}"
    assert refused(seeded.job, "t_fast", "--tag", "novalue") == "error: --tag: 'novalue' is not key=value"
    assert refused(seeded.job, "t_fast", "--name", "bad name").startswith("error: HTTP 422: body.name:")
    assert len(api.store.list_models()) == 2
