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
