"""Random-weight checkpoints in openpi's layout, for demos, tests and benchmarks (they succeed at nothing)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from textlatent.checkpoint.norm_stats import NormStats
from textlatent.model import Pi0, Pi0Config


def random_model(config: Pi0Config, seed: int = 0, *, scale_norms: float = 0.1) -> Pi0:
    """``Pi0(config)`` with random weights; norm scales and biases are made non-zero too (openpi zero-initialises
    them), so that every parameter influences the output."""
    model = Pi0(config, nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    perturbed = [
        value + scale_norms * jax.random.normal(key, value.shape, value.dtype)
        if str(path[-1].key) in ("scale", "bias")
        else value
        for (path, value), key in zip(leaves, keys, strict=True)
    ]
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, perturbed))
    nnx.update(model, state)
    return model


def random_norm_stats(state_dims: int, action_dims: int, seed: int = 0) -> dict[str, NormStats]:
    rng = np.random.default_rng(seed)

    def stats(d):
        mean = rng.normal(0, 0.5, d)
        std = rng.uniform(0.2, 2.0, d)
        return NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)

    return {"state": stats(state_dims), "actions": stats(action_dims)}


def cast_params(params: dict, dtype) -> dict:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def write_random_checkpoint(
    directory: str | pathlib.Path,
    config: Pi0Config,
    *,
    asset_id: str,
    state_dims: int = 8,
    action_dims: int = 7,
    seed: int = 0,
) -> pathlib.Path:
    """Write a random π0 with ``config``'s sizes (float32 params, as openpi training checkpoints) and norm stats."""
    from textlatent.checkpoint import model_params, write_checkpoint

    model = random_model(config, seed)
    return write_checkpoint(
        directory,
        model_params(model),
        stats=random_norm_stats(state_dims, action_dims, seed),
        asset_id=asset_id,
    )


SMALL_RANDOM = {"paligemma_variant": "dummy", "action_expert_variant": "dummy", "siglip_variant": "mu/14"}
"""Variant overrides of the small random model used by demos, ``serve --random`` and benchmarks."""


def write_random_setup(root: pathlib.Path, model: Pi0Config, asset_id: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A random-weight checkpoint (openpi layout, with norm stats under ``asset_id``) and a small SentencePiece
    tokenizer under ``root``, each written once: (checkpoint, tokenizer)."""
    from textlatent.tokenizer_training import train_tokenizer

    root = pathlib.Path(root)
    checkpoint, tokenizer = root / "checkpoint", root / "tokenizer.model"
    if not (checkpoint / "params").exists():
        write_random_checkpoint(checkpoint, model, asset_id=asset_id)
    if not tokenizer.exists():
        train_tokenizer(tokenizer)
    return checkpoint, tokenizer
