"""The audit trail: /api/v1/audit (read and export only)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
