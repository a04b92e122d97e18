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
