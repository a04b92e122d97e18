"""The compact prefix (always-masked cameras and trailing prompt padding left out) leaves every valid token, every
edit and the actions as the full layout computes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import libero_obs, load_libero_policy, make_observation
from textlatent.model import ResidualEdit
from textlatent.model.pi0 import compact_observation


def libero_like(config, batch=2, seed=0, prompt_lens=(3, 5)):
    """Third camera masked in every row, as the LIBERO policy sends it."""
    obs = make_observation(config, batch=batch, seed=seed, prompt_lens=prompt_lens)
    masks = {k: np.asarray(v) for k, v in obs.image_masks.items()}
    return obs.replace(image_masks=masks, tokenized_prompt_mask=np.asarray(obs.tokenized_prompt_mask))


def test_compact_observation_drops_only_what_no_valid_token_sees(f32_model):
    config = f32_model.config
    obs = libero_like(config, prompt_lens=(3, 5))
    compact = compact_observation(obs, config.max_token_len, min_prompt_len=4)
    assert compact.absent_cameras == (config.image_keys[-1],)
    assert set(compact.images) == set(config.image_keys[:-1])
    assert compact.tokenized_prompt.shape[1] == 8  # longest prompt 5 → bucket 4, 8
    mixed = obs.replace(image_masks={**obs.image_masks, config.image_keys[-1]: np.array([False, True])})
    assert compact_observation(mixed, config.max_token_len).absent_cameras == ()
    long = libero_like(config, prompt_lens=(config.max_token_len, 2))
    assert compact_observation(long, config.max_token_len, min_prompt_len=4).tokenized_prompt.shape[1] == 12


def test_valid_tokens_are_unchanged_and_absent_positions_read_nan(f32_model):
    config = f32_model.config
    obs = libero_like(config, prompt_lens=(3, 5))
    compact = compact_observation(obs, config.max_token_len, min_prompt_len=4)
    positions = np.arange(config.prefix_len)
    full_states = np.asarray(f32_model.prefix_residuals(obs, positions))
    compact_states = np.asarray(f32_model.prefix_residuals(compact, positions))
    n = config.tokens_per_image
    valid = np.zeros((2, config.prefix_len), bool)
    valid[:, : 2 * n] = True  # the two real cameras
    valid[0, config.text_start : config.text_start + 3] = True
    valid[1, config.text_start : config.text_start + 5] = True
    for b in range(2):
        np.testing.assert_allclose(compact_states[:, b, valid[b]], full_states[:, b, valid[b]], rtol=1e-5, atol=1e-5)
    assert np.isnan(compact_states[:, :, 2 * n : 3 * n]).all()  # the absent camera
    assert np.isnan(compact_states[:, :, config.text_start + 8 :]).all()  # cut prompt columns
    assert not np.isnan(compact_states[:, :, config.text_start : config.text_start + 8]).any()


@pytest.mark.parametrize("kind", ["delta", "replace", "none"])
def test_actions_and_edits_match_the_full_layout(f32_model, kind):
    config = f32_model.config
    obs = libero_like(config, seed=3, prompt_lens=(4, 2))
    compact = compact_observation(obs, config.max_token_len, min_prompt_len=4)
    rng = np.random.default_rng(0)
    slots = np.arange(config.max_token_len)  # covers padding slots too, like the paper's TEI (they are dropped)
    width, depth = config.paligemma.width, config.paligemma.depth
    edit = None
    if kind == "delta":
        edit = ResidualEdit(
            positions=f32_model.text_positions(slots),
            delta=jnp.asarray(rng.normal(size=(depth, 1, len(slots), width)), jnp.float32),
        )
    elif kind == "replace":
        edit = ResidualEdit(
            positions=f32_model.text_positions(slots),
            replace_embeddings=jnp.asarray(rng.normal(size=(1, len(slots), width)), jnp.float32),
        )
    noise = jax.random.normal(jax.random.key(2), (2, config.action_horizon, config.action_dim))
    full = f32_model.sample_actions(None, obs, noise=noise, edit=edit)
    small = f32_model.sample_actions(None, compact, noise=noise, edit=edit)
    np.testing.assert_allclose(np.asarray(small), np.asarray(full), rtol=1e-5, atol=1e-5)
    if edit is not None:  # the edit really acted
        plain = f32_model.sample_actions(None, compact, noise=noise)
        assert np.abs(np.asarray(plain) - np.asarray(small)).max() > 1e-3


def test_policy_compacts_by_default_with_the_same_actions(libero_checkpoint, tokenizer_path):
    compact = load_libero_policy(libero_checkpoint, tokenizer_path)
    full = load_libero_policy(libero_checkpoint, tokenizer_path)
    full.compact = False
    assert compact.compact
    noise = np.random.default_rng(1).normal(size=(6, 32)).astype(np.float32)
    obs = libero_obs(4)
    a, b = compact.infer(obs, noise=noise)["actions"], full.infer(obs, noise=noise)["actions"]
    # bf16 serving arithmetic: agreement to bf16 rounding of the action scale.
    np.testing.assert_allclose(a, b, rtol=0, atol=0.02 * np.abs(b).max())


def test_absent_cameras_must_be_declared(f32_model):
    config = f32_model.config
    obs = libero_like(config)
    missing = obs.replace(images={k: v for k, v in obs.images.items() if k != config.image_keys[0]})
    with pytest.raises(ValueError, match="lacks images"):
        f32_model.prefix_residuals(missing, np.arange(3))
    both = obs.replace(absent_cameras=(config.image_keys[0],))
    with pytest.raises(ValueError, match="absent_cameras"):
        f32_model.prefix_residuals(both, np.arange(3))
