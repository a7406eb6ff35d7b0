"""A job's driver staying in touch with the store: it stops the search when a cancel is requested,
and it beats a heartbeat so a restarted API can tell a dead driver from a slow one.

``POST /v1/jobs/{id}/cancel`` only flags the job (``cancel_requested_by``); the driver sees the
flag through :class:`CancelStopper` (polled by Tune on the driver, at most every
``poll_s`` seconds), Tune stops every trial, and ``run_search`` raises :class:`JobCancelled`, so
nothing after the search (winner, report, registration) runs and ``run_job`` ends the job
CANCELLED.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray.tune import Stopper

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 2.0
DEFAULT_HEARTBEAT_S = 10.0


class JobCancelled(Exception):
    """The job's cancel was requested; ``by`` says by whom (what the job's reason will name)."""

    def __init__(self, job_id: str, by: str) -> None:
        super().__init__(f"job {job_id} cancelled by {by}")
        self.job_id = job_id
        self.by = by


def cancel_requested_by(store: Any, job_id: str) -> str | None:
    """Who asked to cancel the job, or None; a store error counts as no request (asked again later)."""
    try:
        by: str | None = store.get_job(job_id).cancel_requested_by
    except Exception:
        logger.exception("could not read the cancel flag of job %s", job_id)
        return None
    return by


def raise_if_cancelled(store: Any, job_id: str) -> None:
    """Raise :class:`JobCancelled` when the job's cancel was requested (after ``Tuner.fit`` returns)."""
    by = cancel_requested_by(store, job_id)
    if by is not None:
        raise JobCancelled(job_id, by)


class CancelStopper(Stopper):
    """Tune ``Stopper`` that ends the whole run once the job's cancel is requested in the store.

    Tune calls ``stop_all`` on the driver in every step of its loop; the store is read at most
    every ``poll_s`` seconds. Once it says stop, it keeps saying so. Pickles with the store (which
    pickles as its URL), so a run resumed with ``Tuner.restore`` is still cancellable.
    """

    def __init__(self, store: Any, job_id: str, poll_s: float = DEFAULT_POLL_S) -> None:
        self.store = store
        self.job_id = job_id
        self.poll_s = poll_s
        self._next_poll = 0.0
        self.requested_by: str | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        if self.requested_by is None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_s
            self.requested_by = cancel_requested_by(self.store, self.job_id)
            if self.requested_by is not None:
                logger.warning(
                    "job %s: cancel requested by %s, stopping the search", self.job_id, self.requested_by
                )
        return self.requested_by is not None

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "job_id": self.job_id, "poll_s": self.poll_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store = state["store"]
        self.job_id = state["job_id"]
        self.poll_s = state["poll_s"]
        self._next_poll = 0.0
        self.requested_by = None


@contextlib.contextmanager
def heartbeat(store: Any, job_id: str, every_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[None]:
    """Beat ``store.heartbeat(job_id)`` now and every ``every_s`` seconds from a daemon thread, while inside.

    A failed beat is logged and retried at the next tick; the driver's work never waits on it.
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                store.heartbeat(job_id)
            except Exception:
                logger.exception("heartbeat of job %s failed", job_id)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
