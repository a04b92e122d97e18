"""Building blocks against independent float64 numpy references, on random inputs."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from tests import reference as ref
from textlatent.model import ops
from textlatent.model.config import GemmaConfig, siglip_config
from textlatent.model.gemma import Attention
from textlatent.model.siglip import SigLIP

RNG = np.random.default_rng(1234)


def test_rms_norm_float32_matches_reference():
    x = RNG.normal(size=(3, 5, 64)).astype(np.float32) * 3
    scale = RNG.normal(size=64).astype(np.float32)
    np.testing.assert_allclose(
        ops.rms_norm(jnp.asarray(x), jnp.asarray(scale)), ref.rms_norm(x, scale), rtol=2e-6, atol=2e-6
    )


def test_rms_norm_bf16_rounds_one_plus_scale_in_param_dtype():
    x = RNG.normal(size=(4, 256)).astype(ml_dtypes.bfloat16)
    scale = (RNG.normal(size=256) * 0.3).astype(ml_dtypes.bfloat16)
    out = np.asarray(ops.rms_norm(jnp.asarray(x), jnp.asarray(scale)))
    assert out.dtype == ml_dtypes.bfloat16
    # openpi forms (1 + scale) in the bf16 parameter dtype before multiplying in float32.
    one_plus = (np.float32(1) + scale.astype(np.float32)).astype(ml_dtypes.bfloat16).astype(np.float64)
    expected = ref.rms_norm(x.astype(np.float64), np.zeros(256)) * one_plus
    np.testing.assert_array_equal(out, expected.astype(np.float32).astype(ml_dtypes.bfloat16))


def test_layer_norm_matches_reference():
    x = RNG.normal(size=(2, 7, 48)).astype(np.float32) + 2
    scale, bias = RNG.normal(size=48).astype(np.float32), RNG.normal(size=48).astype(np.float32)
    out = ops.layer_norm(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), dtype=jnp.float32)
    np.testing.assert_allclose(out, ref.layer_norm(x, scale, bias), rtol=1e-5, atol=1e-5)


def test_rope_matches_pairwise_rotation():
    x = RNG.normal(size=(2, 6, 3, 16)).astype(np.float32)
    positions = RNG.integers(0, 900, size=(2, 6)).astype(np.int32)
    out = ops.apply_rope(jnp.asarray(x), jnp.asarray(positions))
    np.testing.assert_allclose(out, ref.rope(x, positions), rtol=2e-4, atol=2e-4)
    # Rotation keeps each pair's norm, and position 0 is the identity.
    np.testing.assert_allclose(ops.apply_rope(jnp.asarray(x), jnp.zeros((2, 6), jnp.int32)), x, atol=1e-7)


def test_make_attn_mask_matches_definition():
    valid = RNG.random((3, 9)) > 0.3
    ar = RNG.random(9) > 0.6
    np.testing.assert_array_equal(ops.make_attn_mask(jnp.asarray(valid), jnp.asarray(ar)), ref.attn_mask(valid, ar))


def test_posemb_sincos_matches_reference():
    t = RNG.random(5).astype(np.float32)
    # The angle reaches t·2π/0.004 ≈ 1.6e3 rad, computed in float32 as openpi does: its ulp (1.2e-4) bounds the error.
    np.testing.assert_allclose(ops.posemb_sincos(jnp.asarray(t), 64, 4e-3, 4.0), ref.posemb_sincos(t, 64), atol=2e-4)


def _unstack(module):
    """Per-layer view of a stacked module's params as numpy, layer 0."""
    return jax.tree.map(lambda a: np.asarray(a)[0], nnx.to_pure_dict(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("with_cache", [False, True])
def test_joint_attention_matches_reference(with_cache):
    configs = [
        GemmaConfig(width=24, depth=1, mlp_dim=8, num_heads=4, num_kv_heads=1, head_dim=8),
        GemmaConfig(width=12, depth=1, mlp_dim=8, num_heads=4, num_kv_heads=1, head_dim=8),
    ]
    attn = Attention(configs, nnx.Rngs(0))
    p = _unstack(attn)
    graphdef, state = nnx.split(attn)
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
    b, t0, t1 = 2, 7, 4
    x0 = RNG.normal(size=(b, t0, 24)).astype(np.float32)
    x1 = RNG.normal(size=(b, t1, 12)).astype(np.float32)
    valid = np.concatenate([RNG.random((b, t0)) > 0.2, np.ones((b, t1), bool)], 1)
    ar = np.array([False] * t0 + [True] + [False] * (t1 - 1))
    mask = ref.attn_mask(valid, ar)
    positions = np.cumsum(valid, 1) - 1
    weights = [(p[f"q_einsum{s}"]["w"], p[f"kv_einsum{s}"]["w"], p[f"attn_vec_einsum{s}"]["w"]) for s in ("", "_1")]
    expected = ref.gemma_attention([x0, x1], weights, positions, mask, 8)
    if not with_cache:
        out, _ = layer([jnp.asarray(x0), jnp.asarray(x1)], jnp.asarray(positions), jnp.asarray(mask)[:, None], None)
        np.testing.assert_allclose(out[0], expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[1], expected[1], rtol=1e-4, atol=1e-5)
    else:
        # Stream 0 alone fills the cache; stream 1 then attends to it: same stream-1 output as the joint pass.
        _, kv = layer(
            [jnp.asarray(x0), None], jnp.asarray(positions[:, :t0]), jnp.asarray(mask[:, None, :t0, :t0]), None
        )
        out, _ = layer([None, jnp.asarray(x1)], jnp.asarray(positions[:, t0:]), jnp.asarray(mask[:, None, t0:, :]), kv)
        assert out[0] is None
        np.testing.assert_allclose(out[1], expected[1], rtol=1e-4, atol=1e-5)


def test_siglip_matches_reference():
    config = siglip_config("tiny/14")
    model = SigLIP(config, out_width=20, num_patches=16, dtype="float32", rngs=nnx.Rngs(5))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Non-trivial norms so that LayerNorm scale/bias are exercised.
    params = jax.tree.map(lambda a: a + 0.1 * RNG.normal(size=a.shape).astype(np.float32), params)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    image = RNG.uniform(-1, 1, size=(2, 56, 56, 3)).astype(np.float32)
    expected = ref.siglip(image, jax.tree.map(np.asarray, params), config.num_heads, config.patch_size)
    np.testing.assert_allclose(model(jnp.asarray(image)), expected, rtol=1e-4, atol=1e-4)


def test_siglip_bf16_uses_bf16_attention_scale():
    # flax divides q by sqrt(head_dim) rounded to bf16; for head_dim 72 that is 8.5, not 8.485.
    assert float(jnp.sqrt(72).astype(jnp.bfloat16)) == 8.5


def test_euler_update_keeps_openpi_expression_with_bf16_velocity():
    # openpi writes x + dt * v with a Python-float dt and a bf16 v: dt becomes bf16(-0.1) = -0.10009765625. Eagerly
    # the product is rounded to bf16 before the float32 add; inside jit (where sampling runs) XLA keeps the product
    # in float32. Either way dt is bf16-rounded, unlike x + float32(dt) * float32(v).
    x = RNG.normal(size=(2, 5, 8)).astype(np.float32)
    v = RNG.normal(size=(2, 5, 8)).astype(ml_dtypes.bfloat16)
    dt = np.float32(ml_dtypes.bfloat16(-0.1))
    v32 = v.astype(np.float32)
    jitted = np.asarray(jax.jit(lambda x, v: ops.euler_update(x, v, -0.1))(jnp.asarray(x), jnp.asarray(v)))
    assert jitted.dtype == np.float32
    np.testing.assert_array_equal(jitted, x + v32 * dt)
    eager = np.asarray(ops.euler_update(jnp.asarray(x), jnp.asarray(v), -0.1))
    np.testing.assert_array_equal(eager, x + (v32 * dt).astype(ml_dtypes.bfloat16).astype(np.float32))
    out32 = np.asarray(ops.euler_update(jnp.asarray(x), jnp.asarray(v32), -0.1))
    np.testing.assert_allclose(out32, x + np.float32(-0.1) * v32, rtol=1e-7, atol=1e-7)
