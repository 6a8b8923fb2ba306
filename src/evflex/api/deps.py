"""What a route needs from the running node, as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from evflex.services import Services


def runtime(request: Request) -> Services:
    """The node's services (set on the app by :func:`evflex.app.create_api`)."""
    return request.app.state.runtime


Rt = Annotated[Services, Depends(runtime)]
