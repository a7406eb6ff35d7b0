import os

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a ``slow`` test first, each file's tests in their own order.

    ``make test`` hands whole files to two workers (``--dist loadfile``) in this order: the long
    end-to-end files start first and the short ones fill in around them, instead of one long file
    running alone at the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: a file's order is kept
