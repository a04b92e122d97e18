import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from textlatent.checkpoint.random import random_model
from textlatent.model import Observation, Pi0Config
from textlatent.tokenizer_training import train_tokenizer

# Small but complete: 3 Gemma layers, 2 heads; SigLIP with 2 blocks on 56×56 images (16 tokens per image).
TINY = dict(
    paligemma_variant="tiny",
    action_expert_variant="tiny_expert",
    siglip_variant="tiny/14",
    image_resolution=(56, 56),
    vocab_size=256,
    max_token_len=12,
    action_horizon=6,
    action_dim=8,
)


def tiny_config(**changes) -> Pi0Config:
    return Pi0Config(**{**TINY, **changes})


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tok.model")


@pytest.fixture(scope="session")
def f32_model():
    return random_model(tiny_config(dtype="float32"), seed=3)


def make_observation(config: Pi0Config, batch: int = 2, seed: int = 0, prompt_lens=(5, 9)) -> Observation:
    rng = np.random.default_rng(seed)
    h, w = config.image_resolution
    images = {k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in config.image_keys}
    masks = {k: jnp.asarray([k != config.image_keys[-1]] * batch) for k in config.image_keys}
    tokens = rng.integers(4, config.vocab_size, (batch, config.max_token_len)).astype(np.int32)
    lens = [prompt_lens[i % len(prompt_lens)] for i in range(batch)]
    mask = np.arange(config.max_token_len)[None] < np.asarray(lens)[:, None]
    tokens[~mask] = 0
    tokens[:, 0] = 2
    return Observation(
        images=images,
        image_masks=masks,
        state=jnp.asarray(rng.normal(size=(batch, config.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens),
        tokenized_prompt_mask=jnp.asarray(mask),
    )


def to_numpy_tree(tree):
    return jax.tree.map(np.asarray, tree)


# The LIBERO policy: the tiny model with openpi's 32 action dims (the LIBERO transforms pad to them).
LIBERO_OVERRIDES = {**{k: v for k, v in TINY.items() if k != "action_dim"}, "action_dim": 32}


@pytest.fixture(scope="session")
def libero_checkpoint(tmp_path_factory):
    """(path, norm stats) of a tiny random π0 written in openpi's layout with LIBERO norm stats."""
    from textlatent.checkpoint import model_params, write_checkpoint
    from textlatent.checkpoint.random import random_norm_stats
    from textlatent.policy import get_config

    config = get_config("pi0_libero", **LIBERO_OVERRIDES)
    model = random_model(config.model, seed=11)
    path = tmp_path_factory.mktemp("ckpt") / "pi0_tiny"
    stats = random_norm_stats(8, 7, seed=5)
    write_checkpoint(path, model_params(model), stats=stats, asset_id=config.asset_id)
    return path, stats


def load_libero_policy(checkpoint, tokenizer_path):
    import textlatent

    return textlatent.load_policy("pi0_libero", checkpoint[0], tokenizer=str(tokenizer_path), **LIBERO_OVERRIDES)


def libero_obs(seed=0, size=56, prompt="put the bowl on the plate"):
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8),
        "prompt": prompt,
    }
