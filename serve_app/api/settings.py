"""How the job API runs: :class:`Settings`, read from ``AUTOCOMPRESS_*`` variables or built in code.

Every other module of the API takes its database, auth, folders and limits from here, so a bad
value is refused once, at startup, with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autocompress.errors import AutocompressError
from autocompress.store import default_store_url

__all__ = ["API_AUTH_MODES", "DEFAULT_MAX_BODY_BYTES", "Settings"]

API_AUTH_MODES = ("mutating", "all")
DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Settings:
    """How the API runs: database, auth, folders, the job queue and the Ray cluster.

    ``max_running_jobs`` 0 records jobs without launching any (an API replica next to the one
    that launches). ``data_dir`` is the only place a submitted spec may name files in; without
    it, specs with file paths are refused.
    """

    db_url: str
    api_token: str | None = None
    auth: str = "mutating"
    work_dir: Path = Path("runs")
    data_dir: Path | None = None
    max_running_jobs: int = 1
    max_relaunches: int = 2
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    launcher_poll_s: float = 2.0
    stale_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.auth not in API_AUTH_MODES:
            raise AutocompressError(
                f"AUTOCOMPRESS_API_AUTH: {self.auth!r} is not one of {list(API_AUTH_MODES)}"
            )
        if self.auth == "all" and not self.api_token:
            raise AutocompressError("AUTOCOMPRESS_API_AUTH=all needs AUTOCOMPRESS_API_TOKEN to be set")
        if self.max_running_jobs < 0:
            raise AutocompressError(f"AUTOCOMPRESS_MAX_RUNNING_JOBS: {self.max_running_jobs} must be >= 0")
        if self.max_body_bytes < 1024:
            raise AutocompressError(f"AUTOCOMPRESS_MAX_BODY_BYTES: {self.max_body_bytes} must be >= 1024")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``AUTOCOMPRESS_*`` variables and ``RAY_ADDRESS``; bad values name the variable."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def integer(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            try:
                return int(value)
            except ValueError:
                raise AutocompressError(f"{name}: {value!r} is not an integer") from None

        data_dir = text("AUTOCOMPRESS_DATA_DIR")
        numbers = {
            field: value
            for field, name in (
                ("max_running_jobs", "AUTOCOMPRESS_MAX_RUNNING_JOBS"),
                ("max_relaunches", "AUTOCOMPRESS_MAX_RELAUNCHES"),
                ("ray_num_cpus", "AUTOCOMPRESS_RAY_NUM_CPUS"),
                ("max_body_bytes", "AUTOCOMPRESS_MAX_BODY_BYTES"),
            )
            if (value := integer(name)) is not None
        }
        return cls(
            db_url=text("AUTOCOMPRESS_DB_URL") or default_store_url(),
            api_token=text("AUTOCOMPRESS_API_TOKEN"),
            auth=text("AUTOCOMPRESS_API_AUTH") or "mutating",
            work_dir=Path(text("AUTOCOMPRESS_WORK_DIR") or "runs"),
            data_dir=Path(data_dir) if data_dir else None,
            ray_address=text("RAY_ADDRESS"),
            **numbers,
        )
