"""Alerts: raised, cleared and acknowledged."""

from __future__ import annotations

from evflex.store.tables import Base  # noqa: F401 (tables of this module go on its metadata)
