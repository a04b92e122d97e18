"""openpi-compatible websocket serving with dynamic batching and text-latent steering."""

from typing import TYPE_CHECKING

from textlatent._lazy import lazy_attributes
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


__getattr__ = lazy_attributes(__name__, globals(), _LAZY)


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
