import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the suite shares 2 cores with itself: busy figures are flagged, not waited for (tests/measure/
# test_busy.py passes its own policies, retries included); drivers and Ray workers inherit it
os.environ.setdefault("AUTOCOMPRESS_BUSY_RETRIES", "0")


@pytest.fixture(scope="session")
def tiny_dataset():
    """The synthetic e-commerce log at test size, generated once per session."""
    from autocompress.data.synthetic import SyntheticConfig, load_synthetic

    return load_synthetic(SyntheticConfig.tiny())


# The files that run whole searches, Ray heads or browsers, heaviest first (their pytest --durations
# summed; tests/api/test_lifecycle.py about 200 s on 2 busy cores). `make test` runs the suite on two
# workers file by file (pytest-xdist --dist loadfile), which hands files out in collection order:
# starting the long ones first leaves short files, not a long one, for the end.
HEAVY_FIRST = (
    "engine/test_tuner.py",
    "api/test_lifecycle.py",
    "engine/test_job.py",
    "reliability/test_faults.py",
    "engine/test_faults.py",
    "cluster/test_remote.py",
    "engine/test_reference.py",
    "cluster/test_multinode.py",
    "serve_app/test_serving.py",
    "test_packaging.py",
    "engine/test_storage_uri.py",
    "techniques/test_conformance.py",
    "serve_app/test_cli_serve.py",
    "api/test_api.py",
    "dashboard/test_browser.py",
    "serve_app/test_plain_cluster.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        path = Path(item.fspath).relative_to(tests).as_posix()
        return HEAVY_FIRST.index(path) if path in HEAVY_FIRST else len(HEAVY_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
