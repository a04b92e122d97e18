"""π0 forward passes: against a float64 numpy forward, and the identities the sampler and hooks must keep."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import reference as ref
from tests.conftest import make_observation, tiny_config
from textlatent.checkpoint import model_from_params, model_params
from textlatent.checkpoint.random import cast_params
from textlatent.model import ResidualEdit, ops


@pytest.fixture(scope="module")
def bf16_model(f32_model):
    config = tiny_config(dtype="bfloat16")
    return model_from_params(config, cast_params(model_params(f32_model), jnp.bfloat16))


def _np_params(model):
    return jax.tree.map(np.asarray, model_params(model))


def test_prefix_residuals_match_numpy_forward(f32_model):
    model, config = f32_model, f32_model.config
    obs = model.preprocess(make_observation(config, batch=2))
    expected, _, _, _ = ref.prefix_forward(_np_params(model), config, obs)

    captured = np.asarray(model.prefix_residuals(obs, np.arange(config.prefix_len)))
    assert captured.shape == (config.paligemma.depth, 2, config.prefix_len, config.paligemma.width)
    for l in range(config.paligemma.depth):
        np.testing.assert_allclose(captured[l], expected[l], rtol=1e-4, atol=2e-4, err_msg=f"layer {l}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer0_text_capture_is_scaled_embedding(f32_model, bf16_model, dtype):
    model = f32_model if dtype == "float32" else bf16_model
    config = model.config
    obs = make_observation(config)
    slots = np.arange(config.max_token_len)
    captured = np.asarray(model.prefix_residuals(obs, model.text_positions(slots))[0], np.float32)
    table = np.asarray(model_params(model)["PaliGemma"]["llm"]["embedder"]["input_embedding"])
    # sqrt(width) is rounded to the parameter dtype before the product (45.25 for bf16 at width 2048).
    factor = np.asarray(np.sqrt(np.float32(config.paligemma.width))).astype(table.dtype)
    expected = (table[np.asarray(obs.tokenized_prompt)] * factor).astype(np.float32)
    np.testing.assert_array_equal(captured, expected)


def _joint_velocity(model, obs, x_t, time):
    """v(x_t, t) from ONE forward pass of prefix and suffix together (no cache), as in training."""
    obs = model.preprocess(obs)
    prefix, prefix_mask, prefix_ar = model.embed_prefix(obs)
    suffix, suffix_mask, suffix_ar = model.embed_suffix(obs, x_t, time)
    mask = jnp.concatenate([prefix_mask, suffix_mask], 1)
    attn = ops.make_attn_mask(mask, jnp.concatenate([prefix_ar, suffix_ar]))
    (_, out), _, _ = model.PaliGemma.llm([prefix, suffix], jnp.cumsum(mask, 1) - 1, attn)
    return model.action_out_proj(out[:, -model.config.action_horizon :])


def test_cached_velocity_equals_single_full_forward(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=2, seed=4)
    x_t = jax.random.normal(jax.random.key(1), (2, config.action_horizon, config.action_dim))
    time = jnp.asarray([0.3, 0.8], jnp.float32)
    cache, _ = model.encode_prefix(obs)
    cached = model.velocity(model.preprocess(obs), cache, x_t, time)
    np.testing.assert_allclose(cached, _joint_velocity(model, obs, x_t, time), rtol=1e-5, atol=1e-5)


def test_sample_actions_is_euler_over_openpi_times(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=1, seed=5)
    noise = jax.random.normal(jax.random.key(2), (1, config.action_horizon, config.action_dim))
    out = jax.jit(lambda o, n: model.sample_actions(None, o, noise=n, num_steps=10))(obs, noise)
    cache, _ = model.encode_prefix(obs)
    pre = model.preprocess(obs)
    x, t, dt = np.asarray(noise), np.float32(1.0), np.float32(-0.1)
    times = []
    while t >= -dt / 2:
        times.append(float(t))
        v = np.asarray(model.velocity(pre, cache, jnp.asarray(x), jnp.full((1,), t)))
        x = x + dt * v
        t = np.float32(t + dt)
    assert len(times) == 10
    assert np.float32(times[2]) == np.float32(0.79999995) != np.float32(0.8)  # accumulated, not 1 - k/10
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_of_two_equals_two_batches_of_one(f32_model, bf16_model, dtype):
    model = f32_model if dtype == "float32" else bf16_model
    config = model.config
    obs = make_observation(config, batch=2, seed=6)
    noise = jax.random.normal(jax.random.key(3), (2, config.action_horizon, config.action_dim))
    sample = jax.jit(lambda o, n: model.sample_actions(None, o, noise=n))
    both = np.asarray(sample(obs, noise))
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i : i + 1], obs)
        np.testing.assert_allclose(np.asarray(sample(one, noise[i : i + 1]))[0], both[i], rtol=1e-5, atol=1e-5)


def _text_edit(model, slots, delta=None, replace=None):
    return ResidualEdit(positions=model.text_positions(slots), delta=delta, replace_embeddings=replace)


def test_zero_edit_is_bit_identical_to_none(bf16_model):
    model, config = bf16_model, bf16_model.config
    obs = make_observation(config, seed=7)
    noise = jax.random.normal(jax.random.key(4), (2, config.action_horizon, config.action_dim))
    slots = np.arange(4)
    zero = _text_edit(
        model, slots, delta=jnp.zeros((config.paligemma.depth, 1, 4, config.paligemma.width), jnp.bfloat16)
    )
    plain = jax.jit(lambda o, n: model.sample_actions(None, o, noise=n))(obs, noise)
    edited = jax.jit(lambda o, n, e: model.sample_actions(None, o, noise=n, edit=e))(obs, noise, zero)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(edited))
    nonzero = zero.replace(delta=zero.delta.at[1].set(3.0))
    changed = jax.jit(lambda o, n, e: model.sample_actions(None, o, noise=n, edit=e))(obs, noise, nonzero)
    assert np.max(np.abs(np.asarray(changed) - np.asarray(plain))) > 1e-3


def test_delta_enters_at_its_layer_and_accumulates(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, seed=8)
    depth, width = config.paligemma.depth, config.paligemma.width
    slots = np.array([0, 2, 3])
    positions = model.text_positions(slots)
    delta = np.zeros((depth, 1, 3, width), np.float32)
    delta[1] = np.random.default_rng(0).normal(size=(1, 3, width))
    base = np.asarray(model.prefix_residuals(obs, positions))
    edited = np.asarray(model.prefix_residuals(obs, positions, edit=_text_edit(model, slots, delta=jnp.asarray(delta))))
    np.testing.assert_array_equal(edited[0], base[0])  # before the edit's layer: untouched
    np.testing.assert_allclose(edited[1], base[1] + delta[1], rtol=1e-6, atol=1e-6)  # entering block 1: added
    assert np.max(np.abs(edited[2] - base[2])) > 1e-2  # carried into later layers
    # Other positions see the edit only through attention from layer 2 on.
    others = model.text_positions([1])
    b_o = np.asarray(model.prefix_residuals(obs, others))
    e_o = np.asarray(model.prefix_residuals(obs, others, edit=_text_edit(model, slots, delta=jnp.asarray(delta))))
    np.testing.assert_array_equal(e_o[:2], b_o[:2])


def test_replace_writes_layer0_then_delta_adds(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, seed=9)
    width = config.paligemma.width
    slots = np.arange(config.max_token_len)
    replace = np.zeros((1, len(slots), width), np.float32)
    replace[0, :3] = np.random.default_rng(1).normal(size=(3, width))
    edit = _text_edit(model, slots, replace=jnp.asarray(replace))
    captured = np.asarray(model.prefix_residuals(obs, model.text_positions(slots), edit=edit))
    np.testing.assert_array_equal(captured[0], np.broadcast_to(replace, captured[0].shape))


def test_edit_shape_errors_are_clear(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config)
    bad = _text_edit(model, [0, 1], delta=jnp.zeros((config.paligemma.depth + 1, 1, 2, config.paligemma.width)))
    with pytest.raises(ValueError, match=r"delta must have shape \(depth="):
        model.prefix_residuals(obs, [0], edit=bad)


def test_compute_loss_draws_noise_and_time_like_openpi(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=2, seed=10)
    actions = jax.random.normal(jax.random.key(9), (2, config.action_horizon, config.action_dim))
    rng = jax.random.key(123)
    loss = np.asarray(jax.jit(model.compute_loss)(rng, obs, actions))

    def expected(rng, obs, actions):
        # openpi: split into (preprocess, noise, time); ε ~ N(0, I); t ~ Beta(1.5, 1)·0.999 + 0.001.
        _, noise_rng, time_rng = jax.random.split(rng, 3)
        noise = jax.random.normal(noise_rng, actions.shape)
        time = jax.random.beta(time_rng, 1.5, 1, actions.shape[:1]) * 0.999 + 0.001
        x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
        v = _joint_velocity(model, obs, x_t, time)
        return jnp.mean(jnp.square(v - (noise - actions)), axis=-1)

    # Both sides jitted: eager execution alone moves float32 results by ~1e-5 through XLA's op-by-op kernels.
    expected = np.asarray(jax.jit(expected)(rng, obs, actions))
    assert loss.shape == (2, config.action_horizon)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    other = np.asarray(jax.jit(model.compute_loss)(jax.random.key(124), obs, actions))
    assert np.max(np.abs(other - loss)) > 1e-3  # the key matters
    with pytest.raises(NotImplementedError, match="augmentation"):
        model.compute_loss(rng, obs, actions, train=True)


def test_bf16_mode_keeps_openpi_dtypes(bf16_model):
    model, config = bf16_model, bf16_model.config
    obs = make_observation(config)
    cache, _ = model.encode_prefix(obs)
    assert cache.kv[0].dtype == jnp.bfloat16
    assert cache.kv[0].shape == (config.paligemma.depth, 2, config.prefix_len, 1, config.paligemma.head_dim)
    out = model.sample_actions(jax.random.key(0), obs)
    assert out.dtype == jnp.float32 and out.shape == (2, config.action_horizon, config.action_dim)
    assert np.all(np.isfinite(np.asarray(out)))


def test_missing_image_and_resize(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=1)
    with pytest.raises(ValueError, match="lacks images"):
        model.preprocess(obs.replace(images={k: v for k, v in obs.images.items() if k != config.image_keys[0]}))
    big = obs.replace(images={k: jnp.repeat(jnp.repeat(v, 2, 1), 2, 2) for k, v in obs.images.items()})
    assert model.preprocess(big).images[config.image_keys[0]].shape[1:3] == config.image_resolution


def test_unrolled_layers_compute_the_same(f32_model):
    """``unroll_layers`` changes how XLA compiles the layer loop, not the arithmetic."""
    config = f32_model.config
    unrolled = model_from_params(dataclasses.replace(config, unroll_layers=True), model_params(f32_model))
    obs = make_observation(config, batch=2, seed=4)
    noise = jax.random.normal(jax.random.key(0), (2, config.action_horizon, config.action_dim))

    def compiled_loops(model):
        graphdef, state = nnx.split(model)
        sample = jax.jit(lambda state, obs, noise: nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise))
        return sample, state, sample.lower(state, obs, noise).as_text().count("stablehlo.while")

    sample, state, loops = compiled_loops(unrolled)
    # Unrolling removes the two Gemma layer loops (prefix, and suffix inside the flow loop); SigLIP's and the flow
    # loop stay.
    assert compiled_loops(f32_model)[2] - loops == 2
    np.testing.assert_allclose(
        np.asarray(sample(state, obs, noise)),
        np.asarray(f32_model.sample_actions(None, obs, noise=noise)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_pixel_value_table_converts_uint8_images_as_the_eager_operations_bit_for_bit():
    from textlatent.model import Observation
    from textlatent.model.pi0 import lookup_pixel_values, uint8_pixel_values, uint8_to_unit_range

    table = uint8_pixel_values()
    assert table.shape == (256,) and table.dtype == jnp.float32
    # Every uint8 value, in images of several shapes (the eager operations' vector loops differ with the shape).
    rng = np.random.default_rng(0)
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    images = [ramp, rng.integers(0, 256, (2, 37, 23, 3), dtype=np.uint8), rng.integers(0, 256, (1, 224, 224, 3))]
    images[2] = images[2].astype(np.uint8)
    obs = Observation(
        images={str(i): image for i, image in enumerate(images)}, image_masks={}, state=np.zeros((1, 4), np.float32)
    )
    looked_up = jax.jit(lookup_pixel_values)(obs, table)
    for i, image in enumerate(images):
        eager = np.asarray(uint8_to_unit_range(image))
        np.testing.assert_array_equal(np.asarray(looked_up.images[str(i)]).view(np.uint32), eager.view(np.uint32))
    # The arithmetic compiled into one program instead rounds some values differently: why the table exists.
    fused = jax.jit(lambda x: x.astype(jnp.float32) / 255.0 * 2.0 - 1.0)(ramp)
    assert jax.default_backend() != "cpu" or not np.array_equal(
        np.asarray(fused), np.asarray(uint8_to_unit_range(ramp))
    )
    # Float images pass through; from_dict keeps uint8 images when asked to.
    floats = {"f": np.zeros((1, 4, 4, 3), np.float32)}
    assert lookup_pixel_values(Observation(images=floats, image_masks={}, state=None), table).images["f"] is floats["f"]
    kept = Observation.from_dict({"image": {"a": ramp}, "state": np.zeros((1, 4))}, convert_uint8=False)
    assert kept.images["a"] is ramp


@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 10, 25, 64, 100])
def test_sampling_times_are_the_iterations_of_openpis_while_loop(num_steps):
    from textlatent.model.pi0 import sampling_times

    # openpi's loop itself, run by JAX: a float32 time carry, t + dt, while t >= -dt / 2; each time recorded.
    dt = -1.0 / num_steps
    times = np.full(num_steps + 2, np.nan, np.float32)

    def body(c):
        count, t, seen = c
        return count + 1, t + dt, seen.at[count].set(t)

    count, _, seen = jax.lax.while_loop(lambda c: c[1] >= -dt / 2, body, (0, 1.0, jnp.asarray(times)))
    got = sampling_times(num_steps)
    assert len(got) == int(count) == num_steps
    np.testing.assert_array_equal(got, np.asarray(seen)[: int(count)])
    with pytest.raises(ValueError, match="num_steps"):
        sampling_times(0)
