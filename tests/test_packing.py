"""Per-layer weights with their vectors packed: the same values, fewer arrays per call."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import make_observation, tiny_config
from textlatent.checkpoint import model_from_params, model_params
from textlatent.checkpoint.random import random_model
from textlatent.model.packing import LayerLeaves


def _layers(depth: int = 3):
    keys = iter(jax.random.split(jax.random.key(0), 64))
    shapes = [((7,), jnp.bfloat16), ((4, 5), jnp.float32), ((), jnp.float32), ((64, 96), jnp.bfloat16),
              ((3,), jnp.bfloat16), ((2, 3, 4), jnp.float32)]  # fmt: skip
    return [[jax.random.normal(next(keys), s, d) for s, d in shapes] for _ in range(depth)]


def test_packed_leaves_give_back_every_value_shape_and_dtype():
    layers = _layers()
    packed = LayerLeaves.pack(layers, small_size=100)
    for i, layer in enumerate(layers):
        got = packed.layer(i)
        assert len(got) == len(layer)
        for a, b in zip(got, layer, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    # The matrix (6144 elements) and the 3-D leaf stay separate, and are the caller's arrays, not copies; the four
    # small leaves of each layer go into one array per dtype.
    assert packed.arrays == 2 * 3 + 2
    assert packed.layer(1)[3] is layers[1][3] and packed.layer(2)[5] is layers[2][5]
    assert {a.shape for a in packed.small} == {(3, 2, 7), (3, 2, 20)}


def test_packing_nothing_keeps_every_leaf_as_it_is():
    layers = _layers(2)
    packed = LayerLeaves.pack(layers, small_size=0)
    assert packed.small == () and packed.arrays == 12
    assert all(a is b for a, b in zip(packed.layer(1), layers[1], strict=True))
    with pytest.raises(ValueError, match="no layers"):
        LayerLeaves.pack([])


def test_packed_weights_sample_the_same_actions_bit_for_bit_with_fewer_arrays():
    base = random_model(tiny_config(dtype="float32"), seed=3)
    config = dataclasses.replace(
        base.config, dtype="bfloat16", one_image_pass=True, expert_weights_per_layer=True, aligned_attention=True
    )
    model = model_from_params(config, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model_params(base)))
    obs = make_observation(config, batch=2, seed=4)
    noise = jax.random.normal(jax.random.key(6), (2, config.action_horizon, config.action_dim))
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, o, n, w: nnx.merge(graphdef, s).sample_actions(None, o, noise=n, layer_weights=w))
    packed, plain = model.layer_weights(), model.layer_weights(small_size=0)
    assert len(jax.tree.leaves(packed)) < len(jax.tree.leaves(plain))
    np.testing.assert_array_equal(
        np.asarray(run(state, obs, noise, packed), np.float32), np.asarray(run(state, obs, noise, plain), np.float32)
    )
    positions = model.text_positions(np.arange(4))
    np.testing.assert_array_equal(
        np.asarray(model.prefix_residuals(obs, positions, layer_weights=packed), np.float32),
        np.asarray(model.prefix_residuals(obs, positions, layer_weights=plain), np.float32),
    )
