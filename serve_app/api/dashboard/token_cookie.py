"""The browser's bearer token: a cookie that stands in for the ``Authorization`` header on reads.

A page load cannot send a header, so under ``AUTOCOMPRESS_API_AUTH=all`` the dashboard would be
out of reach of a browser. Opening ``/dashboard?token=<token>`` once sets an HttpOnly, SameSite=Strict
cookie (and redirects to the same page without the token in its address); afterwards the cookie is
turned into ``Authorization: Bearer <token>`` for GET, HEAD and OPTIONS requests only, before the
API's :class:`~serve_app.api.guards.RequestGuard` checks it. A cookie never authorizes a
POST or DELETE, so another site cannot make a browser change anything. A wrong token is refused by
the guard as any wrong token is (401). With auth ``mutating`` (the default) reads are open and this
middleware does nothing.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse

from serve_app.api.guards import SAFE_METHODS
from serve_app.api.settings import Settings

__all__ = ["TOKEN_COOKIE", "TOKEN_QUERY", "TokenCookie"]

TOKEN_COOKIE = "autocompress_token"
TOKEN_QUERY = "token"

Scope = dict[str, Any]


def _is_dashboard(path: str) -> bool:
    return path == "/dashboard" or path.startswith("/dashboard/")


class TokenCookie:
    """ASGI middleware in front of the guard: ``?token=`` on a dashboard page sets the cookie; the
    cookie becomes the bearer header on safe methods (only with auth ``all``)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.token = settings.api_token if settings.auth == "all" else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.token is None or scope["type"] != "http" or scope["method"] not in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        if any(name == b"authorization" for name, _ in headers):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = next((value for name, value in query if name == TOKEN_QUERY), None)
        if given is not None and _is_dashboard(scope["path"]):
            if secrets.compare_digest(given.encode(), self.token.encode()):
                rest = urlencode([(n, v) for n, v in query if n != TOKEN_QUERY])
                response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
                # path "/": the pages read the job routes (/v1/jobs/...) with it too
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
                await response(scope, receive, send)
                return
            cookie = given  # a wrong token in the address: the guard refuses it with its own message
        else:
            cookies = cookie_parser(b"; ".join(v for n, v in headers if n == b"cookie").decode("latin-1"))
            cookie = cookies.get(TOKEN_COOKIE)
        if cookie:
            headers.append((b"authorization", b"Bearer " + cookie.encode("latin-1", "replace")))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
