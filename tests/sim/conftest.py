"""Shared by the simulator tests: a polling wait and the stations a test made."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from evflex.sim import SimStation


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
async def stations():
    """Stations a test starts; stopped afterwards."""
    made: list[SimStation] = []
    yield made
    await asyncio.gather(*(s.stop(timeout=2.0) for s in made))
