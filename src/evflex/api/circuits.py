"""A site's circuit tree with live load per phase: /api/v1/sites/{id}/circuit-tree."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1")
