"""openpi-compatible websocket serving with dynamic batching and text-latent steering."""

from textlatent.serving.batching import BatchingEngine, bucket_sizes
from textlatent.serving.server import PolicyServer, ServerConfig, ServerThread
from textlatent.serving.steering import SteeringError, parse_steering
from textlatent.serving.wire import WireError, packb, unpackb

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
