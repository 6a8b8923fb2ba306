"""OCPI 2.2.1 commands (cpo)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter()


def attach(node: Any) -> None:
    """Register this module's event handlers on the OCPI node."""
