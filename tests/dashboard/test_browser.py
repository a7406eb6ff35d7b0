"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by ``make test`` when missing) driven by selenium against the running API over a seeded store.

The jobs page lists the seeded jobs; the job page draws one Pareto point per finished trial plus
the baselines and the budget; a trial recorded after the page loaded shows up within 5 s without a
reload; the models page shows what each alias serves; nothing is loaded from another origin and the
console logs no error. The job page's screenshot is ``docs/img/dashboard.png`` (shown in the README;
``UPDATE_SCREENSHOT=1`` rewrites it, otherwise it goes to the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autocompress.store import Store, TrialStatus
from serve_app.api import Settings
from tests.api.conftest import RunningApi, running_api
from tests.dashboard.conftest import Seeded, final_metrics, seed

pytestmark = pytest.mark.slow

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
FIRST_DRAW_S = 60  # the first job view imports torch in the API process (a few seconds on a busy machine)
LIVE_S = 5  # what the issue allows a new trial to take to show up


def _chromium() -> tuple[str, str]:
    """The browser and its driver from the system (Debian's packages); skipped without them unless CI."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = (
        "no chromium / chromedriver on PATH: `make test` installs Debian's chromium and chromium-driver "
        "where apt-get is available (`apt-get install chromium chromium-driver`)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, Seeded]]:
    """The API over a seeded SQLite store, shared by the module's tests."""
    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'dashboard.db'}"
    with Store(url) as store:
        seeded = seed(store, tmp / "runs")
    with running_api(Settings(db_url=url, work_dir=tmp / "runs", max_running_jobs=0)) as api:
        yield api, seeded


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, its console log kept (``goog:loggingPrefs``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary  # the system's browser and driver: selenium downloads nothing
    for argument in (
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1400,1700",
        "--enable-unsafe-swiftshader",  # software WebGL for the parallel coordinates, without a warning
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, site: tuple[RunningApi, Seeded]) -> Iterator[Any]:
    """The browser; after the test, the console must hold no error and every load must be this server's."""
    browser.get_log("browser")  # start from an empty console
    yield browser
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], f"console errors: {errors}"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    api, _ = site
    assert all(name.startswith(api.url + "/") for name in loaded), loaded


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def _traces(driver: Any, chart: str) -> list[dict[str, Any]]:
    """A Plotly chart's traces as drawn: name, meta (our role tags), x and y."""
    return driver.execute_script(
        "const node = document.getElementById(arguments[0]);"
        "return (node && node.data || []).map(t => ({name: t.name || null, meta: t.meta || {},"
        " x: Array.from(t.x || []), y: Array.from(t.y || [])}));",
        chart,
    )


def _points(driver: Any) -> int | None:
    """How many trials the Pareto chart draws (None before it is drawn)."""
    trials = [t for t in _traces(driver, "pareto") if t["meta"].get("role") == "trials"]
    return len(trials[0]["x"]) if trials else None


def _finished(api: RunningApi, job_id: str) -> list[str]:
    """What the search ranks: COMPLETED trials with a final report."""
    trials = api.store.list_trials(job_id, TrialStatus.COMPLETED)
    return sorted(t.trial_key for t in trials if "feasible" in t.metrics)


def test_the_jobs_page_lists_the_seeded_jobs(page: Any, site: tuple[RunningApi, Seeded]) -> None:
    api, seeded = site
    page.get(f"{api.url}/dashboard")
    rows = _wait(
        "three job rows",
        lambda: (
            len(page.find_elements("css selector", "#jobs tbody tr")) == 3
            and page.find_elements("css selector", "#jobs tbody tr")
        ),
        FIRST_DRAW_S,
    )
    by_id = {row.get_attribute("data-job-id"): row.text for row in rows}
    assert set(by_id) == {seeded.running, seeded.finished, seeded.pending}
    assert "ranker-realtime" in by_id[seeded.running] and "RUNNING" in by_id[seeded.running]
    assert "3 / 4" in by_id[seeded.running]  # 3 trials done of the 4 recorded (no num_trials in the spec)
    assert "0.7480" in by_id[seeded.running] and "0.420 / 0.500" in by_id[seeded.running]
    assert "SUCCEEDED" in by_id[seeded.finished] and "PENDING" in by_id[seeded.pending]


def test_the_job_page_draws_the_pareto_chart_with_the_baselines(
    page: Any, site: tuple[RunningApi, Seeded], tmp_path: Path
) -> None:
    api, seeded = site
    finished = _finished(api, seeded.running)
    page.get(f"{api.url}/dashboard/jobs/{seeded.running}")
    traces = _wait("the Pareto chart", lambda: _traces(page, "pareto"), FIRST_DRAW_S)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for trace in traces:
        by_role.setdefault(trace["meta"].get("role"), []).append(trace)
    (trials,) = by_role["trials"]
    assert len(trials["x"]) == len(finished) == 3  # one point per finished trial
    assert sorted(zip(trials["x"], trials["y"], strict=True)) == [(0.3, 0.741), (0.42, 0.748), (0.81, 0.752)]
    baselines = {t["meta"]["baseline"]: t for t in by_role["baseline"]}
    assert set(baselines) == {"onnx_fp32", "ort_dynamic_int8"}
    assert baselines["onnx_fp32"]["x"] == [2.0] and baselines["onnx_fp32"]["y"] == pytest.approx([0.75])
    assert set(baselines["ort_dynamic_int8"]["x"]) == {1.1}
    bounds = {t["meta"]["bound"]: t for t in by_role["budget"]}
    assert set(bounds["latency_ms"]["x"]) == {0.5}
    assert bounds["max_auc_drop"]["y"] == pytest.approx([0.74, 0.74])
    assert [t["name"] for t in by_role["winner"]] == ["winner trial_00000"]

    parameters = _wait("the parallel coordinates", lambda: _traces(page, "parcoords"), 10)
    assert parameters[0]["meta"]["role"] == "parameters"
    assert "WebGL is not supported" not in page.find_element("id", "parcoords").text
    assert _traces(page, "curves") and page.find_element("id", "curves-note").is_displayed()
    keys = [
        row.get_attribute("data-trial-key") for row in page.find_elements("css selector", "#trials tbody tr")
    ]
    assert keys == ["trial_00000", "trial_00001", "trial_00002", "trial_00003"]
    page.find_element("css selector", '#trials th[data-key="valid_auc"]').click()  # sort by AUC
    page.find_element("css selector", '#trials th[data-key="valid_auc"]').click()  # descending
    keys = [
        row.get_attribute("data-trial-key") for row in page.find_elements("css selector", "#trials tbody tr")
    ]
    assert keys == ["trial_00001", "trial_00000", "trial_00002", "trial_00003"]
    _wait("the log", lambda: len(page.find_elements("css selector", "#log tr")) >= 6, 10)

    page.execute_script("window.scrollTo(0, 0)")
    shot = (
        SCREENSHOT
        if os.environ.get("UPDATE_SCREENSHOT") or not SCREENSHOT.exists()
        else tmp_path / SCREENSHOT.name
    )
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000  # a drawn page, not a blank one


def test_a_trial_recorded_after_the_page_loaded_appears_without_a_reload(
    page: Any, site: tuple[RunningApi, Seeded]
) -> None:
    api, seeded = site
    page.get(f"{api.url}/dashboard/jobs/{seeded.running}")
    before = len(_finished(api, seeded.running))
    _wait("the Pareto chart", lambda: _points(page) == before, FIRST_DRAW_S)
    page.execute_script("window.__notReloaded = true")

    api.store.record_trial(seeded.running, "trial_00009", TrialStatus.RUNNING, config={})
    api.store.record_trial(
        seeded.running,
        "trial_00009",
        TrialStatus.COMPLETED,
        metrics=final_metrics(0.746, 0.25, 0.1, ["dynamic_int8"]),
    )
    recorded = time.monotonic()
    _wait("the new trial's point", lambda: _points(page) == before + 1, LIVE_S)
    _wait(
        "the new trial's row",
        lambda: page.find_elements("css selector", '#trials tr[data-trial-key="trial_00009"]'),
        max(0.1, LIVE_S - (time.monotonic() - recorded)),
    )
    assert time.monotonic() - recorded < LIVE_S
    assert page.execute_script("return window.__notReloaded === true")


def test_the_models_page_shows_versions_aliases_and_their_history(
    page: Any, site: tuple[RunningApi, Seeded]
) -> None:
    api, seeded = site
    first, second = seeded.model_ids
    page.get(f"{api.url}/dashboard/models")
    cards = _wait(
        "the endpoint cards",
        lambda: (
            len(page.find_elements("css selector", ".card")) == 2
            and page.find_elements("css selector", ".card")
        ),
        FIRST_DRAW_S,
    )
    text = {card.get_attribute("data-alias"): card.text for card in cards}
    assert "serves ranker-small-winner v1" in text["ranking-prod"]
    assert "rollback from ranker-small-winner v2 to ranker-small-winner v1" in text["ranking-prod"]
    assert "serves ranker-small-winner v2" in text["ranking-canary"]
    rows = {
        r.get_attribute("data-model-id"): r.text
        for r in page.find_elements("css selector", "#models tbody tr")
    }
    assert "v1" in rows[first] and "ranking-prod" in rows[first]
    assert "v2" in rows[second] and "ranking-canary" in rows[second]
