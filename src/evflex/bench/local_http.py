"""An ASGI app served by uvicorn on 127.0.0.1 inside the running event loop: the
partners and receivers benchmarks (and tests) talk to over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn


class LocalHttp:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self, port: int = 0) -> int:
        """Serve on ``port`` (0: a free one); the port, once it accepts connections."""
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", access_log=False)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the bind error
                raise RuntimeError("HTTP server stopped during start")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None
