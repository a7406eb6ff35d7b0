"""The ASGI guard in front of every route: bearer token, body size limit and NUL characters in URLs.

It runs before FastAPI parses anything, so a request without the token or with a body over the
limit is refused without reading the body, and the serving routers that join the app are guarded
the same way as the job routes.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from serve_app.api.settings import Settings

__all__ = ["SAFE_METHODS", "RequestGuard"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: the bearer token (mutating methods, or every request with auth ``all``), the
    body size limit (413 from ``Content-Length``, or while a chunked body streams in) and URLs with a
    NUL character (422)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.token = settings.api_token.encode() if settings.api_token else None
        self.auth_all = settings.auth == "all"
        self.max_body_bytes = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and (self.auth_all or scope["method"] not in SAFE_METHODS):
            refusal = self._refuse_token(headers.get(b"authorization"))
            if refusal is not None:
                await _send_json(send, 401, refusal, {"www-authenticate": "Bearer"})
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_json(send, 413, self._too_large())
            return
        nul = _nul_in(scope)
        if nul is not None:
            await _send_json(send, 422, f"{nul}: must not contain a NUL character (%00)")
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)

    def _refuse_token(self, header: bytes | None) -> str | None:
        assert self.token is not None
        if not header:
            return "Authorization: this route needs a bearer token (Authorization: Bearer <token>)"
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
            return "Authorization: the bearer token is not valid"
        return None

    def _too_large(self) -> str:
        return f"body: larger than the limit of {self.max_body_bytes} bytes"


def _nul_in(scope: Scope) -> str | None:
    """``path`` or ``query`` when the URL carries a NUL character (no id, name or value holds one, and
    PostgreSQL refuses them in text), else None."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return "query"
    return None


async def _send_json(send: Send, status: int, detail: str, extra: Mapping[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=dict(extra or {}))
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
