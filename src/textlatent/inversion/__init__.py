"""Rectified-flow inversion of π0's action chunks: actions → noise, reconstruction and prompt editing, metrics."""

from textlatent.inversion.flow import (
    DEFAULT_ITERATIONS,
    DEFAULT_TOLERANCE,
    METHODS,
    InversionResult,
    InversionTrace,
    Method,
    encode,
    encode_split,
    grid_index,
    invert,
    invert_and_edit,
    invert_and_edit_split,
    invert_split,
    invert_with_trace,
    reconstruct,
    reconstruct_split,
    time_grid,
)
from textlatent.inversion.metrics import ChunkMetrics, chunk_metrics, chunk_mse, summarize_episode
from textlatent.inversion.policy_inversion import InversionRecord, PolicyInversion

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_TOLERANCE",
    "METHODS",
    "ChunkMetrics",
    "InversionRecord",
    "InversionResult",
    "InversionTrace",
    "Method",
    "PolicyInversion",
    "chunk_metrics",
    "chunk_mse",
    "encode",
    "encode_split",
    "grid_index",
    "invert",
    "invert_and_edit",
    "invert_and_edit_split",
    "invert_split",
    "invert_with_trace",
    "reconstruct",
    "reconstruct_split",
    "summarize_episode",
    "time_grid",
]
