"""Who is asking: the bearer token (API clients) or a session cookie signed with it (browsers).

A browser cannot attach an Authorization header to a page it navigates to, so the login page takes the token once
and sets a cookie `reviewer|expiry|HMAC(token, reviewer|expiry)`: HttpOnly (scripts never see it), SameSite=Strict
(no other site's page sends it), Secure over TLS. Rotating the token ends every session. A write sent with the
cookie must also carry the `X-Lema-Review` header, which a cross-site form cannot set (a second CSRF guard)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from lema.core.reviews import check_reviewer
from lema.core.security import read_token

COOKIE = "lema_review"
WRITE_HEADER = "X-Lema-Review"
REVIEWER_HEADER = "X-Lema-Reviewer"
API_REVIEWER = "api"


class Unauthenticated(Exception):
    """No valid token or session; the message never echoes what was sent."""


@dataclass(frozen=True)
class Caller:
    reviewer: str
    by_cookie: bool


def _mac(token: str, payload: str) -> str:
    key = hashlib.sha256(("lema-review-session\0" + token).encode()).digest()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, reviewer: str, hours: float, now: float | None = None) -> str:
    expires = int((now or time.time()) + hours * 3600)
    payload = f"{reviewer}|{expires}"
    return f"{payload}|{_mac(token, payload)}"


def check_login(token_env: str, offered: str, reviewer: str) -> str:
    """The reviewer name when `offered` is the token; Unauthenticated otherwise (InvalidInput for a bad name)."""
    token = read_token(token_env)
    if not token or not hmac.compare_digest(offered.strip().encode(), token.encode()):
        raise Unauthenticated("the token is not right")
    return check_reviewer(reviewer.strip())


def authenticate(token_env: str, authorization: str | None, cookie: str | None, reviewer_header: str | None,
                 now: float | None = None) -> Caller:
    token = read_token(token_env)
    if not token:  # as the admin API: with no token configured, no offered token can be right
        raise Unauthenticated(f"review pages are closed: set {token_env} for the server")
    if authorization:
        scheme, _, offered = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
            # the reviewer an API client grades as (a bad name is a 400 naming the header's field)
            return Caller(check_reviewer(reviewer_header) if reviewer_header else API_REVIEWER, False)
        raise Unauthenticated("the bearer token is not right")
    if cookie:
        reviewer, _, rest = cookie.partition("|")
        expires, _, mac = rest.partition("|")
        if expires.isdigit() and hmac.compare_digest(mac.encode(), _mac(token, f"{reviewer}|{expires}").encode()):
            if int(expires) < (now or time.time()):
                raise Unauthenticated("the session has expired: log in again")
            return Caller(reviewer, True)
    raise Unauthenticated("log in with the review token")
