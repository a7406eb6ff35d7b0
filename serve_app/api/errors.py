"""Which exception becomes which status: the store's and the spec's errors as 4xx, the database away as 503.

Every error answer is an :class:`ErrorBody` with a one-line ``detail`` naming the field; routes
document theirs with :func:`error_responses`, and :func:`add_error_handlers` installs the mapping
on an app, so a route raises the library's errors and never builds an error response itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.applications import Starlette

from autocompress.errors import AutocompressError
from autocompress.store import ConflictError, NotFoundError

__all__ = ["COMMON_ERRORS", "ErrorBody", "add_error_handlers", "error_responses"]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line naming the field (``spec.search.num_trials: ...``); a 422 from
    request validation also lists pydantic's errors."""

    detail: str
    errors: list[dict[str, Any]] | None = None


_ERROR_MEANINGS = {
    400: "the body cannot be parsed (not UTF-8 text)",
    401: "the bearer token is missing or wrong",
    403: "the model's file lies outside this server's artifact root",
    404: "no such job, model or alias",
    409: "the state of the job, model or alias forbids it",
    413: "the body is larger than the server's limit",
    422: "a bad spec, body, query or header: one line naming each field",
    503: "the database is unavailable; try again shortly",
}
# what any route may answer: auth and the body limit (RequestGuard), validation, the database away
COMMON_ERRORS = (401, 413, 422, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting these error statuses with the :class:`ErrorBody` they carry."""
    # JSON whatever the route's own media type (the report is HTML, its errors are not)
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status], "content": json_body}
        for status in statuses
    }


def add_error_handlers(app: Starlette) -> None:
    """Map the store's, the spec's and the database's exceptions to their status on ``app``."""
    app.add_exception_handler(NotFoundError, _error(404))
    app.add_exception_handler(ConflictError, _error(409))
    app.add_exception_handler(AutocompressError, _error(422))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_unavailable)  # a lost connection of another class
    app.add_exception_handler(DataError, _database_refused_value)


def _error(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with one line naming each bad field (``spec.search.num_trials: ...``), plus pydantic's list."""
    assert isinstance(exc, RequestValidationError)
    body_name = "spec" if request.url.path.rstrip("/") == "/v1/jobs" else "body"
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            lines.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
            continue
        if loc and loc[0] == "body":
            where = ".".join([body_name, *loc[1:]])
        else:
            where = " ".join([loc[0], ".".join(loc[1:])]) if loc else "request"
        if err.get("type") == "extra_forbidden":
            lines.append(f"{where}: unknown field")
        elif err.get("type") == "missing":
            lines.append(f"{where}: required")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            got = repr(err.get("input"))
            lines.append(f"{where}: {message} (got {got[:80] + '...' if len(got) > 80 else got})")
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return JSONResponse({"detail": "; ".join(lines), "errors": errors}, status_code=422)


async def _database_refused_value(_request: Request, exc: Exception) -> JSONResponse:
    """A value that passed validation but the database cannot hold (a NUL in a PostgreSQL text field)."""
    assert isinstance(exc, DataError)
    reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0][:200]
    return JSONResponse({"detail": f"body: a value the database cannot store ({reason})"}, status_code=422)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, OperationalError) and not getattr(exc, "connection_invalidated", False):
        raise exc  # a database error that is not the database being away stays a server error
    return JSONResponse(
        {"detail": f"database: unavailable ({type(exc).__name__}); try again shortly"}, status_code=503
    )
