"""The job page draws the stored learning curves in a real browser (headless Chromium, as
``test_browser``): one line per trial with per-epoch reports, the epochs in order, and an epoch
recorded after the page loaded appears without a reload."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from autocompress.store import Store, TrialStatus
from serve_app.api import Settings
from tests.api.conftest import RunningApi, running_api
from tests.dashboard.conftest import Seeded, final_metrics, seed

# the same headless Chromium and console checks as the page tests (fixtures, used by name)
from tests.dashboard.test_browser import FIRST_DRAW_S, LIVE_S, _traces, _wait, browser, page  # noqa: F401

pytestmark = pytest.mark.slow

RUNNING_CURVE = [(1, 0.66, 0.58), (2, 0.69, 0.54)]
FINISHED_CURVE = [(1, 0.70, 0.55), (2, 0.73, 0.50), (3, 0.744, 0.47)]


def _report(store: Store, job_id: str, key: str, epoch: int, auc: float, loss: float) -> None:
    metrics = {"stage": "train", "epoch": epoch, "valid_auc": auc, "train_loss": loss}
    store.record_trial(job_id, key, TrialStatus.RUNNING, metrics=metrics, epoch=epoch)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, Seeded]]:
    """The dashboard tests' store, plus learning curves: the running trial's and a new finished one's."""
    tmp = tmp_path_factory.mktemp("curves")
    url = f"sqlite:///{tmp / 'dashboard.db'}"
    with Store(url) as store:
        seeded = seed(store, tmp / "runs")
        for epoch, auc, loss in RUNNING_CURVE:
            _report(store, seeded.running, "trial_00003", epoch, auc, loss)
        for epoch, auc, loss in FINISHED_CURVE:
            _report(store, seeded.running, "trial_00004", epoch, auc, loss)
        store.record_trial(
            seeded.running, "trial_00004", TrialStatus.COMPLETED, metrics=final_metrics(0.744, 0.45, 0.2, [])
        )
    with running_api(Settings(db_url=url, work_dir=tmp / "runs", max_running_jobs=0)) as api:
        yield api, seeded


def _curves(driver: Any) -> dict[str, list[tuple[float, float]]]:
    """The curves chart's lines by trial key: (epoch, valid AUC) points."""
    return {
        t["meta"]["trial"]: list(zip(t["x"], t["y"], strict=True))
        for t in _traces(driver, "curves")
        if t["meta"].get("role") == "curve" and "trial" in t["meta"]
    }


def test_the_job_page_draws_the_stored_curves_and_follows_new_epochs(
    page: Any,  # noqa: F811  the imported fixture, requested by name
    site: tuple[RunningApi, Seeded],
) -> None:
    api, seeded = site
    page.get(f"{api.url}/dashboard/jobs/{seeded.running}")
    curves = _wait("the learning curves", lambda: _curves(page), FIRST_DRAW_S)
    assert curves == {
        "trial_00003": [(e, auc) for e, auc, _ in RUNNING_CURVE],
        "trial_00004": [(e, auc) for e, auc, _ in FINISHED_CURVE],
    }
    assert not page.find_element("id", "curves-note").is_displayed()  # no fallback note: curves are stored

    _report(api.store, seeded.running, "trial_00003", 3, 0.71, 0.52)
    grown = _wait("the new epoch", lambda: len(_curves(page).get("trial_00003", [])) == 3, LIVE_S)
    assert grown and _curves(page)["trial_00003"][-1] == (3, 0.71)
