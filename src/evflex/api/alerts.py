"""Alerts: /api/v1/alerts, acknowledgement, rules."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
