"""What a route needs from the running node, as a FastAPI dependency."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.services import Services


def runtime(request: Request) -> Services:
    """The node's services (set on the app by :func:`evflex.app.create_api`)."""
    return request.app.state.runtime


Rt = Annotated[Services, Depends(runtime)]


async def delete_row(
    rt: Services,
    get: Callable[[AsyncSession, str], Awaitable[Any]],
    key: str,
    missing: str,
) -> None:
    """Delete the row ``get`` finds for ``key`` in one write; 404 ``missing`` if there is none."""

    async def job(s: AsyncSession) -> bool:
        row = await get(s, key)
        if row is None:
            return False
        await s.delete(row)
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(404, missing)
