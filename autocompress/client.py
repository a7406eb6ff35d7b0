"""A small HTTP client of the REST job API, for the ``autocompress jobs`` / ``models`` commands.

Every failure a user can meet is an :class:`ApiError` (an ``AutocompressError``) with one line: the
server's ``detail`` and status for a 4xx/5xx answer, or what to check when the server cannot be
reached, so the CLI prints it without a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from autocompress.errors import AutocompressError

API_URL_ENV = "AUTOCOMPRESS_API_URL"
API_TOKEN_ENV = "AUTOCOMPRESS_API_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:8000"


class ApiError(AutocompressError):
    """The API refused a request (``status`` is its HTTP status) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Talks to the job API at ``url`` (default ``AUTOCOMPRESS_API_URL``), with an optional bearer token."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = (url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise AutocompressError(f"--url: {self.url!r} must start with http:// or https://")
        token = token if token is not None else os.environ.get(API_TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"cannot reach the autocompress API at {self.url} ({_reason(exc)}); is it running? "
                f"(set --url or {API_URL_ENV})"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(
                f"the autocompress API at {self.url} did not answer {method} {path} in time"
            ) from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path} at {self.url} failed: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(f"HTTP {response.status_code}: {_detail(response)}", response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- jobs -----------------------------------------------------------------------------------

    def submit_job(self, spec: Mapping[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job spec; the same ``idempotency_key`` again returns the job it created first."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._json("POST", "/v1/jobs", json=dict(spec), headers=headers)
        return result

    def list_jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        result: dict[str, Any] = self._json("GET", "/v1/jobs", params=params)
        return result

    def get_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{_segment(job_id)}")
        return result

    def list_trials(self, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        result: list[dict[str, Any]] = self._json(
            "GET", f"/v1/jobs/{_segment(job_id)}/trials", params=params
        )["trials"]
        return result

    def job_pareto(self, job_id: str) -> dict[str, Any]:
        """The Pareto front of the job's finished trials, the winner so far and the closest to budget."""
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{_segment(job_id)}/pareto")
        return result

    def trial_curve(self, job_id: str, trial: str) -> dict[str, Any]:
        """A trial's learning curve: its per-epoch reports in epoch order (``epochs``)."""
        result: dict[str, Any] = self._json(
            "GET", f"/v1/jobs/{_segment(job_id)}/trials/{_segment(trial)}/curve"
        )
        return result

    def register_trial(
        self,
        job_id: str,
        trial: str,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register a finished trial as the next version of ``name`` (default: from the job); the model."""
        body: dict[str, Any] = {"tags": dict(tags or {})}
        if name:
            body["name"] = name
        result: dict[str, Any] = self._json(
            "POST", f"/v1/jobs/{_segment(job_id)}/trials/{_segment(trial)}/register", json=body
        )
        return result

    def cancel_job(self, job_id: str, by: str | None = None) -> dict[str, Any]:
        body = {"by": by} if by else None
        result: dict[str, Any] = self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel", json=body)
        return result

    def job_events(self, job_id: str, after_id: int = 0) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "GET", f"/v1/jobs/{_segment(job_id)}/logs", params={"after_id": after_id}
        )
        return result

    # -- models ---------------------------------------------------------------------------------

    def list_models(self, job_id: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if job_id:
            params["job_id"] = job_id
        result: dict[str, Any] = self._json("GET", "/v1/models", params=params)
        return result

    def get_model(self, model_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/models/{_segment(model_id)}")
        return result

    def download_model(self, model_id: str, out: Path) -> int:
        """Stream the model's ONNX file to ``out`` (written whole or not at all); returns its size."""
        path = f"/v1/models/{_segment(model_id)}/artifact"
        partial = out.with_name(out.name + ".part")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(f"HTTP {response.status_code}: {_detail(response)}", response.status_code)
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes(chunk_size=1 << 20):
                        file.write(chunk)
            partial.replace(out)
        except httpx.ConnectError as exc:
            raise ApiError(f"cannot reach the autocompress API at {self.url} ({_reason(exc)})") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"downloading model {model_id} from {self.url} failed: {exc}") from None
        except OSError as exc:
            raise AutocompressError(f"--out: cannot write {out}: {exc.strerror}") from None
        finally:
            partial.unlink(missing_ok=True)
        return out.stat().st_size


def _segment(value: str) -> str:
    """An id as one path segment (no '/' or '?' can steer the request elsewhere)."""
    if not value or any(c in value for c in "/?#%") or value in (".", ".."):
        raise AutocompressError(f"id: {value!r} is not a valid id")
    return value


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return "connection refused" if "refused" in text.lower() or not text else text


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    return str(body)[:300]
