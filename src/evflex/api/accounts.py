"""Users and API tokens: /api/v1/users, /api/v1/api-tokens (admins)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
