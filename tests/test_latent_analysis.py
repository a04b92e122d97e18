"""Latent analysis: values against direct numpy formulas, patch-grid order against the model, PNGs that open."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.conftest import libero_obs, load_libero_policy, make_observation
from textlatent.latents import TextLatent, analysis
from textlatent.tokenizer import PaligemmaTokenizer

RNG = np.random.default_rng(0)


def _latent(layers=3, slots=4, width=8, seed=0, prompt="put the bowl on the plate", **metadata) -> TextLatent:
    rng = np.random.default_rng(seed)
    return TextLatent(
        rng.normal(size=(layers, slots, width)).astype(np.float32),
        np.arange(2, 2 + slots),
        prompt,
        dict(metadata),
    )


# ------------------------------------------------------------------------------------------------ latents alone
def test_latent_norms_are_l2_over_width():
    latent = _latent(layers=3, slots=5, width=7)
    norms = analysis.latent_norms(latent)
    assert norms.shape == (3, 5)
    for l in range(3):
        for s in range(5):
            assert norms[l, s] == pytest.approx(np.sqrt(np.sum(latent.states[l, s].astype(np.float64) ** 2)))


def test_describe_lists_prompt_shape_metadata_and_layer_norms():
    latent = _latent(layers=3, slots=4, width=8, frames=240, checkpoint="pi0_libero@abc")
    text = analysis.describe(latent, name="plate")
    assert "name: plate" in text
    assert "'put the bowl on the plate'" in text
    assert "3 layers × 4 slots × 8 width" in text
    assert "frames: 240" in text and 'checkpoint: "pi0_libero@abc"' in text
    for l in range(3):
        mean = np.linalg.norm(latent.states[l].astype(np.float64), axis=-1).mean()
        assert f"layer {l:2d}: {mean:.4g}" in text


def _cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_cosine_matrix_matches_formula_on_default_layers_and_common_slots():
    latents = {"a": _latent(4, 4, 6, seed=1), "b": _latent(4, 6, 6, seed=2), "c": _latent(4, 5, 6, seed=3)}
    names, matrix = analysis.cosine_matrix(latents)
    assert names == ["a", "b", "c"]
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            # Defaults: layers 1..L-1, slots 0..min-1 (4 here).
            expected = _cosine(latents[x].states[1:, :4], latents[y].states[1:, :4])
            assert matrix[i, j] == pytest.approx(expected, abs=1e-12)
    names, chosen = analysis.cosine_matrix(latents, layers=[0, 2], slots=[1, 3])
    expected = _cosine(latents["a"].states[np.ix_([0, 2], [1, 3])], latents["c"].states[np.ix_([0, 2], [1, 3])])
    assert chosen[0, 2] == pytest.approx(expected, abs=1e-12)


def test_cosine_matrix_ignores_layer_0_by_default():
    a = _latent(3, 4, 8, seed=4)
    states = a.states.copy()
    states[0] = RNG.normal(size=states[0].shape)  # differ only in the token embeddings
    b = TextLatent(states, a.token_ids, a.prompt)
    _, matrix = analysis.cosine_matrix({"a": a, "b": b})
    assert matrix[0, 1] == pytest.approx(1.0, abs=1e-9)
    _, with_layer0 = analysis.cosine_matrix({"a": a, "b": b}, layers=[0, 1, 2])
    assert with_layer0[0, 1] < 0.99


def test_cosine_matrix_rejects_latents_of_different_models():
    with pytest.raises(ValueError, match="disagree"):
        analysis.cosine_matrix({"a": _latent(3, 4, 8), "b": _latent(3, 4, 16)})
    with pytest.raises(ValueError, match="out of range"):
        analysis.cosine_matrix({"a": _latent(3, 4, 8), "b": _latent(3, 2, 8)}, slots=[3])


# ------------------------------------------------------------------------------------- pure patch-map formulas
def test_patch_grid_is_row_major_per_camera():
    grid = analysis.patch_grid(np.arange(2 * 3 * 4), num_cameras=2, grid=(3, 4))
    assert grid.shape == (2, 3, 4)
    for c in range(2):
        for i in range(3):
            for j in range(4):
                assert grid[c, i, j] == c * 12 + i * 4 + j


def test_prompt_to_image_mass_matches_formula():
    layers, heads, queries, cams, grid, text = 2, 3, 5, 2, (2, 3), 4
    keys = cams * grid[0] * grid[1] + text
    logits = RNG.normal(size=(layers, heads, queries, keys))
    attention = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    got = analysis.prompt_to_image_mass(attention, weights, cams, grid)
    assert got.shape == (layers, cams, *grid)
    for l in range(layers):
        for c in range(cams):
            for i in range(grid[0]):
                for j in range(grid[1]):
                    key = c * 6 + i * 3 + j
                    expected = np.mean([attention[l, h, q, key] for h in range(heads) for q in (0, 2, 3)])
                    assert got[l, c, i, j] == pytest.approx(expected, rel=1e-6)
    # What the image does not get, the prompt tokens do: image mass + text mass = 1 per chosen query.
    text_mass = attention[..., -text:][:, :, [0, 2, 3]].sum(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)) + text_mass, 1.0, rtol=1e-6)


def test_cosine_to_patches_matches_formula():
    layers, cams, grid, width = 2, 2, (2, 2), 5
    reference = RNG.normal(size=(layers, width))
    patches = RNG.normal(size=(layers, cams * 4, width))
    got = analysis.cosine_to_patches(reference, patches, cams, grid)
    for l in range(layers):
        for c in range(cams):
            for i in range(2):
                for j in range(2):
                    expected = _cosine(reference[l], patches[l, c * 4 + i * 2 + j])
                    assert got[l, c, i, j] == pytest.approx(expected, abs=1e-6)


def test_upsample_nearest_gives_each_pixel_its_patch():
    grid_map = np.arange(16.0).reshape(4, 4)
    up = analysis.upsample_nearest(grid_map, 56, 56)
    assert up.shape == (56, 56)
    assert up[20, 50] == grid_map[1, 3]  # pixel row 20 is patch row 1 (14 px patches), column 50 is patch column 3
    assert up[55, 0] == grid_map[3, 0]


# --------------------------------------------------------------------------------------------- on the tiny model
def test_prompt_to_image_attention_aggregates_prefix_attention(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=2, seed=3, prompt_lens=(5, 9))
    maps = analysis.prompt_to_image_attention(model, obs, layers=[0, 2], token=[1, 4], batch_index=1)
    attention = np.asarray(model.prefix_attention(obs, model.text_positions([1, 4])))[:, 1]  # [depth, N, 2, P]
    n, (gh, gw) = config.tokens_per_image, (4, 4)
    assert maps.values.shape == (2, 3, gh, gw)
    assert maps.layers == (0, 2) and maps.query_slots == (1, 4) and maps.kind == "attention"
    for k, l in enumerate((0, 2)):
        for c in range(3):
            for i in range(gh):
                for j in range(gw):
                    expected = attention[l, :, :, c * n + i * gw + j].mean()
                    assert maps.values[k, c, i, j] == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert np.all(maps.layer(2)[2] == 0.0)  # the masked third camera receives no attention
    assert maps.layer(2)[:2].sum() > 0.05
    assert maps.images.shape == (3, 56, 56, 3) and maps.images.dtype == np.uint8


def test_prompt_to_image_attention_rejects_padding_slots(f32_model):
    obs = make_observation(f32_model.config, batch=1, prompt_lens=(5,))
    with pytest.raises(ValueError, match="valid prompt tokens"):
        analysis.prompt_to_image_attention(f32_model, obs, layers=1, token=7)


def _one_patch_changed(config, seed, camera_index, row, col):
    """An observation and a copy in which only patch (row, col) of one camera differs."""
    obs = make_observation(config, batch=1, seed=seed)
    key = config.image_keys[camera_index]
    image = np.asarray(obs.images[key]).copy()
    image[0, row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14] = 1.0
    return obs, obs.replace(images={**obs.images, key: jnp.asarray(image)})


def test_alignment_grid_cell_of_a_changed_patch(f32_model):
    """Only patch (row 1, column 3) of the base camera changes; the map changes most in that cell, not in the
    transposed one, and the other cameras do not change at layer 0 (SigLIP encodes cameras separately)."""
    model, config = f32_model, f32_model.config
    obs, changed = _one_patch_changed(config, seed=4, camera_index=0, row=1, col=3)
    before = analysis.prompt_to_image_alignment(model, obs, layers=[0, 1])
    after = analysis.prompt_to_image_alignment(model, changed, layers=[0, 1])
    for layer in (0, 1):
        diff = np.abs(after.layer(layer) - before.layer(layer))  # [cams, 4, 4]
        assert np.unravel_index(np.nanargmax(diff), diff.shape) == (0, 1, 3), f"layer {layer}"
    np.testing.assert_array_equal(after.layer(0)[1], before.layer(0)[1])
    assert np.all(np.isnan(before.values[:, 2]))  # masked camera: undefined


def test_alignment_with_a_latent_equal_to_one_patch_peaks_there(f32_model):
    model, config = f32_model, f32_model.config
    obs = make_observation(config, batch=1, seed=5)
    # A "latent" whose layer-2 state is the residual of camera 1, patch (2, 0): cosine 1 in exactly that cell.
    target = 1 * config.tokens_per_image + 2 * 4 + 0
    residuals = np.asarray(model.prefix_residuals(obs, np.arange(config.text_start)))[:, 0]  # [depth, img, D]
    states = RNG.normal(size=(config.paligemma.depth, 3, config.paligemma.width)).astype(np.float32)
    states[2, 1] = residuals[2, target]
    latent = TextLatent(states, np.array([2, 7, 9]), "x")
    maps = analysis.prompt_to_image_alignment(model, obs, layers=2, token=1, latent=latent)
    grid_map = maps.layer(2)
    assert grid_map[1, 2, 0] == pytest.approx(1.0, abs=1e-5)
    finite = np.where(np.isfinite(grid_map), grid_map, -np.inf)
    assert np.unravel_index(np.argmax(finite), grid_map.shape) == (1, 2, 0)


def test_word_selection_through_the_policy_tokenizer(libero_checkpoint, tokenizer_path):
    policy = load_libero_policy(libero_checkpoint, tokenizer_path)
    request = libero_obs(seed=1, prompt="put the cream cheese in the bowl")
    by_word = analysis.prompt_to_image_attention(policy, request, layers=1, token="cream cheese")
    tokenizer = policy.transforms.tokenizer
    ids = tokenizer.encode("put the cream cheese in the bowl")
    assert tokenizer.decode([ids[s] for s in by_word.query_slots]).strip() == "cream cheese"
    by_slots = analysis.prompt_to_image_attention(policy, request, layers=1, token=list(by_word.query_slots))
    np.testing.assert_array_equal(by_word.values, by_slots.values)
    everything = analysis.prompt_to_image_attention(policy, request, layers=1)
    assert everything.query_slots == tuple(range(len(ids)))
    assert not np.allclose(everything.values, by_word.values)


def test_find_word_slots_respects_word_boundaries(tokenizer_path):
    tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=16)
    ids = tokenizer.encode("put the bowl on the plate")
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    (bowl,) = analysis.find_word_slots(ids, "bowl", tokenizer)
    assert pieces[bowl] == "▁bowl"
    assert analysis.find_word_slots(ids, "the", tokenizer) == [pieces.index("▁the")]  # first occurrence
    assert analysis.find_word_slots(ids, "PUT", tokenizer) == [1]  # first word (no "▁"), case-insensitive
    with pytest.raises(ValueError, match="not a word of the prompt"):
        analysis.find_word_slots(ids, "bow", tokenizer)


# ------------------------------------------------------------------------------------------------------- figures
def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_plot_cosine_matrix_writes_png_of_documented_size(tmp_path):
    latents = {f"task_{i}": _latent(3, 4, 8, seed=i) for i in range(4)}
    names, matrix = analysis.cosine_matrix(latents)
    path = analysis.plot_cosine_matrix(names, matrix, tmp_path / "figs" / "cos.png", dpi=50)
    n = 4
    assert _png_size(path) == (round((2.5 + 0.6 * n) * 50), round((1.5 + 0.6 * n) * 50))
    with pytest.raises(ValueError, match="names"):
        analysis.plot_cosine_matrix(names[:3], matrix, tmp_path / "bad.png")


def test_plot_attention_overlay_blends_the_map_over_the_image(tmp_path):
    image = RNG.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    hot_top_left, hot_bottom_right = np.zeros((4, 4)), np.zeros((4, 4))
    hot_top_left[0, 0] = hot_bottom_right[3, 3] = 1.0
    a = analysis.plot_attention_overlay(image, hot_top_left, tmp_path / "a.png", "layer 3, 'bowl'")
    b = analysis.plot_attention_overlay(image, hot_bottom_right, tmp_path / "b.png", "layer 3, 'bowl'")
    expected = tuple(round(s * analysis.DPI) for s in analysis.OVERLAY_FIGSIZE)
    assert _png_size(a) == _png_size(b) == expected
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_plot_patch_maps_draws_every_camera(f32_model, tmp_path):
    obs = make_observation(f32_model.config, batch=1, seed=6)
    maps = analysis.prompt_to_image_attention(f32_model, obs, layers=1)
    path = analysis.plot_patch_maps(maps, 1, tmp_path / "maps.png", dpi=40)
    cams = len(maps.camera_keys)
    expected = (round((analysis.PANEL_WIDTH * cams + 1.0) * 40), round(analysis.PANEL_HEIGHT * 40))
    assert _png_size(path) == expected
    with pytest.raises(KeyError, match="layer 0 was not computed"):
        maps.layer(0)
