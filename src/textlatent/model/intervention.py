"""Residual-stream access as plain values passed into jitted functions.

"Layer l" follows the text-latent paper: the residual stream of the PaliGemma (prefix) stream *entering* Gemma block
l, l = 0 … depth-1. Layer 0 is the input embedding (SigLIP tokens and scaled text embeddings).

Positions index the prefix in its canonical layout: ``len(image_keys)`` image slots of ``tokens_per_image`` tokens,
then ``max_token_len`` prompt-token slots (816 positions for π0 on LIBERO; the prompt starts at 768). Helpers that
build positions from prompt-token slots live in :mod:`textlatent.model.pi0` (``Pi0.text_positions``), so callers
never hard-code offsets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ResidualEdit:
    """What to write into the prefix residual stream, at which layers and positions.

    Attributes:
      positions: int[K] prefix positions the edit touches (the same for every batch row).
      delta: float[L, B|1, K, D] or None. ``delta[l]`` is added to the residual stream entering block ``l`` at
        ``positions`` (after the layer-0 replacement, for l = 0). Additions accumulate through the stream, exactly
        like the paper's ``hidden_states_to_add``.
      replace_embeddings: float[B|1, K, D] or None. Replaces the block-0 input (the token embeddings) at ``positions`` — the
        paper's TEI branch.
    """

    positions: jax.Array
    delta: jax.Array | None = None
    replace_embeddings: jax.Array | None = None

    def validate(self, depth: int, prefix_len: int, width: int) -> None:
        """Check static shapes (called at trace time, so a bad edit fails before any compute)."""
        if self.positions.ndim != 1:
            raise ValueError(f"ResidualEdit.positions must be 1-D int, got shape {self.positions.shape}")
        if not jnp.issubdtype(self.positions.dtype, jnp.integer):
            raise ValueError(f"ResidualEdit.positions must be integer, got {self.positions.dtype}")
        k = self.positions.shape[0]
        if self.delta is None and self.replace_embeddings is None:
            raise ValueError("ResidualEdit needs a delta, replace_embeddings, or both")
        if self.delta is not None and (
            self.delta.ndim != 4 or self.delta.shape[0] != depth or self.delta.shape[2:] != (k, width)
        ):
            raise ValueError(
                f"ResidualEdit.delta must have shape (depth={depth}, batch or 1, K={k}, width={width}), "
                f"got {self.delta.shape}"
            )
        if self.replace_embeddings is not None and (
            self.replace_embeddings.ndim != 3 or self.replace_embeddings.shape[1:] != (k, width)
        ):
            raise ValueError(
                f"ResidualEdit.replace_embeddings must have shape (batch or 1, K={k}, width={width}), got {self.replace_embeddings.shape}"
            )
        del prefix_len  # positions are traced values; range checks belong to the caller that builds them
