"""Jobs run outside the request: one detached driver process per job, a queue, and lost-driver recovery.

The API only records a job (PENDING). :class:`JobLauncher` runs in a background thread of the API
process and, every ``poll_s`` seconds or when woken by a submission:

1. forgets its driver processes that have exited;
2. checks every RUNNING job's driver: alive when its process (``local:<host>:<pid>``, with the
   job id on its command line) exists and its heartbeat is fresh, or, for a driver elsewhere (a
   ``ray job submit``), when its heartbeat is fresh. A lost driver's job is relaunched to resume
   its Tune run (at most ``max_relaunches`` times), ended CANCELLED when its cancel was
   requested, or else marked FAILED with the reason;
3. launches the oldest PENDING jobs while fewer than ``max_running_jobs`` are RUNNING.

A driver is ``python -m autocompress.cli search --job-id ID --work-dir DIR --address ADDR``, the
same entrypoint a user can give to ``ray job submit --``, started in its own session so it outlives
a restart of the API; the database URL reaches it through ``AUTOCOMPRESS_DB_URL`` (not on its
command line, where a password would show). Without a Ray address the launcher starts a local
Ray head (a free port, never 6379; its own temp dir; no dashboard) on first need, and stops it
on close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from autocompress.errors import AutocompressError
from autocompress.local_ray import free_port, local_ray_env
from autocompress.store import DB_URL_ENV, ConflictError, JobRecord, JobStatus, NotFoundError, Store

logger = logging.getLogger(__name__)

DRIVER_PREFIX = "local"
RELAUNCH_EVENT = "relaunch"
DRIVER_LOG = "driver.log"


def _wait_for_port(port: int, seconds: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AutocompressError(
                f"the local Ray head exited with code {process.returncode} while starting"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise AutocompressError(f"the local Ray head did not open port {port} within {seconds:.0f} s")


def _stop_process_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process's group, then SIGKILL it after ``grace_s``; reaps the process."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _tool(name: str) -> str:
    """A console script of this Python's environment (``ray``), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        raise AutocompressError(f"the {name!r} command is not installed next to {sys.executable} nor on PATH")
    return found


class LocalRayHead:
    """A Ray head for this API's drivers: a free port, its own short temp dir, dashboard off.

    Started with ``ray start --head --block`` in its own session; ``stop`` ends the whole group.
    """

    def __init__(self, log_path: Path, num_cpus: int | None = None) -> None:
        self.log_path = log_path
        self.num_cpus = num_cpus
        self.address: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._temp_dir: str | None = None

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the head (once) and return its address ``127.0.0.1:<port>``."""
        if self.address is not None and self._process is not None and self._process.poll() is None:
            return self.address
        self.stop()
        port = free_port()
        # short: Ray's socket paths live under it and must stay under the OS's 107-character limit
        self._temp_dir = tempfile.mkdtemp(prefix="ac-ray-")
        command = [
            _tool("ray"),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--include-dashboard=false",
            f"--temp-dir={self._temp_dir}",
            "--block",
        ]
        if self.num_cpus is not None:
            command.append(f"--num-cpus={self.num_cpus}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # no Serve replicas to drain on this head: stop at once instead of after 30 s
                env={**_driver_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
                start_new_session=True,
            )
        _wait_for_port(port, timeout_s, self._process)
        self.address = f"127.0.0.1:{port}"
        logger.info("started a local Ray head at %s (log %s)", self.address, self.log_path)
        return self.address

    def stop(self) -> None:
        """Stop the head and remove its temp dir; a no-op when it is not running."""
        if self._process is not None:
            _stop_process_group(self._process, grace_s=30)
            self._process = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        self.address = None


def _driver_env(db_url: str | None = None, *, local: bool = True) -> dict[str, str]:
    """The environment of a head or driver: ``local`` for our own head (``autocompress.local_ray``)."""
    env = dict(os.environ)
    if local:
        local_ray_env(env)
    if db_url is not None:
        env[DB_URL_ENV] = db_url
    return env


def driver_id_for(pid: int) -> str:
    """How the store names a driver this launcher started: ``local:<host>:<pid>``."""
    return f"{DRIVER_PREFIX}:{socket.gethostname()}:{pid}"


def _local_pid(driver_id: str | None) -> int | None:
    """The pid of a driver on this host, from its ``local:<host>:<pid>`` id; None for any other driver."""
    if not driver_id:
        return None
    parts = driver_id.split(":")
    if len(parts) != 3 or parts[0] != DRIVER_PREFIX or parts[1] != socket.gethostname():
        return None
    return int(parts[2]) if parts[2].isdigit() else None


def _process_runs_job(pid: int, job_id: str) -> bool:
    """Whether process ``pid`` is alive and is this job's driver (its command line names the job)."""
    if Path("/proc/self/cmdline").exists():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline:
                return job_id in cmdline.decode(errors="replace")
            # empty: a zombie (gone), or a process still inside exec (its arguments not yet mapped;
            # seen under load right after Popen returns), which is alive
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:  # no /proc: the pid exists, which is the best we can say
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Driver:
    job_id: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]


class JobLauncher:
    """Launches PENDING jobs as detached driver processes and recovers RUNNING jobs whose driver is gone.

    Life cycle: ``start()`` runs ``tick()`` at once (restart recovery) and then every ``poll_s``
    seconds in a daemon thread; ``wake()`` (after a submission or cancel) runs it sooner;
    ``close()`` stops the thread, ends the drivers this launcher started (their jobs stay
    RUNNING and are resumed by the next launcher) and stops the local Ray head if it started one.
    Only one launcher should run per database.
    """

    def __init__(
        self,
        store: Store,
        *,
        db_url: str,
        work_dir: Path,
        max_running_jobs: int = 1,
        ray_address: str | None = None,
        ray_num_cpus: int | None = None,
        max_relaunches: int = 1,
        poll_s: float = 2.0,
        stale_after_s: float = 60.0,
    ) -> None:
        if max_running_jobs < 1:
            raise AutocompressError(f"max_running_jobs: {max_running_jobs} must be >= 1 to launch jobs")
        self.store = store
        self.db_url = db_url
        self.work_dir = work_dir
        self.max_running_jobs = max_running_jobs
        self.max_relaunches = max_relaunches
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self._ray_address = ray_address
        self._head = None if ray_address else LocalRayHead(work_dir / "ray-head.log", ray_num_cpus)
        self._drivers: dict[str, _Driver] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time (the thread, or a caller of tick())
        self.last_error: str | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover and launch now, then keep doing so in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="autocompress-launcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next tick now (a job was submitted or cancelled)."""
        self._wake.set()

    def close(self, grace_s: float = 15.0) -> None:
        """Stop the loop, end this launcher's drivers (SIGTERM, then SIGKILL) and the local Ray head."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for driver in self._drivers.values():
                _stop_process_group(driver.process, grace_s)
                driver.log.close()
            self._drivers.clear()
            if self._head is not None:
                self._head.stop()

    def status(self) -> dict[str, Any]:
        """For ``/healthz``: the queue limit, this launcher's live drivers, Ray, the last error."""
        return {
            "max_running_jobs": self.max_running_jobs,
            "drivers": sorted(self._drivers.copy()),  # the launcher thread may change it meanwhile
            "ray_address": self.ray_address,
            "last_error": self.last_error,
        }

    @property
    def ray_address(self) -> str | None:
        """The Ray cluster drivers connect to (the local head's once started)."""
        return self._ray_address or (self._head.address if self._head is not None else None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # -- one round --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Reap exited drivers, recover lost ones, launch queued jobs; errors are logged, never raised."""
        with self._lock:
            if self._stop.is_set():
                return
            try:
                self._reap()
                self._recover()
                self._launch_pending()
                self.last_error = None
            except Exception as exc:  # the database may be away for a moment: try again next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("job launcher: tick failed")

    def _reap(self) -> None:
        for job_id, driver in list(self._drivers.items()):
            if driver.process.poll() is not None:
                self._forget(job_id)

    def _forget(self, job_id: str) -> int | None:
        """Drop an exited driver of this launcher; its exit code."""
        driver = self._drivers.pop(job_id)
        driver.log.close()
        logger.info("driver of job %s exited with code %s", job_id, driver.process.returncode)
        return driver.process.returncode

    def _recover(self) -> None:
        for job in self.store.list_jobs(JobStatus.RUNNING, limit=1000):
            why = self._driver_lost(job)
            if why is None:
                continue
            try:
                self._handle_lost(job, why)
            except (ConflictError, NotFoundError):  # the job ended or went meanwhile
                continue

    def _driver_lost(self, job: JobRecord) -> str | None:
        """Why the job's driver counts as gone, or None while it is alive."""
        now = datetime.now(UTC)
        beat = job.heartbeat_at or job.started_at or job.created_at
        silent_s = (now - beat).total_seconds()
        mine = self._drivers.get(job.id)
        pid = _local_pid(job.driver_id)
        if mine is not None:
            if mine.process.poll() is not None:
                return f"driver process {mine.process.pid} exited with code {self._forget(job.id)}"
            alive = True
        elif pid is not None:
            alive = _process_runs_job(pid, job.id)
            if not alive:
                return f"driver process {pid} is gone"
        else:
            alive = False  # a driver elsewhere (``ray job submit``): only its heartbeat tells
        if silent_s <= self.stale_after_s:
            return None
        if alive and mine is not None:
            _stop_process_group(mine.process, grace_s=5)  # alive but wedged: no heartbeat
        elif alive and pid is not None:  # a driver of an earlier launcher (the leader of its own session)
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        return f"no heartbeat from driver {job.driver_id or '(unknown)'} for {silent_s:.0f} s"

    def _handle_lost(self, job: JobRecord, why: str) -> None:
        if job.cancel_requested_by is not None:
            self.store.set_job_status(
                job.id, JobStatus.CANCELLED, reason=f"cancelled by {job.cancel_requested_by}"
            )
            return
        relaunches = sum(1 for e in self.store.list_events(job.id) if e.kind == RELAUNCH_EVENT)
        if relaunches < self.max_relaunches:
            self.store.add_event(
                job.id,
                RELAUNCH_EVENT,
                f"{why}; relaunching the driver to resume the search "
                f"(relaunch {relaunches + 1} of {self.max_relaunches})",
            )
            self._spawn(job.id)
            return
        tail = self._log_tail(job.id)
        reason = f"driver lost: {why}" + (f"; gave up after {relaunches} relaunch(es)" if relaunches else "")
        self.store.set_job_status(
            job.id, JobStatus.FAILED, reason=reason + (f" (last log line: {tail})" if tail else "")
        )

    def _launch_pending(self) -> None:
        free = self.max_running_jobs - self.store.count_jobs(JobStatus.RUNNING)
        if free <= 0:
            return
        pending = self.store.count_jobs(JobStatus.PENDING)
        if pending == 0:
            return
        oldest = self.store.list_jobs(JobStatus.PENDING, limit=free, offset=max(0, pending - free))
        for job in reversed(oldest):  # list_jobs is newest first
            if self._stop.is_set():
                return
            self._spawn(job.id)

    def _spawn(self, job_id: str) -> None:
        """Start the job's driver and record it as the job's driver (RUNNING); a cancelled job is left.

        A job whose folder cannot be written (the work folder is not a folder, a read-only disk)
        ends FAILED with that reason: it would never get further, and waiting would hide why.
        """
        job_dir = self.work_dir / job_id
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            log = (job_dir / DRIVER_LOG).open("ab")
        except OSError as exc:
            with contextlib.suppress(ConflictError, NotFoundError):  # cancelled or deleted meanwhile
                self.store.set_job_status(
                    job_id,
                    JobStatus.FAILED,
                    reason=f"work_dir: cannot write the job's folder {str(job_dir)!r}: {exc.strerror or exc}",
                )
            logger.error("job %s failed: its folder %s cannot be written: %s", job_id, job_dir, exc)
            return
        try:
            address = self._ray_address or (self._head.start() if self._head is not None else None)
        except BaseException:
            log.close()
            raise
        assert address is not None
        command = [
            sys.executable,
            "-m",
            "autocompress.cli",
            "search",
            "--job-id",
            job_id,
            "--work-dir",
            str(self.work_dir),
            "--address",
            address,
        ]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_driver_env(self.db_url, local=self._ray_address is None),
            start_new_session=True,
        )
        self._drivers[job_id] = _Driver(job_id, process, log)
        try:
            self.store.set_job_status(job_id, JobStatus.RUNNING, driver_id=driver_id_for(process.pid))
        except (ConflictError, NotFoundError):  # cancelled or deleted since it was listed
            _stop_process_group(process, grace_s=5)
            log.close()
            del self._drivers[job_id]
            return
        self.store.add_event(job_id, "driver", f"driver started: pid {process.pid}, Ray at {address}")
        logger.info("launched job %s: pid %d", job_id, process.pid)

    def _log_tail(self, job_id: str) -> str | None:
        log = self.work_dir / job_id / DRIVER_LOG
        if not log.is_file():
            return None
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - 4096))
            lines = [ln.strip() for ln in file.read().decode(errors="replace").splitlines() if ln.strip()]
        if not lines:
            return None
        # the CLI's one-line error, which the console may have wrapped over several lines
        errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
        return " ".join(lines[errors[-1] :] if errors else lines[-1:])[:500]
