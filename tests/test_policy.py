"""load_policy end to end on a written checkpoint: transforms as openpi, batching, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import textlatent
from tests.conftest import LIBERO_OVERRIDES, libero_obs, load_libero_policy
from textlatent.policy import ObservationError

OVERRIDES = LIBERO_OVERRIDES


@pytest.fixture(scope="module")
def checkpoint(libero_checkpoint):
    return libero_checkpoint


@pytest.fixture(scope="module")
def policy(checkpoint, tokenizer_path):
    return load_libero_policy(checkpoint, tokenizer_path)


def test_actions_follow_openpi_output_transforms(policy, checkpoint):
    _, stats = checkpoint
    obs = libero_obs()
    noise = np.random.default_rng(1).normal(size=(6, 32)).astype(np.float32)
    out = policy.infer(obs, noise=noise)
    assert out["actions"].shape == (6, 7) and out["actions"].dtype == np.float64
    assert out["policy_timing"]["infer_ms"] > 0
    # Recompute independently: normalized state → model → unnormalize → add round-tripped state to dims 0-5.
    observation, model_state, _ = policy.prepare(obs)
    s_mean, s_std = stats["state"].mean, stats["state"].std
    expected_state = ((obs["observation/state"] - s_mean) / (s_std + 1e-6)).astype(np.float32)
    np.testing.assert_array_equal(model_state[0, :8], expected_state)
    assert not model_state[0, 8:].any()
    raw = np.asarray(policy.model.sample_actions(None, observation, noise=jnp.asarray(noise)[None]))[0]
    a_mean, a_std = stats["actions"].mean, stats["actions"].std
    actions = raw[:, :7] * (a_std + 1e-6) + a_mean
    state = expected_state.astype(np.float64) * (s_std + 1e-6) + s_mean
    actions[:, :6] += state[:6]
    np.testing.assert_allclose(out["actions"], actions, rtol=1e-5, atol=1e-5)


def test_images_are_uint8_masked_third_camera_and_tokens(policy):
    observation, _, batched = policy.prepare(libero_obs())
    assert not batched
    base, _, right = (observation.images[k] for k in policy.model.config.image_keys)
    assert base.dtype == np.float32 and base.min() >= -1 and base.max() <= 1
    assert np.all(right == -1.0)
    assert [bool(observation.image_masks[k][0]) for k in policy.model.config.image_keys] == [True, True, False]
    assert observation.tokenized_prompt[0, 0] == 2


def test_float_and_channels_first_images_are_parsed_like_openpi(policy):
    obs = libero_obs()
    as_float = dict(obs, **{"observation/image": obs["observation/image"] / 255.0})
    chw = dict(obs, **{"observation/wrist_image": np.moveaxis(obs["observation/wrist_image"], -1, 0)})
    a, _, _ = policy.prepare(obs)
    b, _, _ = policy.prepare(as_float)
    c, _, _ = policy.prepare(chw)
    key0, key1 = policy.model.config.image_keys[:2]
    # float images are truncated to uint8, as openpi's (255 * x).astype(uint8)
    truncated = ((obs["observation/image"] / 255.0) * 255).astype(np.uint8)
    expected = np.asarray(jnp.asarray(truncated).astype(jnp.float32) / 255.0 * 2.0 - 1.0)
    np.testing.assert_array_equal(b.images[key0][0], expected)
    np.testing.assert_array_equal(c.images[key1], a.images[key1])


def test_larger_images_are_resized_with_padding(policy):
    observation, _, _ = policy.prepare(libero_obs(size=80))
    assert observation.images[policy.model.config.image_keys[0]].shape == (1, 56, 56, 3)


def test_batch_equals_single_requests(policy):
    obs = [libero_obs(seed=i, prompt=p) for i, p in enumerate(["put the bowl on the plate", "turn on the stove"])]
    noise = np.random.default_rng(2).normal(size=(2, 6, 32)).astype(np.float32)
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0] if k != "prompt"}
    batch["prompt"] = [o["prompt"] for o in obs]
    out = policy.infer(batch, noise=noise)["actions"]
    assert out.shape == (2, 6, 7)
    for i in range(2):
        np.testing.assert_allclose(policy.infer(obs[i], noise=noise[i])["actions"], out[i], rtol=1e-5, atol=1e-5)


def test_rng_is_split_per_call_like_openpi(policy, checkpoint, tokenizer_path):
    fresh = textlatent.load_policy("pi0_libero", checkpoint[0], tokenizer=str(tokenizer_path), **OVERRIDES)
    obs = libero_obs()
    first, second = fresh.infer(obs)["actions"], fresh.infer(obs)["actions"]
    assert not np.allclose(first, second)
    _, key = jax.random.split(jax.random.key(0))
    noise = jax.random.normal(key, (1, 6, 32))
    np.testing.assert_allclose(first, fresh.infer(obs, noise=np.asarray(noise))["actions"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.pop("observation/state"), "lacks"),
        (lambda o: o.update({"observation/state": np.ones(7)}), "8 values"),
        (lambda o: o.update({"observation/state": np.array([np.nan] * 8)}), "NaN"),
        (lambda o: o.update({"observation/state": np.array(["a"] * 8)}), "numeric"),
        (lambda o: o.update({"prompt": "   "}), "empty"),
        (lambda o: o.pop("prompt"), "no 'prompt'"),
        (lambda o: o.update({"prompt": 3}), "must be a string"),
        (lambda o: o.update({"observation/image": np.zeros((56, 56), np.uint8)}), "shape"),
        (lambda o: o.update({"observation/image": np.zeros((56, 56, 4), np.uint8)}), "3 colour channels"),
        (lambda o: o.update({"observation/image": np.zeros((56, 56, 3), np.int64)}), "uint8"),
        (lambda o: o.update({"observation/wrist_image": np.full((56, 56, 3), np.inf)}), "NaN or inf"),
    ],
)
def test_bad_observations_raise_clear_errors(policy, change, message):
    obs = libero_obs()
    change(obs)
    with pytest.raises(ObservationError, match=message):
        policy.infer(obs)


def test_bad_noise_and_config(policy, checkpoint, tokenizer_path):
    with pytest.raises(ObservationError, match="noise must be"):
        policy.infer(libero_obs(), noise=np.zeros((5, 32)))
    with pytest.raises(ValueError, match="unknown config override"):
        textlatent.load_policy("pi0_libero", checkpoint[0], tokenizer=str(tokenizer_path), paligemma="dummy")
    with pytest.raises(ValueError, match="unknown config 'pi0_nope'"):
        textlatent.load_policy("pi0_nope", checkpoint[0])
    with pytest.raises(FileNotFoundError, match="norm stats for asset_id 'x/y'"):
        textlatent.load_policy("pi0_libero", checkpoint[0], tokenizer=str(tokenizer_path), asset_id="x/y", **OVERRIDES)


def test_draw_noises_is_the_key_sequence_of_consecutive_infer_calls(checkpoint, tokenizer_path):
    """The server's one-call noise draw equals what n single ``infer`` calls draw: split once per call, then
    normal(sub, [1, H, D]) — checked against jax.random directly, and the key continues where n calls leave it."""
    import jax

    policy = load_libero_policy(checkpoint, tokenizer_path)
    shape = (1, policy.model.config.action_horizon, policy.model.config.action_dim)
    key, expected = jax.random.key(0), []
    for _ in range(5):
        key, sub = jax.random.split(key)
        expected.append(np.asarray(jax.random.normal(sub, shape))[0])
    np.testing.assert_array_equal(policy.draw_noises(3), np.stack(expected[:3]))
    assert policy.draw_noises(0).shape == (0, *shape[1:])
    np.testing.assert_array_equal(policy.draw_noises(2), np.stack(expected[3:]))
    key, sub = jax.random.split(key)
    obs = libero_obs(1)
    served = policy.infer(obs)["actions"]
    np.testing.assert_array_equal(served, policy.infer(obs, noise=np.asarray(jax.random.normal(sub, shape)))["actions"])


def test_repeated_infer_calls_compile_the_model_once(checkpoint, tokenizer_path):
    from textlatent.policy.policy import _sample_and_advance

    fresh = load_libero_policy(checkpoint, tokenizer_path)
    sample = fresh.jitted(fresh.bound(_sample_and_advance), 1, static_argnames=("num_steps",))
    for seed in range(3):  # the key of the second call comes out of the first: placed alike, no second compile
        fresh.infer(libero_obs(seed=seed))
    assert sample._cache_size() == 1


def test_batched_resizes_equal_one_by_one_in_order():
    from textlatent.policy.transforms import resize_with_pad

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (9, 30, 50, 3), dtype=np.uint8)  # several images: the threaded path
    batched = resize_with_pad(images, 56, 56)
    one_by_one = np.concatenate([resize_with_pad(im[None], 56, 56) for im in images])  # one image: the serial path
    np.testing.assert_array_equal(batched, one_by_one)
    assert not np.array_equal(batched[0], batched[1])


def test_cameras_resized_together_equal_each_camera_alone():
    from textlatent.policy.transforms import resize_all_with_pad, resize_with_pad

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (2, 30, 60, 3), dtype=np.uint8)
    at_size = rng.integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)  # left as it is
    got = resize_all_with_pad([base, at_size, wrist], 56, 56)
    expected = [resize_with_pad(a, 56, 56) for a in (base, at_size, wrist)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)
    assert got[1] is at_size
    np.testing.assert_array_equal(resize_all_with_pad([base[0]], 56, 56)[0], expected[0][0])  # unbatched


def test_compact_policy_observation_is_the_compacted_full_observation(policy):
    # The policy leaves the masked camera out before converting images; the result must be what compacting the
    # fully converted observation gives.
    obs = libero_obs(seed=12)
    inputs = policy.transforms.inputs(obs)
    inputs.pop("batched")
    early = policy._observation(inputs)
    late = policy._layout(policy.prepare(obs)[0])
    assert early.absent_cameras == late.absent_cameras == (policy.model.config.image_keys[-1],)
    assert set(early.images) == set(late.images)
    for key in early.images:
        np.testing.assert_array_equal(np.asarray(early.images[key]), np.asarray(late.images[key]))
    np.testing.assert_array_equal(np.asarray(early.tokenized_prompt), np.asarray(late.tokenized_prompt))
