"""openpi-compatible websocket serving with dynamic batching and text-latent steering."""

import importlib
from typing import TYPE_CHECKING, Any

from textlatent.serving.wire import WireError, packb, unpackb

if TYPE_CHECKING:
    from textlatent.serving.batching import BatchingEngine, bucket_sizes
    from textlatent.serving.server import PolicyServer, ServerConfig, ServerThread
    from textlatent.serving.steering import SteeringError, parse_steering

# The server needs JAX; clients (the wire format alone) do not, so the rest loads on first use.
_LAZY = {
    "BatchingEngine": "textlatent.serving.batching",
    "bucket_sizes": "textlatent.serving.batching",
    "PolicyServer": "textlatent.serving.server",
    "ServerConfig": "textlatent.serving.server",
    "ServerThread": "textlatent.serving.server",
    "SteeringError": "textlatent.serving.steering",
    "parse_steering": "textlatent.serving.steering",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchingEngine",
    "PolicyServer",
    "ServerConfig",
    "ServerThread",
    "SteeringError",
    "WireError",
    "bucket_sizes",
    "packb",
    "parse_steering",
    "unpackb",
]
