"""Serve any Python function `observation dict -> reply dict` over openpi's websocket protocol.

For policies that are not π0 (scripted controllers, replays, other models) behind the same clients and evaluation
runner: metadata frame first, then one reply per request; an exception in the function becomes openpi's text-frame
error reply and the connection stays open.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from textlatent.serving.wire import WireError, packb, unpackb

PolicyFunction = Callable[[dict[str, Any]], Mapping[str, Any]]


class FunctionServer:
    """`with FunctionServer(fn) as server: ... server.url ...` runs the server on a background thread."""

    def __init__(
        self,
        function: PolicyFunction,
        *,
        metadata: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.function = function
        self.metadata = dict(metadata or {})
        self.host, self._requested_port = host, port
        self.port: int | None = None
        self._lock = threading.Lock()  # one call at a time: the function need not be thread-safe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"ws://{self.host}:{self.port}"

    async def _handle(self, connection: ServerConnection) -> None:
        await connection.send(packb(self.metadata))
        try:
            async for frame in connection:
                try:
                    if isinstance(frame, str):
                        raise WireError("expected a binary msgpack frame")
                    request = unpackb(frame)
                    if not isinstance(request, dict):
                        raise WireError("the request must be a map")
                    reply = await asyncio.to_thread(self._call, request)
                    await connection.send(packb(dict(reply)))
                except ConnectionClosed:
                    raise
                except Exception as exc:
                    await connection.send(f"{type(exc).__name__}: {exc}")
        except ConnectionClosed:
            pass

    def _call(self, request: dict[str, Any]) -> Mapping[str, Any]:
        with self._lock:
            return self.function(request)

    def start(self, timeout: float = 30.0) -> FunctionServer:
        ready = threading.Event()

        async def main() -> None:
            self._stop = asyncio.Event()
            async with serve(self._handle, self.host, self._requested_port, compression=None, max_size=None) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                ready.set()
                await self._stop.wait()

        def target() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=target, name="function-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the function server did not start within {timeout} s")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> FunctionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
