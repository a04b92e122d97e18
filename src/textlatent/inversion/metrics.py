"""How far two plans of the same request are apart: per-chunk MSEs and their per-episode aggregates.

Three views of one pair of chunks (e.g. original vs reconstructed, or original vs edited):

* ``mse_model``: normalized model space, every model dimension (32 for π0; the 25 padding dims are trained toward 0,
  so this view dilutes the real ones — it is the reference implementation's ``reconstruction_loss_32d``);
* ``mse_model_real``: normalized model space, the first ``real_dims`` (7 for LIBERO) dimensions only;
* ``mse_robot``: robot space after the policy's output transform (unnormalize + absolute actions, first 7 dims),
  the reference's ``reconstruction_loss``.

Each is a mean over the chunk's first ``steps`` actions (all by default; the closed-loop client executes only
``replan_steps`` of them) and those dimensions, one value per batch row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

LIBERO_ACTION_DIMS = 7


def chunk_mse(reference, other, *, dims: int | None = None, steps: int | None = None) -> np.ndarray:
    """Mean squared difference of two chunks [..., H, D] over their first ``steps`` actions and first ``dims``
    dimensions (all if None), in float64: [...] (one value per leading index; a scalar for a single [H, D] chunk)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape or reference.ndim < 2:
        raise ValueError(f"chunks must share a shape [..., H, D], got {reference.shape} and {other.shape}")
    for name, value in (("dims", dims), ("steps", steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    diff = (reference - other)[..., :steps, :dims]
    return np.mean(np.square(diff), axis=(-2, -1))


@dataclasses.dataclass(frozen=True)
class ChunkMetrics:
    """MSEs between a reference chunk and another, one value per batch row: float64 [B] each."""

    mse_model: np.ndarray
    mse_model_real: np.ndarray
    mse_robot: np.ndarray

    def row(self, i: int) -> dict[str, float]:
        """Row ``i`` as plain floats (for logs and JSON)."""
        return {field.name: float(getattr(self, field.name)[i]) for field in dataclasses.fields(self)}


def chunk_metrics(
    reference_normalized,
    other_normalized,
    reference_robot,
    other_robot,
    *,
    real_dims: int = LIBERO_ACTION_DIMS,
    steps: int | None = None,
) -> ChunkMetrics:
    """The three MSEs of a pair of batched plans: normalized model actions [B, H, D] and robot actions [B, H, A]."""
    return ChunkMetrics(
        mse_model=np.atleast_1d(chunk_mse(reference_normalized, other_normalized, steps=steps)),
        mse_model_real=np.atleast_1d(chunk_mse(reference_normalized, other_normalized, dims=real_dims, steps=steps)),
        mse_robot=np.atleast_1d(chunk_mse(reference_robot, other_robot, dims=real_dims, steps=steps)),
    )


def summarize_episode(chunks: Sequence[ChunkMetrics]) -> dict[str, dict[str, float]]:
    """Aggregate the per-chunk metrics of one episode (every batch row of every chunk counts once): for each metric
    ``{"mean", "median", "max", "final", "count"}``; ``final`` is the last chunk's last row. Empty → ``{}``."""
    if not chunks:
        return {}
    summary = {}
    for field in dataclasses.fields(ChunkMetrics):
        values = np.concatenate([np.atleast_1d(getattr(chunk, field.name)) for chunk in chunks]).astype(np.float64)
        summary[field.name] = {
            "mean": float(np.mean(values)),
            "median": float(np.median(values)),
            "max": float(np.max(values)),
            "final": float(values[-1]),
            "count": len(values),
        }
    return summary
