"""Flow inversion on the tiny float32 model: exact (fixed-point) round trips, the naive method's O(Δ) error,
reconstruction == sampling bit for bit, partial inversion, one prefix pass per request, metrics and the policy API."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import textlatent
from tests.conftest import LIBERO_OVERRIDES, libero_obs, make_observation
from textlatent.inversion import (
    ChunkMetrics,
    PolicyInversion,
    chunk_metrics,
    chunk_mse,
    encode,
    encode_split,
    grid_index,
    invert,
    invert_and_edit,
    invert_split,
    reconstruct,
    reconstruct_split,
    summarize_episode,
    time_grid,
)
from textlatent.latents import Intervention, Schedule
from textlatent.latents.latent import TextLatent
from textlatent.model import Pi0, ResidualEdit

STEP_COUNTS = (5, 10, 20)


@pytest.fixture(scope="module")
def setup(f32_model):
    model = f32_model
    config = model.config
    obs = make_observation(config, batch=2, seed=1)
    noise = jax.random.normal(jax.random.key(0), (2, config.action_horizon, config.action_dim))
    graphdef, state = nnx.split(model)
    return model, obs, noise, graphdef, state


def random_edit(model: Pi0, seed: int = 0, scale: float = 0.5) -> ResidualEdit:
    """A residual edit on the first 3 prompt slots at every layer (like TLI's, but random)."""
    llm = model.config.paligemma
    delta = np.random.default_rng(seed).normal(size=(llm.depth, 1, 3, llm.width)) * scale
    return ResidualEdit(positions=model.text_positions(np.arange(3)), delta=jnp.asarray(delta, jnp.float32))


@functools.partial(jax.jit, static_argnums=0, static_argnames="num_steps")
def sample_split(graphdef, state, obs, noise, edit=None, *, num_steps=10):
    """What ``Policy`` compiles: ``sample_actions`` on the merged module."""
    return nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise, edit=edit, num_steps=num_steps)


# ------------------------------------------------------------------------------------------------------- time grid
@pytest.mark.parametrize("num_steps", [1, 3, 5, 7, 10, 20])
def test_time_grid_is_the_samplers_float32_carry(num_steps):
    dt = -1.0 / num_steps

    def step(carry):
        times, t, i = carry
        return times.at[i].set(t), t + dt, i + 1

    # The sampler's loop with the velocity left out: the times it feeds the network.
    times, _, count = jax.lax.while_loop(
        lambda c: c[1] >= -dt / 2, step, (jnp.full(64, -1.0, jnp.float32), 1.0, jnp.int32(0))
    )
    grid = time_grid(num_steps)
    assert int(count) == num_steps and grid.shape == (num_steps + 1,) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[:-1], np.asarray(times)[:num_steps])
    assert grid[-1] == 0.0
    if num_steps == 10:
        assert grid[2] == np.float32(0.79999995)


def test_grid_index_and_argument_checks(setup):
    model, obs, noise, _, _ = setup
    assert grid_index(1.0, 10) == 0 and grid_index(0.0, 10) == 10 and grid_index(0.5, 10) == 5
    assert grid_index(0.8, 10) == 2  # the grid holds 0.79999995
    with pytest.raises(ValueError, match="not a time of the 10-step grid"):
        grid_index(0.55, 10)
    with pytest.raises(ValueError, match="unknown inversion method"):
        invert(model, obs, noise, method="heun")
    with pytest.raises(ValueError, match="must not exceed stop_t"):
        invert(model, obs, noise, start_t=0.5, stop_t=0.2)
    with pytest.raises(ValueError, match="shape"):
        invert(model, obs, noise[:, :, :3])
    with pytest.raises(ValueError, match="either a prefix cache or an edit"):
        reconstruct(model, obs, noise, cache=object(), edit=random_edit(model))
    with pytest.raises(ValueError, match="exactly one of noise"):
        invert_and_edit(model, obs)


# --------------------------------------------------------------------------------------------------- reconstruction
def test_reconstruct_is_sample_actions_bit_for_bit(setup):
    model, obs, noise, graphdef, state = setup
    # Eager, as the brief's reference call.
    np.testing.assert_array_equal(
        np.asarray(reconstruct(model, obs, noise)), np.asarray(model.sample_actions(None, obs, noise=noise))
    )
    # Compiled, with an edit and with a precomputed cache of that edit, as Policy compiles sampling.
    edit = random_edit(model)
    sampled = np.asarray(sample_split(graphdef, state, obs, noise, edit))
    np.testing.assert_array_equal(np.asarray(reconstruct_split(graphdef, state, obs, noise, edit=edit)), sampled)
    cached = jax.jit(lambda o, n, e: reconstruct(model, o, n, cache=encode(model, o, edit=e)))(obs, noise, edit)
    np.testing.assert_array_equal(np.asarray(cached), sampled)
    # …and the edit matters (otherwise the comparison above would not see a dropped edit).
    assert np.max(np.abs(sampled - np.asarray(sample_split(graphdef, state, obs, noise)))) > 1e-3


def test_reconstruct_over_cut_layer_weights_is_their_sample_actions_bit_for_bit(setup):
    model, obs, noise, graphdef, state = setup
    weights = model.layer_weights()
    edit = random_edit(model, seed=2)
    sample = jax.jit(lambda o, n, w, e: model.sample_actions(None, o, noise=n, edit=e, layer_weights=w))
    expected = np.asarray(sample(obs, noise, weights, edit))
    got = reconstruct_split(graphdef, state, obs, noise, edit=edit, layer_weights=weights)
    np.testing.assert_array_equal(np.asarray(got), expected)
    # Inverting that plan over the same weights finds its noise (fixed point: to float32 rounding).
    trace = invert_split(
        graphdef,
        state,
        obs,
        jnp.asarray(expected),
        cache=encode_split(graphdef, state, obs, edit, weights),
        layer_weights=weights,
    )
    assert float(jnp.max(jnp.abs(trace.noise - noise))) <= 1e-4


# ------------------------------------------------------------------------------------------------------- inversion
@pytest.fixture(scope="module")
def round_trips(setup):
    """For each step count and method: max |noise error|, max |round-trip error| and RMS round-trip error."""
    _, obs, noise, graphdef, state = setup
    out = {}
    for num_steps in STEP_COUNTS:
        actions = reconstruct_split(graphdef, state, obs, noise, num_steps=num_steps)
        for method in ("naive", "fixed_point"):
            trace = invert_split(graphdef, state, obs, actions, num_steps=num_steps, method=method)
            again = reconstruct_split(graphdef, state, obs, trace.noise, num_steps=num_steps)
            out[num_steps, method] = {
                "noise_max": float(jnp.max(jnp.abs(trace.noise - noise))),
                "round_trip_max": float(jnp.max(jnp.abs(again - actions))),
                "round_trip_rms": float(jnp.sqrt(jnp.mean(jnp.square(again - actions)))),
                "iterations": np.asarray(trace.iterations),
            }
    for (num_steps, method), errors in out.items():
        print(num_steps, method, {k: v for k, v in errors.items() if k != "iterations"}, errors["iterations"].sum())
    return out


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
def test_fixed_point_inversion_is_exact(round_trips, num_steps):
    errors = round_trips[num_steps, "fixed_point"]
    assert errors["noise_max"] <= 1e-4
    assert errors["round_trip_max"] <= 1e-4
    # It iterated: several velocity evaluations per step, never the cap.
    assert np.all(errors["iterations"] >= 2) and np.all(errors["iterations"] < 50)


def test_naive_inversion_error_is_first_order(round_trips):
    for num_steps in STEP_COUNTS:
        naive, exact = round_trips[num_steps, "naive"], round_trips[num_steps, "fixed_point"]
        assert naive["round_trip_max"] > 100 * max(exact["round_trip_max"], 1e-6)
        assert naive["noise_max"] > 100 * max(exact["noise_max"], 1e-6)
        assert np.all(naive["iterations"] == 1)
    # O(Δ): halving the step about halves the error.
    for coarse, fine in itertools.pairwise(STEP_COUNTS):
        ratio = round_trips[coarse, "naive"]["round_trip_rms"] / round_trips[fine, "naive"]["round_trip_rms"]
        assert 1.5 < ratio < 3.0, (coarse, fine, ratio)


def test_partial_inversion_round_trips(setup):
    _, obs, noise, graphdef, state = setup
    actions = reconstruct_split(graphdef, state, obs, noise)
    midway = invert_split(graphdef, state, obs, actions, stop_t=0.5).noise
    assert invert_split(graphdef, state, obs, actions, stop_t=0.5).iterations.shape == (5,)
    # The latent at t = 0.5 is neither end…
    assert np.min([np.max(np.abs(midway - actions)), np.max(np.abs(midway - noise))]) > 1e-2
    # …it reconstructs the actions from 0.5, and inverting on from 0.5 recovers the noise.
    back = reconstruct_split(graphdef, state, obs, midway, from_t=0.5)
    assert float(jnp.max(jnp.abs(back - actions))) <= 1e-4
    rest = invert_split(graphdef, state, obs, midway, start_t=0.5, stop_t=1.0).noise
    assert float(jnp.max(jnp.abs(rest - noise))) <= 1e-4
    # Starting at 0 and stopping at 0 is the identity; reconstructing from 0 too.
    np.testing.assert_array_equal(invert_split(graphdef, state, obs, actions, stop_t=0.0).noise, actions)
    np.testing.assert_array_equal(reconstruct_split(graphdef, state, obs, actions, from_t=0.0), actions)


# --------------------------------------------------------------------------------------- one request, edits, counts
@pytest.fixture
def count_prefix_passes(monkeypatch):
    """Counts calls of ``Pi0.encode_prefix``. Under jit a call is traced once into the program, so the count at the
    first (tracing) call is the number of prefix passes the compiled program runs."""
    calls = []
    original = Pi0.encode_prefix

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("edit"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pi0, "encode_prefix", counting)
    return calls


def test_invert_encodes_the_prefix_once_or_reuses_a_cache(setup, count_prefix_passes):
    model, obs, noise, graphdef, state = setup
    jax.jit(lambda o, a: invert(model, o, a, method="naive"))(obs, noise)
    assert len(count_prefix_passes) == 1
    cache = encode_split(graphdef, state, obs)
    count_prefix_passes.clear()
    jax.jit(lambda o, a, c: invert(model, o, a, method="naive", cache=c))(obs, noise, cache)
    jax.jit(lambda o, a, c: reconstruct(model, o, a, cache=c))(obs, noise, cache)
    assert count_prefix_passes == []


def test_invert_and_edit_one_prefix_pass_per_prompt(setup, count_prefix_passes):
    model, obs, noise, graphdef, state = setup
    run = jax.jit(lambda o, n, eo, e: invert_and_edit(model, o, noise=n, edit_obs=eo, edit=e))

    plain = run(obs, noise, None, None)
    assert len(count_prefix_passes) == 1 and plain.prefix_encodings == 1 and plain.edited_actions is None
    sampled = np.asarray(sample_split(graphdef, state, obs, noise))
    np.testing.assert_allclose(plain.original_actions, sampled, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(plain.source_noise, noise)
    assert float(jnp.max(jnp.abs(plain.noise - noise))) <= 1e-4
    assert float(jnp.max(jnp.abs(plain.reconstructed_actions - plain.original_actions))) <= 1e-4

    # The same prompt as the edit: a second prefix pass, and exactly the reconstruction.
    count_prefix_passes.clear()
    same = run(obs, noise, obs, None)
    assert len(count_prefix_passes) == 2 and same.prefix_encodings == 2
    np.testing.assert_array_equal(same.edited_actions, same.reconstructed_actions)

    # A residual edit changes the regenerated plan (and only the edit's prefix pass carries it).
    count_prefix_passes.clear()
    edited = run(obs, noise, None, random_edit(model))
    assert edited.prefix_encodings == 2 and [e is None for e in count_prefix_passes] == [True, False]
    assert float(jnp.max(jnp.abs(edited.edited_actions - edited.reconstructed_actions))) > 1e-3

    # Another prompt's observation changes it too.
    other = obs.replace(tokenized_prompt=jnp.roll(obs.tokenized_prompt, 1, axis=0))
    swapped = run(obs, noise, other, None)
    assert float(jnp.max(jnp.abs(swapped.edited_actions - swapped.reconstructed_actions))) > 1e-3


def test_invert_and_edit_given_actions_and_partial(setup):
    model, obs, noise, graphdef, state = setup
    actions = reconstruct_split(graphdef, state, obs, noise)
    result = jax.jit(lambda o, a: invert_and_edit(model, o, actions=a, invert_to=0.5, edit=random_edit(model)))(
        obs, actions
    )
    assert result.source_noise is None and result.iterations.shape == (5,)
    np.testing.assert_array_equal(result.original_actions, actions)
    assert float(jnp.max(jnp.abs(result.reconstructed_actions - actions))) <= 1e-4
    assert float(jnp.max(jnp.abs(result.edited_actions - actions))) > 1e-3


# ---------------------------------------------------------------------------------------------------------- metrics
def test_chunk_mse_and_metrics_equal_direct_formulas():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 6, 32)), rng.normal(size=(3, 6, 32))
    ra, rb = rng.normal(size=(3, 6, 7)), rng.normal(size=(3, 6, 7))
    np.testing.assert_allclose(chunk_mse(a, b), [np.sum((a[i] - b[i]) ** 2) / (6 * 32) for i in range(3)])
    np.testing.assert_allclose(
        chunk_mse(a, b, dims=7), [np.sum((a[i, :, :7] - b[i, :, :7]) ** 2) / 42 for i in range(3)]
    )
    np.testing.assert_allclose(chunk_mse(a[0], b[0], steps=2), np.sum((a[0, :2] - b[0, :2]) ** 2) / 64)
    metrics = chunk_metrics(a, b, ra, rb, steps=4)
    for i in range(3):
        assert metrics.mse_model[i] == pytest.approx(((a[i, :4] - b[i, :4]) ** 2).mean(), rel=1e-12)
        assert metrics.mse_model_real[i] == pytest.approx(((a[i, :4, :7] - b[i, :4, :7]) ** 2).mean(), rel=1e-12)
        assert metrics.mse_robot[i] == pytest.approx(((ra[i, :4] - rb[i, :4]) ** 2).mean(), rel=1e-12)
    assert metrics.row(1) == {
        "mse_model": metrics.mse_model[1],
        "mse_model_real": metrics.mse_model_real[1],
        "mse_robot": metrics.mse_robot[1],
    }
    with pytest.raises(ValueError, match="share a shape"):
        chunk_mse(a, b[..., :7])


def test_summarize_episode():
    chunks = [
        ChunkMetrics(np.array([1.0]), np.array([2.0]), np.array([3.0])),
        ChunkMetrics(np.array([5.0, 0.5]), np.array([4.0, 0.0]), np.array([9.0, 6.0])),
    ]
    summary = summarize_episode(chunks)
    assert summary["mse_model"] == {"mean": 6.5 / 3, "median": 1.0, "max": 5.0, "final": 0.5, "count": 3}
    assert summary["mse_robot"]["mean"] == pytest.approx(6.0) and summary["mse_model_real"]["max"] == 4.0
    assert summarize_episode([]) == {}


# ------------------------------------------------------------------------------------------------------ policy API
@pytest.fixture(scope="module")
def policy(libero_checkpoint, tokenizer_path):
    """The tiny LIBERO policy in float32 (the bf16 serving mode rounds Δ·v to ~4e-3·|Δ·v|: no float32 round trip)."""
    return textlatent.load_policy(
        "pi0_libero", libero_checkpoint[0], tokenizer=str(tokenizer_path), dtype="float32", **LIBERO_OVERRIDES
    )


def test_policy_inversion_round_trip_and_prompt_edit(policy):
    inversion = PolicyInversion(policy)
    obs = libero_obs(seed=3)
    noise = np.random.default_rng(4).normal(size=(6, 32)).astype(np.float32)
    record = inversion.run(obs, noise=noise, edit_prompt="turn on the stove")
    assert record.prefix_encodings == 2 and not record.batched
    assert record.original_actions.shape == (1, 6, 7) and record.original_normalized.shape == (1, 6, 32)
    # The original plan is what the policy executes for this noise.
    np.testing.assert_allclose(record.original_actions[0], policy.infer(obs, noise=noise)["actions"], atol=1e-5)
    assert np.max(np.abs(record.noise[0] - noise)) <= 1e-4
    assert record.reconstruction.mse_model[0] <= 1e-8 and record.reconstruction.mse_robot[0] <= 1e-6
    # Robot-space plans are the policy's output transform; the metrics are their MSEs.
    _, state, _ = policy.prepare(obs)
    np.testing.assert_array_equal(record.edited_actions, policy.transforms.outputs(record.edited_normalized, state))
    expected = np.mean((record.original_actions - record.edited_actions)[..., :7] ** 2)
    assert record.edit.mse_robot[0] == pytest.approx(expected, rel=1e-12)
    assert record.edit.mse_model[0] > 1e-6

    same = inversion.run(obs, noise=noise, edit_prompt=obs["prompt"])
    np.testing.assert_array_equal(same.edited_normalized, same.reconstructed_normalized)
    plain = inversion.run(obs, noise=noise)
    assert plain.prefix_encodings == 1 and plain.edited_actions is None and plain.edit is None
    with pytest.raises(ValueError, match="noise must be float"):
        inversion.run(obs, noise=noise[:3])


def test_policy_inversion_with_a_tli_intervention(policy):
    config = policy.model.config
    llm = config.paligemma
    rng = np.random.default_rng(7)
    latents = tuple(
        TextLatent(rng.normal(size=(llm.depth, 4, llm.width)), np.arange(4), prompt) for prompt in ("a", "b")
    )
    tli = Intervention("tli", latents=latents, schedule=Schedule("constant", value=0.0))
    record = PolicyInversion(policy, method="naive").run(libero_obs(seed=5), intervention=tli)
    assert record.prefix_encodings == 2 and np.all(record.iterations == 1)
    assert record.edit.mse_model[0] > 1e-6
    # Naive inversion is visibly inexact even on this tiny model.
    assert record.reconstruction.mse_model[0] > 1e-8


def test_inversion_runs_on_a_bf16_model_and_round_trips_to_its_rounding():
    """Served policies run in bf16: the velocity stays bf16 inside the fixed-point loop (Δ·v rounds as the
    sampler's dt·v), which the loop's carry must allow for."""
    from tests.conftest import random_model, tiny_config

    model = random_model(tiny_config(dtype="bfloat16"), seed=3)
    config = model.config
    obs = make_observation(config, batch=2, seed=4)
    noise = jax.random.normal(jax.random.key(1), (2, config.action_horizon, config.action_dim))
    graphdef, state = nnx.split(model)
    actions = reconstruct_split(graphdef, state, obs, noise)
    errors = {}
    for method in ("fixed_point", "naive"):
        trace = invert_split(graphdef, state, obs, actions, method=method)
        again = reconstruct_split(graphdef, state, obs, trace.noise)
        errors[method] = float(jnp.max(jnp.abs(again - actions)))
    print(errors)
    scale = float(jnp.max(jnp.abs(actions)))
    assert errors["fixed_point"] <= 2e-2 * scale
    assert errors["fixed_point"] < errors["naive"]
