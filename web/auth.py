"""Optional bearer-token authentication of the ``/api`` routes.

When ``settings.API_TOKEN`` is set, every request under ``/api/`` must carry ``Authorization: Bearer
<token>``; otherwise it is answered ``401 unauthorized`` with ``WWW-Authenticate: Bearer`` before its body
is read.  Tokens are compared with ``hmac.compare_digest`` (constant time) and never logged.  Health,
readiness, metrics and the OpenAPI document stay open, as probes and scrapers need them.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from web.errors import Unauthorized, error_response

#: Paths under this prefix need the token.
PROTECTED_PREFIX = "/api/"


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, as bytes; ``None`` for another scheme."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Bytes: compare_digest refuses non-ASCII str, and a client may send any header bytes.
    return credentials.strip().encode("utf-8", "surrogateescape")


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the bearer token ``expected`` (constant-time compare)."""
    presented = bearer_token(authorization)
    return presented is not None and hmac.compare_digest(presented, expected.encode("utf-8"))


class BearerTokenMiddleware:
    """Refuses ``/api/`` requests without the right bearer token (pure ASGI: nothing is read first).

    Parameters:
      app(ASGIApp): The application to protect.
      token(str): The expected token; empty turns the check off.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token
            and scope["type"] == "http"
            and (scope["path"] + "/").startswith(PROTECTED_PREFIX)
            and not token_matches(self.token, Headers(scope=scope).get("authorization"))
        ):
            refusal = Unauthorized()
            response = error_response(refusal.status, refusal.code, refusal.message, refusal.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
