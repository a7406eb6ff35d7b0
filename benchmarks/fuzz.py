"""Fuzz the job API with schemathesis: generated requests from its own OpenAPI document, over real HTTP.

The app runs queue-only (``max_running_jobs=0``: submitted jobs are recorded, never launched) under
uvicorn on a free 127.0.0.1 port, on a fresh SQLite file (``--db-url``: an empty PostgreSQL schema,
say), with a bearer token; every request carries
the token, so mutating routes are exercised past the auth check. Before fuzzing, the store is seeded
with what the routes act on (``seed_state``): jobs in several states with trials and a report, two
tiny exported models (a DLRM and a two-tower, served in process), a model whose file lies outside
the artifact root, and an alias with a history. Half of the positive cases use a seeded id for
``job_id``, ``model_id`` and ``alias``, so the fuzzer reaches past 404.

Every operation is fuzzed with valid data (positive) and with data its schema forbids (negative).
Each response is checked: no 5xx (a request that gets no answer counts as one), and conformance to
the document (status code documented, content type, headers, body schema). Prints the figures
and writes ``benchmarks/results/fuzz.json`` (``requests``, ``server_errors``, ``schema_violations``);
``make fuzz`` runs it with at least 1000 requests. ``tests/reliability/test_fuzz.py`` runs a bounded
pass of the same fuzzer in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "fuzz.json"
TOKEN = "fuzz-token"
ALIAS = "fuzz-prod"
ID_PARAMETERS = ("job_id", "model_id", "alias")
MAX_ROUNDS = 20  # passes over the operations, each with a new seed, until the request budget is spent
MAX_DESCRIBED = 20  # failing cases kept for the report (each distinct operation, status and failure)


@dataclass
class FuzzReport:
    """What one fuzzing run found: requests sent, 5xx answers, responses that break the document."""

    requests: int = 0
    server_errors: int = 0
    schema_violations: int = 0
    operations: int = 0
    seconds: float = 0.0
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # operation -> status -> responses
    failures: list[str] = field(default_factory=list)
    _seen: set[tuple[str, int, str]] = field(default_factory=set, repr=False)

    def figures(self) -> dict[str, int]:
        """The figures ``fuzz.json`` holds."""
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "schema_violations": self.schema_violations,
        }

    def describe(self, label: str, status: int, what: str, detail: str) -> None:
        key = (label, status, what)
        if key not in self._seen and len(self.failures) < MAX_DESCRIBED:
            self._seen.add(key)
            self.failures.append(f"{label} -> {status}: {what}\n{detail}")


def _conformance_checks() -> list[Any]:
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]


def _negatable(definition: Mapping[str, Any]) -> bool:
    """Whether an OpenAPI operation has data that can be made invalid (not only free-string parameters)."""
    if "requestBody" in definition:
        return True
    return any(
        p.get("schema", {}).get("type") != "string" or set(p.get("schema", {})) - {"type", "title"}
        for p in definition.get("parameters", [])
    )


def fuzz_api(
    base_url: str,
    *,
    token: str | None,
    max_requests: int,
    known_ids: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    max_seconds: float = 600.0,
) -> FuzzReport:
    """Fuzz every operation of the API at ``base_url`` with about ``max_requests`` requests in all.

    The requests are shared out evenly over the operations and over positive and negative data;
    the run stops early after ``max_seconds``. ``known_ids`` (path parameter name -> existing ids)
    stand in for generated ids in half of the positive cases.
    """
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: seeded jobs live longer
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    checks = _conformance_checks()
    known = {name: list(ids) for name, ids in (known_ids or {}).items() if ids}
    report = FuzzReport(operations=len(operations))
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + max_seconds

    def send(case: Any, session: requests.Session) -> None:
        label = f"{case.method} {case.formatted_path}"
        report.requests += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
        except requests.RequestException as exc:
            report.server_errors += 1
            report.describe(case.operation.label, 0, "no response", f"{label}: {exc!r}")
            return
        status = response.status_code
        report.statuses.setdefault(case.operation.label, Counter())[status] += 1
        if status >= 500:  # counted once, as a server error (it is undocumented too)
            report.server_errors += 1
            curl = case.as_curl_command(headers=headers)
            report.describe(case.operation.label, status, "server error", f"{curl}\n{response.text[:500]}")
            return
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (schemathesis.errors.FailureGroup, AssertionError) as exc:
            report.schema_violations += 1
            failures = getattr(exc, "exceptions", (exc,))
            titles = "; ".join(sorted({getattr(f, "title", type(f).__name__) for f in failures}))
            messages = "\n".join(str(f)[:400] for f in failures)
            curl = case.as_curl_command(headers=headers)
            report.describe(
                case.operation.label, status, titles, f"{curl}\n{messages}\n{response.text[:300]}"
            )

    def use_known_ids(case: Any) -> None:
        for name in ID_PARAMETERS:
            if name in (case.path_parameters or {}) and name in known and rng.random() < 0.5:
                case.path_parameters[name] = rng.choice(known[name])
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("model_id"), str) and rng.random() < 0.5:
            body["model_id"] = rng.choice(known.get("model_id", [body["model_id"]]))

    def fuzz_operation(
        operation: Any, mode: GenerationMode, session: requests.Session, per_run: int, seed: int
    ) -> bool:
        """Fuzz one operation in one mode; False when no case can be generated (nothing to negate)."""
        strategy = operation.as_strategy(generation_mode=mode)

        @hypothesis.seed(seed)
        @hypothesis.settings(
            max_examples=per_run,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def exercise(case: Any) -> None:
            if time.monotonic() > deadline or report.requests >= max_requests:
                return
            if mode is GenerationMode.POSITIVE:
                use_known_ids(case)
            send(case, session)

        try:
            exercise()
        except Unsatisfiable:  # negative mode where every parameter is a free string
            return False
        return True

    # negative data needs something to break: a body, a typed or constrained parameter
    impossible = {
        (op.label, GenerationMode.NEGATIVE)
        for op in operations
        if not _negatable(schema.raw_schema["paths"][op.path][op.method.lower()])
    }
    with requests.Session() as session:
        # passes with fresh seeds until the budget is spent: operations without parameters, or
        # with few distinct values, run out of new cases before their share is used
        for round_ in range(MAX_ROUNDS):
            before = report.requests
            left = max_requests - report.requests
            per_run = max(1, left // (len(operations) * len(modes)))
            for operation in operations:
                for mode in modes:
                    if time.monotonic() > deadline or report.requests >= max_requests:
                        break
                    if (operation.label, mode) in impossible:
                        continue
                    if not fuzz_operation(operation, mode, session, per_run, seed + round_):
                        impossible.add((operation.label, mode))
            if report.requests in (before, max_requests) or time.monotonic() > deadline:
                break
    report.seconds = time.monotonic() - started
    return report


# -- the state the routes act on ------------------------------------------------------------------


def seed_state(store: Any, work_dir: Path) -> dict[str, list[str]]:
    """Jobs, trials, a report, models and an alias for the fuzzer to reach; returns their ids by name."""
    from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
    from autocompress.export import export_onnx
    from autocompress.job import DEFAULT_JOB_FILE, load_job_spec
    from autocompress.models import build
    from autocompress.testing.fixtures import TINY_ARCHS

    spec = load_job_spec(DEFAULT_JOB_FILE.with_name("tiny_job.yaml")).to_dict()
    pending = store.create_job(spec)
    failed = store.create_job(spec)
    store.set_job_status(failed.id, "FAILED", "seeded for fuzzing")
    done = store.create_job(spec)
    store.set_job_status(done.id, "RUNNING")
    for i, (auc, latency, size) in enumerate([(0.71, 0.8, 2.0), (0.74, 2.5, 3.5), (0.69, 9.0, 1.0)]):
        metrics = {"valid_auc": auc, "latency_ms": latency, "size_mb": size, "feasible": latency < 5}
        store.record_trial(done.id, f"trial-{i}", "COMPLETED", {"arch": {}, "policy": []}, metrics)
    report = work_dir / "jobs" / done.id / "report.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<html><body>seeded report</body></html>", encoding="utf-8")
    store.set_job_status(done.id, "SUCCEEDED", result={"report": str(report)})

    import torch

    schema = synthetic_schema(SyntheticConfig.tiny())
    models = []
    for family in ("dlrm", "two_tower"):
        torch.manual_seed(0)
        model = build(family, schema, TINY_ARCHS[family]).eval()
        path = export_onnx(model, schema, work_dir / "models" / family / "model.onnx").path
        models.append(
            store.register_model(family, path, schema.to_dict(), {"valid_auc": 0.7}, job_id=done.id)
        )
    outside = work_dir.parent / "outside.onnx"
    outside.write_bytes(Path(models[0].path).read_bytes())
    models.append(store.register_model("outside", outside, schema.to_dict(), {}))
    store.deploy(ALIAS, models[1].id)
    store.deploy(ALIAS, models[0].id)
    return {
        "job_id": [pending.id, failed.id, done.id],
        "model_id": [m.id for m in models],
        "alias": [ALIAS],
    }


@contextlib.contextmanager
def seeded_api(db_url: str | None = None) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    """The queue-only API with a token on ``db_url`` (default: a fresh SQLite file), served by uvicorn
    on 127.0.0.1 and seeded: yields the running API (``tests.api.conftest.RunningApi``) and the ids."""
    if str(ROOT) not in sys.path:  # `python benchmarks/fuzz.py`: the tests' server helper lives in tests/
        sys.path.insert(0, str(ROOT))
    from serve_app.api import Settings
    from tests.api.conftest import running_api

    with tempfile.TemporaryDirectory(prefix="ac-fuzz-") as tmp:
        work_dir = Path(tmp) / "runs"
        work_dir.mkdir()
        settings = Settings(
            db_url=db_url or f"sqlite:///{Path(tmp) / 'api.db'}",
            api_token=TOKEN,
            work_dir=work_dir,
            max_running_jobs=0,
        )
        with running_api(settings) as api:
            yield api, seed_state(api.store, work_dir)


def run(
    max_requests: int, *, seed: int = 0, max_seconds: float = 600.0, db_url: str | None = None
) -> FuzzReport:
    """Serve and seed the API (``seeded_api``) and fuzz it."""
    with seeded_api(db_url) as (api, known):
        return fuzz_api(
            api.url,
            token=TOKEN,
            max_requests=max_requests,
            known_ids=known,
            seed=seed,
            max_seconds=max_seconds,
        )


def print_report(report: FuzzReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"API fuzzing: {report.operations} operations, {report.seconds:.0f} s")
    table.add_column("operation")
    table.add_column("requests", justify="right")
    table.add_column("statuses")
    for label, statuses in report.statuses.items():
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        table.add_row(label, str(sum(statuses.values())), answers)
    console.print(table)
    console.print(
        f"requests sent: {report.requests}; 5xx: {report.server_errors}; "
        f"schema violations: {report.schema_violations}"
    )
    for failure in report.failures:
        console.print(failure, markup=False, highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1200, help="requests to send (default 1200)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long (default 900)")
    parser.add_argument(
        "--db-url", help="fuzz on this (empty) database, e.g. PostgreSQL; default: a SQLite file"
    )
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests: must be >= 1")
    report = run(args.requests, seed=args.seed, max_seconds=args.max_seconds, db_url=args.db_url)
    print_report(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report.figures(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")
    return 1 if report.server_errors or report.schema_violations else 0


if __name__ == "__main__":
    sys.exit(main())
