"""GPU serving options (``expert_weights_per_layer``, ``one_image_pass``, weights cut per layer at load time): off
in the model by default, on in ``Policy``'s compact path, and each computes the reference path's function — exactly
in float32 on the CPU, to bf16 rounding in bfloat16. ``compact=False`` stays openpi's arithmetic, bit for bit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import LIBERO_OVERRIDES, libero_obs, make_observation, tiny_config
from textlatent.checkpoint import model_from_params, model_params
from textlatent.checkpoint.random import cast_params
from textlatent.model import Pi0Config, ResidualEdit, ops

OPTIONS = [{"expert_weights_per_layer": True}, {"one_image_pass": True}, {"aligned_attention": True}]


def _with(model, **options):
    return model_from_params(dataclasses.replace(model.config, **options), model_params(model))


def _sample(model, obs, noise, layer_weights=None, edit=None):
    graphdef, state = nnx.split(model)
    run = jax.jit(
        lambda s, o, n, w, e: nnx.merge(graphdef, s).sample_actions(None, o, noise=n, layer_weights=w, edit=e)
    )
    return np.asarray(run(state, obs, noise, layer_weights, edit), np.float32)


FIELDS = ("one_image_pass", "expert_weights_per_layer", "aligned_attention", "flash_attention", "weights_per_layer")


def test_options_are_off_by_default():
    config = Pi0Config()
    assert not any(getattr(config, field) for field in FIELDS)


def test_resolved_turns_on_only_the_options_left_open():
    fast = Pi0Config().resolved(True)
    assert all(getattr(fast, field) for field in FIELDS)
    on_cpu = Pi0Config().resolved(True, accelerator=False)
    assert not on_cpu.weights_per_layer and not on_cpu.flash_attention and on_cpu.aligned_attention
    exact = Pi0Config().resolved(False)
    assert not any(getattr(exact, field) for field in FIELDS)
    chosen = Pi0Config(one_image_pass=False, weights_per_layer=True)
    assert not chosen.resolved(True).one_image_pass and chosen.resolved(False).weights_per_layer


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: next(iter(o)))
def test_option_samples_the_same_actions_in_float32(f32_model, options):
    config = f32_model.config
    obs = make_observation(config, batch=2, seed=5)
    noise = jax.random.normal(jax.random.key(2), (2, config.action_horizon, config.action_dim))
    np.testing.assert_allclose(
        _sample(_with(f32_model, **options), obs, noise), _sample(f32_model, obs, noise), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("options", [{k: v for o in OPTIONS for k, v in o.items()}], ids=["all"])
def test_options_stay_within_bf16_rounding(f32_model, options):
    config = tiny_config(dtype="bfloat16")
    reference = model_from_params(config, cast_params(model_params(f32_model), jnp.bfloat16))
    obs = make_observation(config, batch=2, seed=6)
    noise = jax.random.normal(jax.random.key(3), (2, config.action_horizon, config.action_dim))
    expected = _sample(reference, obs, noise)
    got = _sample(_with(reference, **options), obs, noise)
    # Fused differently, bf16 intermediates may round differently: a few units of bf16 rounding at the actions' scale.
    assert np.abs(got - expected).max() <= 4 * np.abs(expected).max() * 2**-8


def test_aligned_attention_pads_the_cache_with_keys_nobody_sees(f32_model):
    from textlatent.model.pi0 import KEY_MULTIPLE

    model = _with(f32_model, aligned_attention=True)
    obs = model.preprocess(make_observation(model.config, batch=2, seed=12))
    cache, _ = model.encode_prefix(obs)
    plain, _ = f32_model.encode_prefix(obs)
    prefix, suffix = plain.mask.shape[1], model.config.action_horizon + 1
    padded = cache.mask.shape[1]
    assert (padded + suffix) % KEY_MULTIPLE == 0 and prefix < padded < prefix + KEY_MULTIPLE
    assert not np.asarray(cache.mask[:, prefix:]).any()
    np.testing.assert_array_equal(np.asarray(cache.mask[:, :prefix]), np.asarray(plain.mask))
    for got, expected in zip(cache.kv, plain.kv, strict=True):
        # The same keys and values; from the second layer on, float32 sums in another order.
        np.testing.assert_allclose(np.asarray(got[:, :, :prefix]), np.asarray(expected), rtol=1e-5, atol=1e-6)
        assert not np.asarray(got[:, :, prefix:]).any()
    # The padding keys change no velocity: the same function, in the token-major layout.
    x = jax.random.normal(jax.random.key(7), (2, model.config.action_horizon, model.config.action_dim))
    time = jnp.full((2,), 0.7)
    np.testing.assert_allclose(
        np.asarray(model.velocity(obs, cache, x, time)),
        np.asarray(f32_model.velocity(obs, plain, x, time)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_aligned_attention_gives_the_same_attention_maps(f32_model):
    model = _with(f32_model, aligned_attention=True)
    obs = make_observation(model.config, batch=2, seed=13)
    queries = model.text_positions(np.arange(3))
    np.testing.assert_allclose(
        np.asarray(model.prefix_attention(obs, queries)),
        np.asarray(f32_model.prefix_attention(obs, queries)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_flash_attention_is_a_no_op_off_the_gpu(f32_model):
    # cuDNN's fused attention runs only on a GPU (benchmarks/gpu.py measures it there); elsewhere the layers keep
    # their own arithmetic, bit for bit.
    assert jax.default_backend() != "gpu"
    model = _with(f32_model, flash_attention=True)
    obs = make_observation(model.config, batch=2, seed=17)
    noise = jax.random.normal(jax.random.key(9), (2, model.config.action_horizon, model.config.action_dim))
    np.testing.assert_array_equal(_sample(model, obs, noise), _sample(f32_model, obs, noise))


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
    np.testing.assert_array_equal(layer["attn"]["attn_vec_einsum_1"]["w"], stacked["attn"]["attn_vec_einsum_1"]["w"][2])
    assert "mlp" not in layer and "attn_vec_einsum" not in layer["attn"]  # stream 0 stays stacked, in ``rest``
    # q/k/v and gate/up are laid out once as one matrix each, outside any loop over passes; stream 0 gets none.
    _check_fused(weights.fused[2][1], stacked, "_1", 2)
    assert weights.fused[2][0] is None and "gating_einsum" not in layer["mlp_1"]
    assert "q_einsum_1" not in layer["attn"] and "kv_einsum_1" not in layer["attn"]


def _check_fused(fused, stacked, suffix, layer):
    q = stacked["attn"][f"q_einsum{suffix}"]["w"][layer]  # [N, D, H]
    k, v = stacked["attn"][f"kv_einsum{suffix}"]["w"][layer]  # [K, D, H]
    n, width, h = q.shape
    np.testing.assert_array_equal(fused.qkv[:, : n * h].reshape(width, n, h), np.transpose(q, (1, 0, 2)))
    np.testing.assert_array_equal(
        fused.qkv[:, n * h :].reshape(width, 2, -1, h), np.stack([k, v]).transpose(2, 0, 1, 3)
    )
    gating = stacked[f"mlp{suffix}"]["gating_einsum"][layer]
    np.testing.assert_array_equal(fused.gate_up, np.concatenate([gating[0], gating[1]], axis=1))


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


def _tli(config, seed=4):
    depth, width = config.paligemma.depth, config.paligemma.width
    delta = jax.random.normal(jax.random.key(seed), (depth, 1, 3, width)).at[0].set(0)
    return ResidualEdit(positions=np.asarray(config.text_start + np.arange(3)), delta=delta)


@pytest.mark.parametrize("with_edit", [False, True], ids=["plain", "tli"])
def test_weights_cut_at_load_time_sample_the_same_actions_in_float32(f32_model, with_edit):
    config = f32_model.config
    obs = make_observation(config, batch=2, seed=9)
    noise = jax.random.normal(jax.random.key(5), (2, config.action_horizon, config.action_dim))
    edit = _tli(config) if with_edit else None
    expected = _sample(f32_model, obs, noise, edit=edit)
    for model in (f32_model, _with(f32_model, one_image_pass=True, expert_weights_per_layer=True)):
        got = _sample(model, obs, noise, model.layer_weights(), edit=edit)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_edit", [False, True], ids=["plain", "tli"])
def test_weights_cut_at_load_time_give_the_same_prefix_residuals(f32_model, with_edit):
    # With the weights cut, capture skips the last block and runs the one before only at the captured rows.
    obs = make_observation(f32_model.config, batch=2, seed=10)
    edit = _tli(f32_model.config) if with_edit else None
    for positions in (f32_model.text_positions(np.arange(4)), np.asarray([5, 0, 5, f32_model.config.prefix_len - 1])):
        expected = np.asarray(f32_model.prefix_residuals(obs, positions, edit=edit))
        got = np.asarray(f32_model.prefix_residuals(obs, positions, edit=edit, layer_weights=f32_model.layer_weights()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_capture_rows_of_a_compact_prefix_keep_nan_for_left_out_positions(f32_model):
    from textlatent.model.pi0 import compact_observation

    config = f32_model.config
    obs = make_observation(config, batch=2, seed=14, prompt_lens=(3, 2))
    obs = compact_observation(obs, config.max_token_len, min_prompt_len=4)
    positions = f32_model.text_positions(np.arange(config.max_token_len))
    expected = np.asarray(f32_model.prefix_residuals(obs, positions))
    got = np.asarray(f32_model.prefix_residuals(obs, positions, layer_weights=f32_model.layer_weights()))
    assert np.isnan(expected).any() and (np.isnan(got) == np.isnan(expected)).all()
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-5, atol=1e-5)


def test_query_rows_are_for_the_prefix_stream_alone(f32_model):
    model = f32_model
    obs = model.preprocess(make_observation(model.config, batch=1, seed=15))
    tokens, _, _ = model.embed_prefix(obs)
    suffix = jnp.zeros((1, 2, model.config.action_expert.width))
    attention = nnx.merge(*nnx.split(model.PaliGemma.llm.layers)).attn
    with pytest.raises(ValueError, match="stream 0 alone"):
        attention.forward([tokens, suffix], None, None, None, query_rows=jnp.arange(2))


def test_model_layer_weights_are_slices_of_the_stacks(f32_model):
    weights = f32_model.layer_weights()
    stacked = nnx.to_pure_dict(nnx.state(f32_model))
    blocks = stacked["PaliGemma"]["img"]["Transformer"]["encoderblock"]
    assert len(weights.img.per_layer) == f32_model.config.siglip.depth
    block = nnx.to_pure_dict(weights.img.per_layer[1])
    np.testing.assert_array_equal(
        block["MlpBlock_0"]["Dense_0"]["kernel"], blocks["MlpBlock_0"]["Dense_0"]["kernel"][1]
    )
    layers = stacked["PaliGemma"]["llm"]["layers"]
    assert weights.llm.streams == (0, 1)
    np.testing.assert_array_equal(
        nnx.to_pure_dict(weights.llm.per_layer[2])["mlp"]["linear"], layers["mlp"]["linear"][2]
    )
    for stream, suffix in ((0, ""), (1, "_1")):
        _check_fused(weights.llm.fused[1][stream], layers, suffix, 1)


def _unique_bytes(*trees) -> int:
    """Device bytes of the distinct arrays in ``trees`` (an array shared by two trees counts once)."""
    arrays = {id(a): a for tree in trees for a in jax.tree.leaves(tree) if hasattr(a, "nbytes")}
    return sum(a.nbytes for a in arrays.values())


def test_split_layer_weights_hold_the_weights_once_and_sample_the_same_actions(f32_model):
    model = _with(f32_model, one_image_pass=True, expert_weights_per_layer=True, aligned_attention=True)
    config = model.config
    obs = make_observation(config, batch=2, seed=12)
    noise = jax.random.normal(jax.random.key(8), (2, config.action_horizon, config.action_dim))
    weights = model.layer_weights()
    expected = _sample(model, obs, noise, weights, edit=_tli(config))
    stacked = _sample(model, obs, noise, edit=_tli(config))

    released, released_weights = model.split_layer_weights()
    np.testing.assert_array_equal(_sample(released, obs, noise, released_weights, edit=_tli(config)), expected)
    # The stacks are gone from the copy and from its weights' ``rest``; the model it came from keeps them.
    for module in (released.PaliGemma.llm.layers, released.PaliGemma.img.Transformer.encoderblock):
        assert all(a.shape[0] == 0 for a in jax.tree.leaves(nnx.state(module)))
    assert all(a.shape[0] == 0 for a in released_weights.llm.rest_leaves)
    assert all(a.shape[0] == config.paligemma.depth for a in jax.tree.leaves(nnx.state(model.PaliGemma.llm.layers)))
    assert all(a.shape[0] == config.paligemma.depth for a in weights.llm.rest_leaves)
    np.testing.assert_array_equal(_sample(model, obs, noise, edit=_tli(config)), stacked)
    # The other weights are shared, not copied, and no stack stays reachable: the released model holds the model's
    # bytes less its stacks, its weights the cut layers alone.
    embedding = released.PaliGemma.llm.embedder.input_embedding[...]
    assert embedding is model.PaliGemma.llm.embedder.input_embedding[...]
    stacks = (nnx.state(model.PaliGemma.llm.layers), nnx.state(model.PaliGemma.img.Transformer.encoderblock))
    assert _unique_bytes(nnx.state(released)) == _unique_bytes(nnx.state(model)) - _unique_bytes(*stacks) > 0
    assert _unique_bytes(released_weights) == _unique_bytes(weights) - _unique_bytes(weights.llm.rest_leaves)
    stack_ids = {id(a) for a in jax.tree.leaves(stacks)}
    assert not stack_ids & {id(a) for a in jax.tree.leaves((nnx.state(released), released_weights))}


def test_a_released_model_asks_for_its_layer_weights(f32_model):
    released, weights = f32_model.split_layer_weights()
    obs = make_observation(f32_model.config, batch=1, seed=13)
    noise = jnp.zeros((1, f32_model.config.action_horizon, f32_model.config.action_dim))
    positions = f32_model.text_positions(np.arange(3))
    calls = {
        "sample_actions": lambda: released.sample_actions(None, obs, noise=noise),
        "encode_prefix": lambda: released.encode_prefix(obs),
        "prefix_residuals": lambda: released.prefix_residuals(obs, positions),
        "prefix_attention": lambda: released.prefix_attention(obs, positions),
        "compute_loss": lambda: released.compute_loss(jax.random.key(0), obs, noise),
        "layer_weights": released.layer_weights,
        "split_layer_weights": released.split_layer_weights,
    }
    for name, call in calls.items():
        try:
            call()
        except ValueError as error:
            assert "stacked layer weights were released" in str(error), name
            assert "layer_weights=policy.layer_weights" in str(error), name
        else:
            pytest.fail(f"{name} ran on a model without its layer stacks")
    # With its weights every pass runs (attention maps too, which the policy's analysis uses).
    np.testing.assert_allclose(
        np.asarray(released.prefix_attention(obs, positions, layer_weights=weights)),
        np.asarray(f32_model.prefix_attention(obs, positions)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_all_options_stay_within_bf16_rounding(f32_model):
    config = tiny_config(dtype="bfloat16")
    reference = model_from_params(config, cast_params(model_params(f32_model), jnp.bfloat16))
    fast = _with(reference, one_image_pass=True, expert_weights_per_layer=True, aligned_attention=True)
    obs = make_observation(config, batch=2, seed=11)
    noise = jax.random.normal(jax.random.key(6), (2, config.action_horizon, config.action_dim))
    for edit in (None, _tli(config)):
        expected = _sample(reference, obs, noise, edit=edit)
        got = _sample(fast, obs, noise, fast.layer_weights(), edit=edit)
        assert np.abs(got - expected).max() <= 4 * np.abs(expected).max() * 2**-8


# ------------------------------------------------------------------------------------------------- the policy
def _policy(checkpoint, tokenizer_path, **kwargs):
    import textlatent

    return textlatent.load_policy(
        "pi0_libero", checkpoint[0], tokenizer=str(tokenizer_path), **{**LIBERO_OVERRIDES, **kwargs}
    )


@pytest.fixture(scope="module")
def exact_policy(libero_checkpoint, tokenizer_path):
    return _policy(libero_checkpoint, tokenizer_path, compact=False, dtype="float32")


def test_compact_policy_turns_the_options_on_and_exact_policy_off(libero_checkpoint, tokenizer_path, exact_policy):
    fast = _policy(libero_checkpoint, tokenizer_path).model.config
    assert fast.one_image_pass and fast.expert_weights_per_layer
    assert fast.weights_per_layer == (jax.default_backend() != "cpu")  # a second copy of the weights: accelerators
    exact = exact_policy.model.config
    assert not exact.one_image_pass and not exact.expert_weights_per_layer and not exact.weights_per_layer
    assert exact_policy.layer_weights is None


def test_policy_model_is_built_with_the_options_it_resolves(libero_checkpoint, tokenizer_path):
    # The attention layout and flash attention are options of the modules, fixed when they are made: resolving them
    # on the config alone would leave the loaded model running the layout it was built with.
    policy = _policy(libero_checkpoint, tokenizer_path)
    config = policy.model.config
    assert config.aligned_attention
    attention = policy.model.PaliGemma.llm.layers.attn
    assert attention.token_major and attention.flash == bool(config.flash_attention)
    image_attention = policy.model.PaliGemma.img.Transformer.encoderblock.MultiHeadDotProductAttention_0
    assert image_attention.flash == bool(config.flash_attention)


def test_with_config_rebuilds_the_modules_over_the_same_weights(f32_model):
    config = f32_model.config
    rebuilt = f32_model.with_config(dataclasses.replace(config, aligned_attention=True, flash_attention=True))
    assert rebuilt.PaliGemma.llm.layers.attn.token_major and rebuilt.PaliGemma.llm.layers.attn.flash
    assert not f32_model.PaliGemma.llm.layers.attn.token_major  # the original is left as it was
    assert rebuilt.PaliGemma.llm.embedder.input_embedding[...] is f32_model.PaliGemma.llm.embedder.input_embedding[...]
    assert f32_model.with_config(config) is f32_model
    with pytest.raises(ValueError, match="with_config changes the parameters"):
        f32_model.with_config(dataclasses.replace(config, action_dim=config.action_dim + 1))


def test_explicit_options_win_over_compact(libero_checkpoint, tokenizer_path):
    policy = _policy(libero_checkpoint, tokenizer_path, one_image_pass=False, weights_per_layer=True)
    config = policy.model.config
    assert not config.one_image_pass and config.expert_weights_per_layer and config.weights_per_layer
    assert policy.config.model == config and policy.layer_weights is not None
    exact = _policy(libero_checkpoint, tokenizer_path, compact=False, one_image_pass=True).model.config
    assert exact.one_image_pass and not exact.expert_weights_per_layer


def test_exact_policy_is_the_unoptimized_model_bit_for_bit(libero_checkpoint, exact_policy):
    from textlatent.checkpoint import load_model

    # The model as loaded, with every option at its default: nothing may change its arithmetic.
    defaults = {"one_image_pass": None, "expert_weights_per_layer": None, "weights_per_layer": None}
    reference = load_model(dataclasses.replace(exact_policy.config.model, **defaults), libero_checkpoint[0] / "params")
    obs = libero_obs(seed=3)
    noise = np.random.default_rng(2).normal(size=(6, 32)).astype(np.float32)
    observation, _, _ = exact_policy.prepare(obs)
    expected = _sample(reference, observation, jnp.asarray(noise)[None])
    got = exact_policy.run_model(exact_policy.transforms.inputs(obs), noise[None])
    np.testing.assert_array_equal(got, expected)


def test_fast_policy_matches_the_exact_policy_in_float32(libero_checkpoint, tokenizer_path, exact_policy):
    fast = _policy(libero_checkpoint, tokenizer_path, dtype="float32", weights_per_layer=True)
    assert fast.layer_weights is not None and fast.model.config.one_image_pass
    obs = {**libero_obs(seed=4), "prompt": "pick up the black bowl"}
    noise = np.random.default_rng(3).normal(size=(6, 32)).astype(np.float32)
    np.testing.assert_allclose(
        fast.infer(obs, noise=noise)["actions"], exact_policy.infer(obs, noise=noise)["actions"], rtol=1e-5, atol=1e-5
    )


def test_policy_with_weights_per_layer_keeps_no_stacks_and_its_tools_run_on_the_cut_weights(
    libero_checkpoint, tokenizer_path
):
    from textlatent.inversion import PolicyInversion
    from textlatent.latents import analysis

    fast = _policy(libero_checkpoint, tokenizer_path, dtype="float32", weights_per_layer=True)
    stacked = _policy(libero_checkpoint, tokenizer_path, dtype="float32", weights_per_layer=False)
    assert fast.layer_weights is not None and stacked.layer_weights is None
    assert all(a.shape[0] == 0 for a in jax.tree.leaves(nnx.state(fast.model.PaliGemma.llm.layers)))
    obs = {**libero_obs(seed=6), "prompt": "pick up the black bowl"}
    noise = np.random.default_rng(5).normal(size=(6, 32)).astype(np.float32)
    # Inversion, reconstruction and a prompt edit: the same plans as the stacked path's, to float32 rounding.
    got = PolicyInversion(fast).run(obs, noise=noise, edit_prompt="open the drawer")
    expected = PolicyInversion(stacked).run(obs, noise=noise, edit_prompt="open the drawer")
    for field in ("original_normalized", "reconstructed_normalized", "edited_normalized", "noise"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.original_actions[0], fast.infer(obs, noise=noise)["actions"], atol=1e-6)
    # Prompt-to-image maps (attention and residual alignment) through the policy.
    for kind in (analysis.prompt_to_image_attention, analysis.prompt_to_image_alignment):
        np.testing.assert_allclose(kind(fast, obs).values, kind(stacked, obs).values, rtol=1e-4, atol=1e-6)


def test_a_policy_that_cuts_its_weights_reads_them_into_host_memory_first(
    libero_checkpoint, tokenizer_path, monkeypatch
):
    import textlatent.checkpoint
    from textlatent.checkpoint import load_model
    from textlatent.policy import Policy

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("on_host", False))
        return load_model(*args, **kwargs)

    monkeypatch.setattr(textlatent.checkpoint, "load_model", spy)
    cut = _policy(libero_checkpoint, tokenizer_path, weights_per_layer=True)
    _policy(libero_checkpoint, tokenizer_path, weights_per_layer=False)
    assert calls == [True, False]
    # On the host the weights are NumPy arrays with the dtype asked for, the values the device load gives.
    config = cut.config.model
    host = nnx.to_pure_dict(nnx.state(load_model(config, libero_checkpoint[0] / "params", on_host=True)))
    device = nnx.to_pure_dict(nnx.state(load_model(config, libero_checkpoint[0] / "params")))
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(device), strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(a, np.asarray(b))
    # The policy holds device arrays only, and computes what a policy made from the device load computes.
    leaves = jax.tree.leaves((cut.model_split[1], cut.layer_weights))
    assert leaves and all(isinstance(a, jax.Array) for a in leaves)
    reference = Policy(load_model(config, libero_checkpoint[0] / "params"), cut.config, cut.transforms)
    inputs = cut.transforms.inputs(libero_obs(seed=7))
    noise = np.random.default_rng(8).normal(size=(1, 6, 32)).astype(np.float32)
    np.testing.assert_array_equal(cut.run_model(inputs, noise), reference.run_model(inputs, noise))
    # A host-memory model served without cutting goes to the device too (not transferred in every call).
    uncut = dataclasses.replace(cut.config, model=dataclasses.replace(config, weights_per_layer=False))
    stacked = Policy(load_model(uncut.model, libero_checkpoint[0] / "params", on_host=True), uncut, cut.transforms)
    assert stacked.layer_weights is None
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(stacked.model_split[1]))


def test_fast_policy_stays_within_bf16_rounding(libero_checkpoint, tokenizer_path):
    exact = _policy(libero_checkpoint, tokenizer_path, compact=False)
    fast = _policy(libero_checkpoint, tokenizer_path, weights_per_layer=True)
    inputs = exact.transforms.inputs(libero_obs(seed=5))
    noise = np.random.default_rng(4).normal(size=(1, 6, 32)).astype(np.float32)
    expected, got = exact.run_model(inputs, noise), fast.run_model(inputs, noise)
    assert np.abs(got - expected).max() <= 4 * np.abs(expected).max() * 2**-8


def test_suffix_buffers_give_the_concatenated_keys_bit_for_bit(f32_model):
    from textlatent.model.gemma import SuffixBuffers

    model = model_from_params(tiny_config(dtype="bfloat16"), cast_params(model_params(f32_model), jnp.bfloat16))
    obs = model.preprocess(make_observation(model.config, batch=2, seed=16))
    cache, _ = model.encode_prefix(obs)
    weights = model.PaliGemma.llm.layer_weights([1])
    x = jax.random.normal(jax.random.key(8), (2, model.config.action_horizon, model.config.action_dim))
    time = jnp.full((2,), 0.3)
    buffers = SuffixBuffers.from_cache(cache.kv, model.config.action_horizon + 1)
    expected, (k, v) = model._velocity(obs, cache.mask, cache.kv, x, time, weights)
    got, written = model._velocity(obs, cache.mask, buffers, x, time, weights)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))
    # The buffers now hold what the concatenation made: the prefix's keys, then the suffix's.
    np.testing.assert_array_equal(np.asarray(jnp.stack(written.k), np.float32), np.asarray(k, np.float32))
    np.testing.assert_array_equal(np.asarray(jnp.stack(written.v), np.float32), np.asarray(v, np.float32))
    with pytest.raises(ValueError, match="SuffixBuffers need layer_weights"):
        model._velocity(obs, cache.mask, buffers, x, time, None)


def test_siglip_layer_weights_pad_the_hidden_width_with_units_that_add_nothing():
    from textlatent.model.config import SiglipConfig
    from textlatent.model.siglip import Transformer

    # A hidden width (40) that is not a multiple of 32, as So400m's 4304; biases made non-zero so that a padded unit
    # with a bias, or a misplaced pad, would show in the output.
    encoder = Transformer(SiglipConfig(width=32, depth=2, mlp_dim=40, num_heads=2, patch_size=14), nnx.Rngs(4))
    mlp = encoder.encoderblock.MlpBlock_0
    for dense in (mlp.Dense_0, mlp.Dense_1):
        dense.bias.set_value(jax.random.normal(jax.random.key(5), dense.bias[...].shape))
    x = jax.random.normal(jax.random.key(6), (2, 8, 32))
    padded, plain = encoder.layer_weights(), encoder.layer_weights(hidden_multiple=1)
    shapes = {leaf.shape for leaf in jax.tree.leaves(padded.per_layer[0])}
    assert {(32, 64), (64,), (64, 32)} <= shapes and not {(32, 40), (40,), (40, 32)} & shapes
    assert mlp.Dense_0.kernel[...].shape == (2, 32, 40)  # the model's own parameters are left as they are
    expected = encoder(x, jnp.float32)
    np.testing.assert_allclose(encoder(x, jnp.float32, padded), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder(x, jnp.float32, plain), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="hidden_multiple"):
        encoder.layer_weights(hidden_multiple=0)


@pytest.mark.parametrize(
    "x",
    [
        np.asarray([[1.5, -0.0, np.nan], [np.inf, -np.inf, 3.0]], np.float32),
        np.asarray(jax.random.normal(jax.random.key(7), (2, 5, 7), jnp.bfloat16)),
        np.asarray([-0.0], np.float32),
    ],
    ids=["special-values", "bf16", "one-element"],
)
def test_command_buffer_break_returns_its_input_bit_for_bit(x):
    got = np.asarray(jax.jit(ops.command_buffer_break)(x))
    bits = np.uint16 if x.dtype.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(got.view(bits), x.view(bits))  # NaN, inf and -0.0 included
    # The convolution that ends a GPU command buffer is still there after XLA's simplifications.
    assert "convolution(" in jax.jit(ops.command_buffer_break).lower(x).compile().as_text()


def test_siglip_command_buffer_breaks_keep_the_actions_bit_for_bit(f32_model):
    config = f32_model.config
    broken = _with(f32_model, siglip_command_buffer_breaks=(0,))
    assert broken.PaliGemma.img.Transformer.command_buffer_breaks == (0,)
    obs = make_observation(config, batch=2, seed=12)
    noise = jax.random.normal(jax.random.key(8), (2, config.action_horizon, config.action_dim))
    expected = _sample(f32_model, obs, noise, f32_model.layer_weights())
    np.testing.assert_array_equal(_sample(broken, obs, noise, broken.layer_weights()), expected)

    def convolutions(model):
        graphdef, state = nnx.split(model)
        weights = model.layer_weights()
        run = jax.jit(lambda s, w: nnx.merge(graphdef, s).sample_actions(None, obs, noise=noise, layer_weights=w))
        return run.lower(state, weights).compile().as_text().count("convolution(")

    # One break in each SigLIP pass, beside its patch embedding (one pass per camera without one_image_pass).
    assert convolutions(broken) == 2 * convolutions(f32_model)
    # A rebuilt model with the option gets the breaks; the scan over stacked weights has none to place.
    assert f32_model.with_config(broken.config).PaliGemma.img.Transformer.command_buffer_breaks == (0,)


@pytest.mark.parametrize("breaks", [(26,), (-1,), [1], (1.0,)])
def test_siglip_command_buffer_breaks_must_name_blocks_before_the_last(breaks):
    with pytest.raises(ValueError, match=r"siglip_command_buffer_breaks must be a tuple of SigLIP block indices"):
        Pi0Config(siglip_command_buffer_breaks=breaks)
    assert Pi0Config(siglip_command_buffer_breaks=(1, 4, 13)).siglip_command_buffer_breaks == (1, 4, 13)
