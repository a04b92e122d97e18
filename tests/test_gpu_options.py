"""GPU serving options (``expert_weights_per_layer``, ``one_image_pass``): off by default, and each computes the
reference path's function — exactly in float32 on the CPU, to bf16 rounding in bfloat16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import make_observation, tiny_config
from textlatent.checkpoint import model_from_params, model_params
from textlatent.checkpoint.random import cast_params
from textlatent.model import Pi0Config, ops

OPTIONS = [{"expert_weights_per_layer": True}, {"one_image_pass": True}]


def _with(model, **options):
    return model_from_params(dataclasses.replace(model.config, **options), model_params(model))


def _sample(model, obs, noise):
    graphdef, state = nnx.split(model)
    return np.asarray(
        jax.jit(lambda s, o, n: nnx.merge(graphdef, s).sample_actions(None, o, noise=n))(state, obs, noise), np.float32
    )


def test_options_are_off_by_default():
    config = Pi0Config()
    assert not config.expert_weights_per_layer and not config.one_image_pass


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: next(iter(o)))
def test_option_samples_the_same_actions_in_float32(f32_model, options):
    config = f32_model.config
    obs = make_observation(config, batch=2, seed=5)
    noise = jax.random.normal(jax.random.key(2), (2, config.action_horizon, config.action_dim))
    np.testing.assert_allclose(
        _sample(_with(f32_model, **options), obs, noise), _sample(f32_model, obs, noise), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("options", [{**OPTIONS[0], **OPTIONS[1]}], ids=["both"])
def test_options_stay_within_bf16_rounding(f32_model, options):
    config = tiny_config(dtype="bfloat16")
    reference = model_from_params(config, cast_params(model_params(f32_model), jnp.bfloat16))
    obs = make_observation(config, batch=2, seed=6)
    noise = jax.random.normal(jax.random.key(3), (2, config.action_horizon, config.action_dim))
    expected = _sample(reference, obs, noise)
    got = _sample(_with(reference, **options), obs, noise)
    # Fused differently, bf16 intermediates may round differently: a few units of bf16 rounding at the actions' scale.
    assert np.abs(got - expected).max() <= 4 * np.abs(expected).max() * 2**-8


def test_one_image_pass_gives_the_same_prefix(f32_model):
    model = _with(f32_model, one_image_pass=True)
    obs = model.preprocess(make_observation(model.config, batch=2, seed=7))
    tokens, mask, ar = model.embed_prefix(obs)
    ref_tokens, ref_mask, ref_ar = f32_model.embed_prefix(obs)
    np.testing.assert_allclose(np.asarray(tokens), np.asarray(ref_tokens), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    np.testing.assert_array_equal(np.asarray(ar), np.asarray(ref_ar))


def test_layer_weights_are_per_layer_slices_of_the_stream(f32_model):
    llm = f32_model.PaliGemma.llm
    weights = llm.layer_weights([1])
    assert len(weights.per_layer) == llm.depth and weights.streams == (1,)
    layer = nnx.to_pure_dict(weights.per_layer[2])
    stacked = nnx.to_pure_dict(nnx.state(llm.layers))
    np.testing.assert_array_equal(layer["mlp_1"]["linear"], stacked["mlp_1"]["linear"][2])
    np.testing.assert_array_equal(layer["attn"]["q_einsum_1"]["w"], stacked["attn"]["q_einsum_1"]["w"][2])
    assert "mlp" not in layer and "q_einsum" not in layer["attn"]  # stream 0 stays stacked, in ``rest``
    # The gate and up matrices are cut apart once, outside any loop over passes; stream 0 gets none.
    gate, up = weights.gating[2][1]
    np.testing.assert_array_equal(gate, stacked["mlp_1"]["gating_einsum"][2, 0])
    np.testing.assert_array_equal(up, stacked["mlp_1"]["gating_einsum"][2, 1])
    assert weights.gating[2][0] is None and "gating_einsum" not in layer["mlp_1"]


def test_layer_weights_must_cover_the_streams_that_run(f32_model):
    model = f32_model
    obs = model.preprocess(make_observation(model.config, batch=2, seed=8))
    tokens, mask, ar = model.embed_prefix(obs)
    with pytest.raises(ValueError, match="layer_weights cover streams"):
        model.PaliGemma.llm.forward(
            [tokens, None],
            jnp.cumsum(mask, axis=1) - 1,
            ops.make_attn_mask(mask, ar),
            layer_weights=model.PaliGemma.llm.layer_weights([1]),
        )
