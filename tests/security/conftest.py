"""Fixtures shared by the security tests."""

from sim.conftest import stations  # noqa: F401  (simulated stations, stopped after a test)
