"""Prefix attention probabilities: against a float64 numpy forward, their masking, and that asking for them costs
nothing when nobody asks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference as ref
from tests.conftest import make_observation, tiny_config
from textlatent.checkpoint import model_from_params, model_params
from textlatent.checkpoint.random import cast_params


@pytest.fixture(scope="module")
def bf16_model(f32_model):
    return model_from_params(tiny_config(dtype="bfloat16"), cast_params(model_params(f32_model), jnp.bfloat16))


def reference_prefix_attention(model, obs, query_positions) -> np.ndarray:
    """float64 [depth, B, heads, Q, P]: softmax(q·k/√h) of every layer's pre-attention-normed prefix stream."""
    config = model.config
    params = jax.tree.map(np.asarray, model_params(model))
    states, mask, positions, layers = ref.prefix_forward(params, config, obs)
    head_dim = config.paligemma.head_dim
    out = []
    for x, streams in zip(states, layers, strict=True):
        layer = streams[0]
        normed = ref.rms_norm(x, layer["pre_attn"])
        q = ref.rope(np.einsum("btd,ndh->btnh", normed, ref.f64(layer["q"])), positions) / math.sqrt(head_dim)
        k = ref.rope(np.einsum("btd,dh->bth", normed, ref.f64(layer["kv"])[0, 0])[:, :, None], positions)[:, :, 0]
        logits = np.einsum("btnh,bsh->bnts", q, k)
        logits = np.where(mask[:, None], logits, -np.inf)
        # A query that sees no key (padding) spreads uniformly over all keys, as a large finite mask value does.
        logits = np.where(~mask.any(-1)[:, None, :, None], 0.0, logits)
        out.append(ref.softmax(logits)[:, :, query_positions])
    return np.stack(out)


def test_prefix_attention_matches_numpy_forward(f32_model):
    model, config = f32_model, f32_model.config
    obs = model.preprocess(make_observation(config, batch=2, seed=1))
    # Image queries of the first and of the masked third camera, and every prompt slot (valid and padding).
    queries = np.concatenate(
        [[0, 7, config.text_start - 1], np.asarray(model.text_positions(np.arange(config.max_token_len)))]
    )
    got = np.asarray(model.prefix_attention(obs, queries))
    depth, heads = config.paligemma.depth, config.paligemma.num_heads
    assert got.dtype == np.float32
    assert got.shape == (depth, 2, heads, len(queries), config.prefix_len)
    expected = reference_prefix_attention(model, obs, queries)
    for l in range(depth):
        np.testing.assert_allclose(got[l], expected[l], rtol=1e-4, atol=1e-6, err_msg=f"layer {l}")
    # Not a trivially uniform attention: the comparison above would not catch a constant output otherwise.
    assert got[:, :, :, 3:].max() > 3.0 / config.prefix_len


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_sums_to_one_over_valid_keys_and_is_zero_on_masked(f32_model, bf16_model, dtype):
    model = f32_model if dtype == "float32" else bf16_model
    config = model.config
    obs = model.preprocess(make_observation(config, batch=2, seed=2, prompt_lens=(4, 7)))
    slots = np.arange(config.max_token_len)
    attention = np.asarray(model.prefix_attention(obs, model.text_positions(slots)))  # [depth, B, N, Q, P]
    valid = ref.prefix_valid(config, obs)
    third_camera = np.arange(2 * config.tokens_per_image, 3 * config.tokens_per_image)
    assert not valid[:, third_camera].any()  # make_observation masks the last camera
    for b in range(2):
        prompt_valid = valid[b, config.text_start :]
        rows = attention[:, b][:, :, prompt_valid]  # valid queries only
        np.testing.assert_allclose(rows[..., valid[b]].sum(-1), 1.0, atol=1e-5)
        assert np.all(rows[..., ~valid[b]] == 0.0)  # masked camera and padding prompt keys: exactly 0
        assert np.all(rows[..., third_camera] == 0.0)
        # Padding queries see nothing; the model spreads them uniformly over all keys (documented behaviour).
        padding_rows = attention[:, b][:, :, ~prompt_valid]
        np.testing.assert_allclose(padding_rows, 1.0 / config.prefix_len, rtol=1e-5)


def _scan_output_shapes(jaxpr, length: int) -> list[list[tuple[int, ...]]]:
    """Output shapes of every ``scan`` of ``length`` iterations, searched through nested jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan" and eqn.params["length"] == length:
            found.append([tuple(v.aval.shape) for v in eqn.outvars])
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_scan_output_shapes(inner, length))
    return found


def test_attention_is_absent_from_passes_that_do_not_ask(f32_model):
    """The layer scan emits the carry and (K, V) only; asking adds exactly one stacked output, the probabilities.

    (Byte-equality of sample_actions' HLO before and after the option was added was checked once by hand; this
    guards the structure from then on.)"""
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=2)
    depth = config.paligemma.depth
    noise = jnp.zeros((2, config.action_horizon, config.action_dim))

    sample_scans = _scan_output_shapes(
        jax.make_jaxpr(lambda o, n: model.sample_actions(None, o, noise=n))(obs, noise).jaxpr, depth
    )
    assert len(sample_scans) == 2  # the prefix pass and the suffix pass inside the flow loop
    for shapes in sample_scans:
        assert len(shapes) == 3, shapes  # one stream's carry, K, V

    queries = model.text_positions(np.arange(3))
    (attention_scan,) = _scan_output_shapes(
        jax.make_jaxpr(lambda o: model.prefix_attention(o, queries))(obs).jaxpr, depth
    )
    assert len(attention_scan) == 4
    assert attention_scan[-1] == (depth, 2, config.paligemma.num_heads, 3, config.prefix_len)


def test_attention_queries_must_be_1d(f32_model):
    obs = make_observation(f32_model.config, batch=1)
    with pytest.raises(ValueError, match="attention_queries must be 1-D"):
        f32_model.prefix_attention(obs, np.zeros((2, 2), np.int32))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_token_major_layout_computes_the_same_attention_as_openpis(kv_heads):
    # The token-major layout writes its products differently (probabilities first, then one output product over
    # the flattened heads); with several key heads its rows need a real transpose. Same weights, same inputs.
    from flax import nnx

    from textlatent.model.config import GemmaConfig
    from textlatent.model.gemma import Attention

    config = GemmaConfig(width=16, depth=1, mlp_dim=32, num_heads=4, num_kv_heads=kv_heads, head_dim=8)
    layouts = [Attention([config], nnx.Rngs(3), token_major=major) for major in (False, True)]
    nnx.update(layouts[1], nnx.state(layouts[0]))
    x = jax.random.normal(jax.random.key(4), (2, 5, 16))
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    mask = jax.random.bernoulli(jax.random.key(5), 0.7, (2, 1, 5, 5)) | jnp.eye(5, dtype=bool)
    outs = []
    for layer in layouts:
        graphdef, state = nnx.split(layer)
        sliced = jax.tree.map(lambda a: a[0], state)  # the stacked depth-1 parameters as one layer's
        (out,), _ = nnx.merge(graphdef, sliced)([x], positions, mask, None)
        outs.append(np.asarray(out))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
