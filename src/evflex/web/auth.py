"""Who may use the API: operators (password + TOTP, cookie) and machines (bearer tokens).

- Passwords are hashed with Argon2id (``argon2-cffi``'s defaults: 64 MiB,
  3 passes). A failed login for an unknown user costs the same hash, so the
  answer time does not tell which users exist.
- The second factor is TOTP (RFC 6238, 30 s steps, SHA-1, six digits: what
  every authenticator app speaks). One step either side is accepted for clock
  drift, and no step is accepted twice per user (a seen code cannot be replayed).
- Failed logins are counted per source address and per user name; after
  ``max_failures`` within ``window_s`` the next attempts get 429 until the
  oldest failure leaves the window. Bad API tokens and forged driver tokens
  are counted per source address alike. Behind a reverse proxy the source is
  the client it forwarded for, if the proxy is in ``trusted_proxies``.
- Every refusal is a ``Security`` event with its source address
  (:mod:`evflex.security.audit`): a failed login, a role too low for the
  route, a bad API or driver token, a source being rate limited.
- A browser gets an opaque session id in an HttpOnly, SameSite=Strict cookie
  (Secure over HTTPS); only its SHA-256 is stored. Requests that change
  something with that cookie must repeat the session's CSRF token in
  ``X-CSRF-Token``.
- Machines send ``Authorization: Bearer <token>``; only the token's SHA-256
  is stored. In-process tools get an ephemeral token that lives in memory.

Auth uses wall-clock time throughout, never the simulation clock: the
authenticator app on a phone does too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import utcnow
from evflex.security import audit
from evflex.security.audit import FailureLimiter
from evflex.store.tables import ApiToken, User, WebSession

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "evflex_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOTP_STEP_S = 30
LAST_USED_STEP = timedelta(minutes=1)  # an API token's last use is stored this finely

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("evflex: no such user")


def rank(role: str) -> int:
    return ROLES.index(role)


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ------------------------------------------------------------------ what a route needs

API = "/api/v1"
# Registration of stations, cards, sites and circuits: admins only.
_ADMIN_ROUTES = {
    ("POST", f"{API}/stations"),
    ("PATCH", f"{API}/stations/{{station_id}}"),
    ("DELETE", f"{API}/stations/{{station_id}}"),
    ("POST", f"{API}/id-tokens"),
    ("PUT", f"{API}/id-tokens/{{id_token}}"),
    ("DELETE", f"{API}/id-tokens/{{id_token}}"),
    ("POST", f"{API}/sites"),
    ("DELETE", f"{API}/sites/{{site_id}}"),
    ("POST", f"{API}/circuits"),
    ("PATCH", f"{API}/circuits/{{circuit_id}}"),
    ("DELETE", f"{API}/circuits/{{circuit_id}}"),
    ("POST", f"{API}/admin/tls/reload"),
    ("POST", f"{API}/stations/{{station_id}}/security-profile"),
    ("POST", f"{API}/users"),
    ("PATCH", f"{API}/users/{{username}}"),
    ("POST", f"{API}/users/{{username}}/reset-totp"),
    ("POST", f"{API}/users/{{username}}/reset-password"),
    ("POST", f"{API}/api-tokens"),
    ("DELETE", f"{API}/api-tokens/{{token_id}}"),
    ("PUT", f"{API}/sites/{{site_id}}/tariff"),
    ("POST", f"{API}/ocpi/invitations"),
    ("DELETE", f"{API}/ocpi/partners/{{partner_id}}"),
}
# Card numbers are personal data: not for viewers.
_OPERATOR_READS = {
    f"{API}/id-tokens", f"{API}/id-tokens/{{id_token}}",
    f"{API}/ocpi/partners/{{partner_id}}/outbox",  # a token push's path holds a card's uid
    f"{API}/ocpi/received/{{module}}",  # partners' Sessions and CDRs name the driver's card
}  # fmt: skip
# Accounts and API tokens: admins only, reading them too.
_ADMIN_READS = {
    f"{API}/users", f"{API}/api-tokens",
    # diagnostics and logs a station uploaded may hold anything
    f"{API}/stations/{{station_id}}/uploads", f"{API}/stations/{{station_id}}/uploads/{{name}}",
}  # fmt: skip
# Day-to-day station commands an operator may send; the rest (configuration,
# local lists, data transfer, monitoring set-up ...) are for admins.
OPERATOR_COMMANDS = frozenset({
    "reset", "change-availability", "remote-start", "remote-stop", "trigger-message",
    "unlock-connector", "reserve-now", "cancel-reservation", "get-configuration",
    "get-variables", "get-composite-schedule", "get-charging-profiles",
    "get-local-list-version", "use-priority-charging",
})  # fmt: skip
_COMMAND_ROUTES = f"{API}/stations/{{station_id}}/commands/"  # + {command} or its name


def required_role(method: str, route_path: str, path_params: dict) -> str:
    """The least role that may call ``method route_path``."""
    if method in SAFE_METHODS:
        if route_path in _ADMIN_READS:
            return "admin"
        return "operator" if route_path in _OPERATOR_READS else "viewer"
    if (method, route_path) in _ADMIN_ROUTES:
        return "admin"
    if route_path.startswith(_COMMAND_ROUTES):
        command = path_params.get("command") or route_path.removeprefix(_COMMAND_ROUTES)
        return "operator" if command in OPERATOR_COMMANDS else "admin"
    return "operator"


# ------------------------------------------------------------------ principals


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "session" or "token"
    name: str
    role: str
    csrf_token: str | None = None


class LoginRefused(Exception):
    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str, issuer: str = "evflex") -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def totp_step(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The step ``code`` belongs to (now, or one either side), if it was not used before."""
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    here = int(now // TOTP_STEP_S)
    for step in (here, here - 1, here + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP_S), code):
            return step if last_step is None or step > last_step else None
    return None


def new_token() -> str:
    return "evf_" + secrets.token_urlsafe(32)


# ------------------------------------------------------------------ store operations


async def add_user(
    s: AsyncSession, username: str, password: str, role: str, totp_secret: str | None = None
) -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    _check_password(password)
    if await s.get(User, username) is not None:
        raise ValueError(f"user '{username}' exists")
    user = User(
        username=username,
        password_hash=_hasher.hash(password),
        totp_secret=totp_secret or new_totp_secret(),
        role=role,
        disabled=False,
        created_at=utcnow(),
    )
    s.add(user)
    return user


def _check_password(password: str) -> None:
    if len(password) < 10:
        raise ValueError("the password must have at least 10 characters")


async def end_sessions(s: AsyncSession, username: str) -> None:
    """Log the user's browsers out."""
    await s.execute(delete(WebSession).where(WebSession.username == username))


async def set_password(s: AsyncSession, username: str, password: str) -> bool:
    """A new password; the user's browser sessions end. False if there is no such user."""
    _check_password(password)
    user = await s.get(User, username)
    if user is None:
        return False
    user.password_hash = _hasher.hash(password)
    await end_sessions(s, username)
    return True


async def reset_totp(s: AsyncSession, username: str) -> str | None:
    """A new TOTP secret (returned); the user's browser sessions end. None: no such user."""
    user = await s.get(User, username)
    if user is None:
        return None
    user.totp_secret = new_totp_secret()
    user.totp_last_step = None
    await end_sessions(s, username)
    return user.totp_secret


async def add_token(s: AsyncSession, role: str, name: str | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    s.add(ApiToken(token_sha256=sha256(token), role=role, name=name, created_at=utcnow()))
    return token


class AuthService:
    """Checks credentials against the store; keeps the failure limiter and ephemeral
    tokens; records every refusal as a ``Security`` event in ``events``."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        events: audit.EventSink,
        session_hours: float = 12.0,
        limiter: FailureLimiter | None = None,
        secure_cookies: bool | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.sessionmaker = sessionmaker
        self.events = events
        self.session_s = session_hours * 3600.0
        self.limiter = limiter or FailureLimiter()
        self.secure_cookies = secure_cookies
        self.trusted = audit.networks(trusted_proxies)
        self._ephemeral: dict[str, Principal] = {}

    def source(self, request: Request) -> str:
        """The client's address (behind a trusted proxy: the client it forwarded for)."""
        peer = request.client.host if request.client else ""
        return audit.source_address(peer, request.headers.getlist("x-forwarded-for"), self.trusted)

    async def refuse(self, request: Request, code: str, reason: str, **detail: object) -> str:
        """Record the refusal of ``request`` (its source, method and path); returns the source."""
        source = self.source(request)
        await audit.record(
            self.events, code, source, reason, method=request.method, path=request.url.path,
            **detail,
        )  # fmt: skip
        return source

    async def limited(self, request: Request, counter: str, what: str) -> None:
        """429 (one ``RateLimited`` event per window) while the request's source has
        too many recent ``counter`` failures."""
        source = self.source(request)
        wait = await audit.refused(self.events, self.limiter, [f"{counter}:{source}"], source, what)
        if wait is not None:
            raise HTTPException(
                429, f"too many failed {what}; try again in {wait} s", {"Retry-After": str(wait)}
            )

    async def failed(
        self, request: Request, counter: str, code: str, reason: str, **detail: object
    ) -> None:
        """Record the refusal and count it against the request's source."""
        source = await self.refuse(request, code, reason, **detail)
        self.limiter.fail([f"{counter}:{source}"])

    def ephemeral_token(self, role: str = "admin", name: str = "in-process") -> str:
        """A token valid while this process runs; nothing is stored."""
        token = new_token()
        self._ephemeral[sha256(token)] = Principal("token", name, role)
        return token

    async def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return await self._bearer(value.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return await self._session(cookie)
        return None

    async def _bearer(self, token: str) -> Principal | None:
        digest = sha256(token)
        if digest in self._ephemeral:
            return self._ephemeral[digest]
        async with self.sessionmaker() as s:
            row = (
                await s.execute(select(ApiToken).where(ApiToken.token_sha256 == digest))
            ).scalar_one_or_none()
        if row is None or row.revoked:
            return None
        await self._used(row)
        return Principal("token", row.name or f"token {row.id}", row.role)

    async def _used(self, row: ApiToken) -> None:
        """Note when a token was last used, to the minute (one write a minute at most)."""
        now = utcnow()
        if row.last_used_at is not None and now - row.last_used_at < LAST_USED_STEP:
            return
        async with self.sessionmaker() as s, s.begin():
            await s.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))

    async def _session(self, cookie: str) -> Principal | None:
        async with self.sessionmaker() as s:
            ws = await s.get(WebSession, sha256(cookie))
            if ws is None or ws.expires_at <= utcnow():
                return None
            user = await s.get(User, ws.username)
        if user is None or user.disabled:
            return None
        return Principal("session", user.username, user.role, ws.csrf_token)

    async def login(
        self, username: str, password: str, code: str, client: str
    ) -> tuple[str, Principal]:
        """A new session id (for the cookie) and who logged in, or :class:`LoginRefused`.
        ``client`` is the source address (:meth:`source`)."""
        keys = [f"ip:{client}", f"user:{username.lower()}"]
        wait = await audit.refused(self.events, self.limiter, keys, client, "logins")
        if wait is not None:
            raise LoginRefused(429, f"too many failed logins; try again in {wait} s", wait)
        async with self.sessionmaker() as s, s.begin():
            user = await s.get(User, username)
            ok = _verify(user.password_hash if user else _DUMMY_HASH, password)
            step = None
            if ok and user is not None and not user.disabled:
                step = totp_step(user.totp_secret, code, time.time(), user.totp_last_step)
            if step is None or user is None:
                self.limiter.fail(keys)
                why = (
                    "no such user" if user is None
                    else "wrong password" if not ok
                    else "account disabled" if user.disabled
                    else "wrong or already used one-time code"
                )  # fmt: skip
                await audit.record(self.events, "LoginFailed", client, why, user=username)
                # one answer for every failure: which factor was wrong is not told
                raise LoginRefused(401, "wrong user name, password or one-time code")
            self.limiter.clear(keys[1])
            now = utcnow()
            user.totp_last_step = step
            user.last_login_at = now
            sid = secrets.token_urlsafe(32)
            principal = Principal("session", user.username, user.role, secrets.token_urlsafe(24))
            await s.execute(delete(WebSession).where(WebSession.expires_at <= now))
            s.add(
                WebSession(
                    id_sha256=sha256(sid),
                    username=user.username,
                    csrf_token=principal.csrf_token,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.session_s),
                )
            )
        return sid, principal

    async def logout(self, cookie: str | None) -> None:
        if not cookie:
            return
        async with self.sessionmaker() as s, s.begin():
            await s.execute(delete(WebSession).where(WebSession.id_sha256 == sha256(cookie)))

    def cookie_secure(self, request: Request) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        proto = request.headers.get("x-forwarded-proto", request.url.scheme)
        return proto == "https"


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# The two ways in, declared for the OpenAPI (Swagger's "Authorize"); authorize() checks them.
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API token: `evflex token create --role viewer|operator|admin`",
    auto_error=False,
)
session_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="session",
    description="The dashboard's login cookie (POST /api/v1/auth/login); requests that change "
    "something also send the session's CSRF token in X-CSRF-Token",
    auto_error=False,
)


async def authorize(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
    _session: Annotated[str | None, Depends(session_scheme)] = None,
) -> Principal:
    """FastAPI dependency of every ``/api/v1`` route: 401 without credentials, 403 below role."""
    auth: AuthService = request.app.state.runtime.auth
    bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
    if bearer:
        await auth.limited(request, "token", "API tokens")
    principal = await auth.principal(request)
    if principal is None:
        if bearer:
            await auth.failed(request, "token", "InvalidApiToken", "unknown or revoked API token")
        raise HTTPException(
            401,
            "authentication required: a session cookie (log in at /login) or "
            "'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    need = required_role(request.method, path, request.path_params)
    if rank(principal.role) < rank(need):
        reason = f"role '{principal.role}' may not {request.method} {path}: needs '{need}'"
        await auth.refuse(
            request, "ForbiddenRole", reason, user=principal.name, role=principal.role, needs=need
        )
        raise HTTPException(403, reason)
    if principal.kind == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not (principal.csrf_token and hmac.compare_digest(sent, principal.csrf_token)):
            reason = "missing or wrong X-CSRF-Token header"
            await auth.refuse(request, "InvalidCsrfToken", reason, user=principal.name)
            raise HTTPException(403, reason)
    request.state.principal = principal
    return principal
