"""Prompt decoding: the nearest vocabulary token (cosine similarity with the embedding table) of each prompt slot of a
latent, per layer — the paper's "obscure prompts". Layer 0 decodes to the prompt itself (its states are the scaled
embeddings); early layers give unreadable prompts that still drive the policy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from textlatent.latents.latent import TextLatent

DEFAULT_LAYERS = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class DecodedLayer:
    layer: int
    nearest: list[int]
    """Nearest token per slot over the whole vocabulary."""
    token_ids: list[int]
    """``nearest`` with slot 0 forced to BOS and the last slot to the "\\n" token, as the paper sends obscure prompts
    (so the prompt starts and ends like a real one); use these as ``token_ids`` of mode ``obscure``."""
    text: str
    """``token_ids`` decoded, without BOS."""


def nearest_tokens(states, table, *, chunk: int = 32768) -> np.ndarray:
    """argmax over the vocabulary of cos(state, table[v]) for each row of ``states`` [n, D]; table [V, D].

    The table is scanned in chunks on the device, so the whole [n, V] similarity matrix never exists."""
    states = jnp.asarray(states, jnp.float32)
    states = states / jnp.maximum(jnp.linalg.norm(states, axis=-1, keepdims=True), 1e-30)
    table = jnp.asarray(table)
    best_score = jnp.full(states.shape[0], -jnp.inf, jnp.float32)
    best_id = jnp.zeros(states.shape[0], jnp.int32)
    for start in range(0, table.shape[0], chunk):
        score, ids = _chunk_best(states, table[start : start + chunk])
        better = score > best_score  # strict: ties keep the lower id, as a full argmax would
        best_score = jnp.where(better, score, best_score)
        best_id = jnp.where(better, ids + start, best_id)
    return np.asarray(best_id)


@jax.jit
def _chunk_best(unit_states, rows):
    rows = rows.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(rows, axis=-1), 1e-30)
    scores = jnp.einsum("nd,vd->nv", unit_states, rows, precision=jax.lax.Precision.HIGHEST) / norms
    return jnp.max(scores, axis=-1), jnp.argmax(scores, axis=-1).astype(jnp.int32)


def decode_latent(
    latent: TextLatent,
    table,
    tokenizer,
    *,
    layers=DEFAULT_LAYERS,
    num_tokens: int | None = None,
) -> list[DecodedLayer]:
    """Decode ``latent`` at ``layers`` over its first ``num_tokens`` slots (default: its real prompt tokens)."""
    count = num_tokens or int(latent.metadata.get("num_prompt_tokens") or latent.num_slots)
    count = min(count, latent.num_slots)
    bad = [layer for layer in layers if not 0 <= layer < latent.num_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the latent has layers 0..{latent.num_layers - 1}")
    bos, newline = tokenizer.encode("")[0], tokenizer.encode("")[-1]  # "" encodes to BOS + the "\n" pieces
    out = []
    for layer in layers:
        nearest = [int(i) for i in nearest_tokens(latent.states[layer, :count], table)]
        forced = list(nearest)
        forced[0] = bos
        if count > 1:
            forced[-1] = newline
        out.append(DecodedLayer(layer, nearest, forced, tokenizer.decode(forced[1:])))
    return out


def save_decodings(decodings: dict[str, list[DecodedLayer]], path: str | os.PathLike) -> pathlib.Path:
    """JSON: prompt → per layer {layer, nearest, token_ids, text}."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {prompt: [dataclasses.asdict(d) for d in layers] for prompt, layers in decodings.items()}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path
