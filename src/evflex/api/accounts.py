"""Users and API tokens: /api/v1/users, /api/v1/api-tokens (admins, reading them too).

The same store operations as ``evflex user`` and ``evflex token`` (:mod:`evflex.web.auth`).
A TOTP secret and an API token are shown once, in the answer that makes them; only an
API token's hash is kept. Resetting a password or a TOTP secret, and disabling an account,
log its browsers out. An admin cannot disable or demote themself, nor the last enabled
admin (409).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.api.deps import Rt
from evflex.api.schemas import Int64
from evflex.store.tables import ApiToken, User
from evflex.web.auth import (
    Principal,
    add_token,
    add_user,
    authorize,
    end_sessions,
    reset_totp,
    set_password,
    sha256,
    totp_uri,
)

router = APIRouter(prefix="/api/v1")
Who = Annotated[Principal, Depends(authorize)]
Role = Literal["viewer", "operator", "admin"]


class UserOut(BaseModel):
    username: str
    role: str
    disabled: bool
    created_at: datetime | None = None
    last_login_at: datetime | None = None
    totp_configured: bool = Field(
        description="A code of the current TOTP secret was used to log in (the app is set up)"
    )


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    role: Role = "operator"
    password: str = Field(max_length=1024, description="At least 10 characters")


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(max_length=1024, description="At least 10 characters")


class TotpOut(BaseModel):
    username: str
    totp_secret: str = Field(description="Shown once: for the authenticator app")
    otpauth_uri: str = Field(description="The same as an otpauth:// URI (a QR code's content)")


class UserCreated(UserOut, TotpOut):
    pass


class ApiTokenOut(BaseModel):
    id: int
    name: str | None = None
    role: str
    created_at: datetime
    last_used_at: datetime | None = Field(None, description="To the minute")
    revoked: bool


class ApiTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=128, description="What the token is for")
    role: Role = "viewer"


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="Shown once: send it as 'Authorization: Bearer <token>'")


def _user_out(u: User) -> UserOut:
    return UserOut(
        username=u.username,
        role=u.role,
        disabled=bool(u.disabled),
        created_at=u.created_at,
        last_login_at=u.last_login_at,
        totp_configured=u.totp_last_step is not None,
    )


def _totp_out(username: str, secret: str) -> TotpOut:
    return TotpOut(username=username, totp_secret=secret, otpauth_uri=totp_uri(secret, username))


def _no_user(username: str) -> HTTPException:
    return HTTPException(404, f"no user '{username}'")


def _policy(exc: ValueError) -> HTTPException:
    """A rule of the account store (role, password policy) the input breaks."""
    return HTTPException(422, str(exc))


# ------------------------------------------------------------------ users


@router.get("/users", response_model=list[UserOut], tags=["accounts"])
async def list_users(rt: Rt):
    async with rt.sessionmaker() as s:
        users = (await s.execute(select(User).order_by(User.username))).scalars()
        return [_user_out(u) for u in users]


@router.post("/users", response_model=UserCreated, status_code=201, tags=["accounts"])
async def create_user(body: UserCreate, rt: Rt):
    """A dashboard account; the answer holds its TOTP secret, once."""

    async def job(s: AsyncSession) -> UserCreated:
        if await s.get(User, body.username) is not None:
            raise HTTPException(409, f"user '{body.username}' exists")
        try:
            user = await add_user(s, body.username, body.password, body.role)
        except ValueError as exc:
            raise _policy(exc) from None
        totp = _totp_out(user.username, user.totp_secret)
        return UserCreated(**_user_out(user).model_dump(), **totp.model_dump(exclude={"username"}))

    return await rt.writer.submit(job)


async def _enabled_admins(s: AsyncSession) -> int:
    q = select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False))
    return (await s.execute(q)).scalar_one()


@router.patch("/users/{username}", response_model=UserOut, tags=["accounts"])
async def patch_user(username: str, body: UserPatch, rt: Rt, who: Who):
    """A new role, or disable (its browsers are logged out) and enable again."""

    async def job(s: AsyncSession) -> UserOut:
        user = await s.get(User, username)
        if user is None:
            raise _no_user(username)
        demoted = body.role is not None and body.role != "admin"
        locked = bool(body.disabled)
        if user.role == "admin" and not user.disabled and (demoted or locked):
            if who.kind == "session" and who.name == username:
                raise HTTPException(409, "you cannot disable or demote your own account")
            if await _enabled_admins(s) <= 1:
                raise HTTPException(
                    409, f"'{username}' is the last enabled admin: it cannot be disabled or demoted"
                )
        if body.role is not None:
            user.role = body.role
        if body.disabled is not None:
            user.disabled = body.disabled
            if body.disabled:
                await end_sessions(s, username)
        return _user_out(user)

    return await rt.writer.submit(job)


@router.post("/users/{username}/reset-totp", response_model=TotpOut, tags=["accounts"])
async def reset_user_totp(username: str, rt: Rt):
    """A new TOTP secret (a lost phone), shown once; the user's browsers are logged out."""

    async def job(s: AsyncSession) -> str | None:
        return await reset_totp(s, username)

    secret = await rt.writer.submit(job)
    if secret is None:
        raise _no_user(username)
    return _totp_out(username, secret)


@router.post("/users/{username}/reset-password", response_model=UserOut, tags=["accounts"])
async def reset_user_password(username: str, body: PasswordIn, rt: Rt):
    """A new password; the user's browsers are logged out."""

    async def job(s: AsyncSession) -> UserOut:
        try:
            found = await set_password(s, username, body.password)
        except ValueError as exc:
            raise _policy(exc) from None
        if not found:
            raise _no_user(username)
        return _user_out(await s.get(User, username))

    return await rt.writer.submit(job)


# ------------------------------------------------------------------ API tokens


def _api_token_out(t: ApiToken) -> ApiTokenOut:
    return ApiTokenOut.model_validate(t, from_attributes=True)


@router.get("/api-tokens", response_model=list[ApiTokenOut], tags=["accounts"])
async def list_api_tokens(rt: Rt):
    """Every stored token (never the token itself: only its hash is kept)."""
    async with rt.sessionmaker() as s:
        return [
            _api_token_out(t) for t in (await s.scalars(select(ApiToken).order_by(ApiToken.id)))
        ]


@router.post("/api-tokens", response_model=ApiTokenCreated, status_code=201, tags=["accounts"])
async def create_api_token(body: ApiTokenCreate, rt: Rt):
    """A token for a machine; the answer holds it, once."""

    async def job(s: AsyncSession) -> ApiTokenCreated:
        token = await add_token(s, body.role, body.name)
        await s.flush()
        row = (
            await s.scalars(select(ApiToken).where(ApiToken.token_sha256 == sha256(token)))
        ).one()
        return ApiTokenCreated(**_api_token_out(row).model_dump(), token=token)

    return await rt.writer.submit(job)


@router.delete("/api-tokens/{token_id}", status_code=204, tags=["accounts"])
async def revoke_api_token(token_id: Int64, rt: Rt):
    """Revoke a token: its next request gets 401."""

    async def job(s: AsyncSession) -> bool:
        row = await s.get(ApiToken, token_id)
        if row is None:
            return False
        row.revoked = True
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(404, f"no API token {token_id}")
    return Response(status_code=204)
