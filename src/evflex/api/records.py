"""Charge records and tariffs: /api/v1/charge-records, /api/v1/sites/{id}/tariff."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
