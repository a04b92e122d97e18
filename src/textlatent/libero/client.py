"""A blocking client for openpi-protocol policy servers (ours or openpi's): metadata first, then one reply per
request. Env workers use it; it needs no openpi package."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from textlatent.serving.wire import packb, unpackb


class PolicyConnectionError(ConnectionError):
    """The policy server cannot be reached or stopped answering; the message names the URL and what to check."""


class PolicyServerError(RuntimeError):
    """The server answered a request with an error (openpi servers reply with a text frame)."""


def policy_url(address: str) -> str:
    """`ws://host:port` from `host:port`, `ws://…` or `wss://…`."""
    address = address.strip()
    if not address:
        raise ValueError("empty policy address; give ws://HOST:PORT")
    if address.startswith(("ws://", "wss://")):
        return address
    if "://" in address:
        raise ValueError(f"policy address {address!r} must be ws://HOST:PORT or wss://HOST:PORT")
    return f"ws://{address}"


class PolicyClient:
    """One websocket connection; `infer(obs)` sends the observation dict and returns the reply dict.

    `connect_timeout` keeps retrying a refused connection (a server still starting) for that many seconds.
    """

    def __init__(self, address: str, *, api_key: str | None = None, connect_timeout: float = 30.0) -> None:
        self.url = policy_url(address)
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        deadline = time.monotonic() + connect_timeout
        self._stack = contextlib.ExitStack()
        while True:
            try:
                self._connection: ClientConnection = self._stack.enter_context(
                    connect(self.url, compression=None, max_size=None, additional_headers=headers, open_timeout=10)
                )
                break
            except (OSError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise PolicyConnectionError(
                        f"no policy server answers at {self.url} ({exc}); start one with `textlatent serve` "
                        "or pass the right --policy"
                    ) from None
                time.sleep(0.5)
            except InvalidHandshake as exc:
                hint = " (wrong or missing --api-key?)" if "401" in str(exc) else ""
                raise PolicyConnectionError(f"the server at {self.url} refused the connection: {exc}{hint}") from None
            except InvalidURI as exc:
                raise ValueError(f"invalid policy address {self.url!r}: {exc}") from None
        self.metadata: dict[str, Any] = self._receive()

    def infer(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        try:
            self._connection.send(packb(dict(observation)))
        except ConnectionClosed as exc:
            raise PolicyConnectionError(f"the policy server at {self.url} closed the connection: {exc}") from None
        reply = self._receive()
        if not isinstance(reply, dict) or "actions" not in reply:
            raise PolicyServerError(f"the server at {self.url} replied without actions: {str(reply)[:200]}")
        reply["actions"] = np.asarray(reply["actions"])
        return reply

    def _receive(self) -> Any:
        try:
            frame = self._connection.recv()
        except ConnectionClosed as exc:
            raise PolicyConnectionError(f"the policy server at {self.url} closed the connection: {exc}") from None
        if isinstance(frame, str):
            raise PolicyServerError(f"the policy server at {self.url} answered with an error:\n{frame}")
        return unpackb(frame)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
