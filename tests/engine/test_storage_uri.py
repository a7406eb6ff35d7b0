"""Tune storage on an S3-style URI: a real search whose run lives in a local S3 server (moto).

The S3 server is moto's, in this process on a free loopback port; Tune, its trial workers and the
owner file all reach it through pyarrow.fs with fake credentials from the environment. A real Ray
(2 CPUs), tiny data and a real SQLite store, as in ``test_faults.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress.engine.tuner import JOB_FILE, SearchOutcome, TuneRunLocation, run_search
from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.spec import SearchSettings
from autocompress.store import Store, TrialStatus
from serve_app.launcher import free_port

from .test_faults import TRAIN, _settings, _shared, _space

BUCKET = "autocompress-runs"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no metadata-service probe for credentials
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture()
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a free loopback port with an empty bucket ``BUCKET``; yields host:port."""
    from moto.server import ThreadedMotoServer

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"127.0.0.1:{port}"
        _s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")


def _keys(endpoint: str, prefix: str) -> list[str]:
    listing = _s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1000)
    assert not listing.get("IsTruncated")
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


@pytest.mark.slow
def test_a_search_keeps_its_tune_run_in_s3_and_resumes_or_refuses_from_there(
    tmp_path: Path, store: Store, s3_endpoint: str
) -> None:
    import ray

    uri = f"s3://{BUCKET}/runs?endpoint_override={s3_endpoint}&scheme=http"
    settings = _settings(tmp_path, storage_path=uri)
    space, shared = _space(tmp_path), _shared(tmp_path)
    job = store.create_job({"name": "s3"}, name="s3")
    other = store.create_job({"name": "other"}, name="other")

    def search(job_id: str, name: str = "s3") -> SearchOutcome:
        return run_search(space, settings, shared, store=store, job_id=job_id, name=name, train_config=TRAIN)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit the credentials
    try:
        outcome = search(job.id)
        keys = _keys(s3_endpoint, "runs/s3/")
        before = {r.trial_key: r for r in store.list_trials(job.id)}

        again = search(job.id)

        with pytest.raises(AutocompressError, match=f"name: the Tune run s3://.* belongs to job '{job.id}'"):
            search(other.id)
        # a prefix with objects but no owner file is another job's too (S3 has no real folders)
        _s3_client(s3_endpoint).put_object(Bucket=BUCKET, Key="runs/foreign/tuner.pkl", Body=b"x")
        with pytest.raises(AutocompressError, match=r"runs/foreign\?.* belongs to job None"):
            search(job.id, name="foreign")
    finally:
        ray.shutdown()

    # the search ran and recorded every trial
    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 2
    assert len(before) == 2 and all(r.metrics["valid_auc"] > 0.5 for r in before.values())
    assert outcome.experiment_path == f"s3://{BUCKET}/runs/s3?endpoint_override={s3_endpoint}&scheme=http"
    # Tune's experiment state, each trial's results and the owner file are in the bucket, not on disk
    assert f"runs/s3/{JOB_FILE}" in keys and "runs/s3/tuner.pkl" in keys
    assert any(k.startswith("runs/s3/experiment_state-") and k.endswith(".json") for k in keys)
    assert sum(k.endswith("/result.json") for k in keys) == 2
    owner = _s3_client(s3_endpoint).get_object(Bucket=BUCKET, Key=f"runs/s3/{JOB_FILE}")["Body"].read()
    assert json.loads(owner) == {"job_id": job.id}
    assert not (shared.work_dir / "tune").exists() and not (tmp_path / "tune").exists()
    # the second run restored the run from the bucket: same trials, none rerun or recorded twice
    assert sorted(t.trial_id for t in again.trials) == sorted(before)
    after = store.list_trials(job.id)
    assert len(after) == 2
    for row in after:
        assert row.attempts == 1 and row.finished_at == before[row.trial_key].finished_at
    assert any("resuming the Tune run at s3://" in e.message for e in store.list_events(job.id))
    assert store.list_trials(other.id) == []


def test_the_run_folder_keeps_the_uri_query_and_local_paths_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_s3 = TuneRunLocation("s3://bucket/a/b/?endpoint_override=127.0.0.1%3A9000&scheme=http", "job-1")
    assert on_s3.storage == "s3://bucket/a/b/?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert on_s3.experiment == "s3://bucket/a/b/job-1?endpoint_override=127.0.0.1%3A9000&scheme=http"
    assert TuneRunLocation("s3://bucket", "job-1").experiment == "s3://bucket/job-1"
    monkeypatch.chdir(tmp_path)
    local = TuneRunLocation("runs", "job-1")  # relative: resolved against the working folder
    assert local.storage == str(tmp_path.resolve() / "runs")
    assert local.experiment == str(tmp_path.resolve() / "runs" / "job-1")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TuneRunLocation("~/tune", "x").experiment == str(tmp_path.resolve() / "tune" / "x")


def test_the_owner_file_round_trips_on_a_local_folder(tmp_path: Path) -> None:
    location = TuneRunLocation(tmp_path / "tune", "job-1")
    assert location.owner() == (False, None)
    (tmp_path / "tune" / "job-1").mkdir(parents=True)
    assert location.owner() == (True, None)  # a folder without the owner file
    location.claim("abc")
    assert json.loads((tmp_path / "tune" / "job-1" / JOB_FILE).read_text()) == {"job_id": "abc"}
    assert location.owner() == (True, "abc")
    location.claim("abc")  # again over an existing folder
    assert TuneRunLocation(str(tmp_path / "tune"), "job-1").owner() == (True, "abc")


@pytest.mark.parametrize(
    ("storage_path", "message"),
    [
        ("ftp://host/runs", "URI scheme 'ftp' is not one pyarrow.fs opens"),
        ("S3://bucket/runs", "URI scheme 'S3' is not one pyarrow.fs opens"),
        ("s3:///runs", "a s3:// URI needs a bucket or host"),
        ("://bucket/runs", "a URI needs a scheme"),
        ("s3://key:secret@bucket/runs", "credentials do not belong in the URI"),
    ],
)
def test_a_bad_storage_path_is_refused_naming_the_field(storage_path: str, message: str) -> None:
    with pytest.raises(AutocompressError, match=rf"search\.storage_path: .*{message}"):
        SearchSettings.from_dict({"storage_path": storage_path}, where="search")
    with pytest.raises(AutocompressError, match=rf"jobspec\.search\.storage_path: .*{message}"):
        JobSpec.from_dict({"family": "dlrm", "search": {"storage_path": storage_path}})


@pytest.mark.parametrize(
    "storage_path",
    [
        "runs",
        "/srv/tune",
        "~/tune",
        "file:///srv/tune",
        "s3://bucket",
        "gs://bucket/p",
        "s3://b/p?region=eu-west-1",
    ],
)
def test_local_paths_and_known_uris_are_accepted(storage_path: str) -> None:
    assert SearchSettings.from_dict({"storage_path": storage_path}).storage_path == storage_path


def test_a_uri_pyarrow_cannot_open_is_a_clear_error_at_run_time() -> None:
    location = TuneRunLocation("s3://bucket/runs?endpoint_overide=127.0.0.1:9000", "job-1")
    with pytest.raises(AutocompressError, match=r"search\.storage_path: cannot open .*endpoint_overide"):
        location.owner()
