"""Looking at text latents: norms, how similar task latents are, and where the prompt looks in the images.

The last part is the paper's "spatial overfitting" view. Two maps over the image patches of every camera, per layer:

- **attention**: the attention probability that prompt tokens put on each image patch (from ``Pi0.prefix_attention``);
- **alignment**: the cosine similarity between a prompt vector (a stored latent's state, or the prompt tokens'
  residual stream) and each patch's residual stream at that layer (from ``Pi0.prefix_residuals``).

Both come back as a ``PatchMaps`` of shape [layers, cameras, grid_h, grid_w] (16×16 for 224 px images and 14 px
patches). Grid cell (i, j) is image token ``i·grid_w + j`` of its camera: SigLIP flattens its patch grid row-major.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from textlatent.latents.latent import TextLatent
from textlatent.model import Observation, Pi0

if TYPE_CHECKING:
    from textlatent.policy import Policy
    from textlatent.tokenizer import PaligemmaTokenizer

DPI = 100
# Figure sizes in inches; PNG pixels = inches × dpi.
OVERLAY_FIGSIZE = (5.0, 4.4)
PANEL_WIDTH, PANEL_HEIGHT = 4.0, 4.4

# Which prompt tokens a map uses: None (all valid prompt tokens), a slot, several slots, or a word of the prompt.
TokenSelection = int | Sequence[int] | str | None


# --------------------------------------------------------------------------------------------- latents on their own
def latent_norms(latent: TextLatent) -> np.ndarray:
    """L2 norm of every stored state: float64 [layers, slots]."""
    return np.linalg.norm(latent.states.astype(np.float64), axis=-1)


def describe(latent: TextLatent, name: str | None = None, tokenizer: PaligemmaTokenizer | None = None) -> str:
    """A human-readable summary: prompt, shape, tokens, metadata and the mean state norm of each layer."""
    lines = []
    if name is not None:
        lines.append(f"name: {name}")
    lines.append(f"prompt: {latent.prompt!r}")
    lines.append(
        f"shape: {latent.num_layers} layers × {latent.num_slots} slots × {latent.width} width ({latent.states.dtype})"
    )
    lines.append(f"token ids: {latent.token_ids.tolist()}")
    if tokenizer is not None:
        lines.append(f"token pieces: {[tokenizer.id_to_piece(i) for i in latent.token_ids]}")
    if latent.metadata:
        lines.append("metadata:")
        lines.extend(f"  {key}: {json.dumps(value)}" for key, value in latent.metadata.items())
    else:
        lines.append("metadata: (none)")
    lines.append("mean L2 norm per layer (over slots):")
    for layer, norm in enumerate(latent_norms(latent).mean(axis=1)):
        lines.append(f"  layer {layer:2d}: {norm:.4g}")
    return "\n".join(lines)


def cosine_matrix(
    latents: Mapping[str, TextLatent],
    layers: Sequence[int] | None = None,
    slots: Sequence[int] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Cosine similarity between task latents, each flattened over ``layers`` × ``slots`` × width.

    Defaults: layers 1 … L-1 (layer 0 is the token embedding, identical for identical words) and the slots all
    latents have (0 … min slots - 1). Returns (names in the mapping's order, float64 [n, n]).
    """
    names = list(latents)
    if not names:
        raise ValueError("cosine_matrix needs at least one latent")
    shapes = {(lat.num_layers, lat.width) for lat in latents.values()}
    if len(shapes) != 1:
        raise ValueError(f"latents disagree on (layers, width): {sorted(shapes)}; they come from different models")
    num_layers, _ = shapes.pop()
    min_slots = min(lat.num_slots for lat in latents.values())
    layers = list(range(1, num_layers)) if layers is None else [int(l) for l in layers]
    slots = list(range(min_slots)) if slots is None else [int(s) for s in slots]
    if not layers or not slots:
        raise ValueError(f"no layers ({layers}) or no slots ({slots}) to compare")
    if not all(0 <= l < num_layers for l in layers):
        raise ValueError(f"layers {layers} out of range for latents with {num_layers} layers")
    if not all(0 <= s < min_slots for s in slots):
        raise ValueError(f"slots {slots} out of range: the shortest latent has {min_slots} slots")
    vectors = np.stack([latents[name].states[np.ix_(layers, slots)].astype(np.float64).reshape(-1) for name in names])
    norms = np.linalg.norm(vectors, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"latents {[n for n, z in zip(names, norms == 0, strict=True) if z]} are zero there")
    unit = vectors / norms[:, None]
    return names, np.clip(unit @ unit.T, -1.0, 1.0)


def plot_cosine_matrix(
    names: Sequence[str], matrix: np.ndarray, path: str | os.PathLike, title: str | None = None, *, dpi: int = DPI
) -> pathlib.Path:
    """Heatmap of a cosine matrix with names on both axes and the value in each cell, as a PNG.

    The figure is ``(2.5 + 0.6·n) × (1.5 + 0.6·n)`` inches (width × height), i.e. that times ``dpi`` pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, np.float64)
    n = len(names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix has shape {matrix.shape} but there are {n} names")
    fig = Figure(figsize=(2.5 + 0.6 * n, 1.5 + 0.6 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Latent cosines cluster near 1; a colour scale over the data range shows their differences.
    low = float(np.nanmin(matrix))
    image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=max(1.0, low + 1e-6))
    ax.set_xticks(range(n), labels=list(names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(names), fontsize=8)
    middle = (low + 1.0) / 2
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if matrix[i, j] > middle else "white",
            )  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title or "cosine similarity of text latents")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- maps over patches
@dataclasses.dataclass(frozen=True)
class PatchMaps:
    """Values over the image patches of every camera, per layer."""

    values: np.ndarray
    """float32 [layers, cameras, grid_h, grid_w]; NaN where a map is undefined (alignment on a masked camera)."""
    layers: tuple[int, ...]
    camera_keys: tuple[str, ...]
    query_slots: tuple[int, ...]
    """Prompt slots the maps come from (of the observation's prompt, or of the latent for latent alignment)."""
    images: np.ndarray
    """uint8 [cameras, H, W, 3]: the camera images as the model saw them (resized), for overlays."""
    kind: str
    """"attention" or "alignment"."""

    def layer(self, layer: int) -> np.ndarray:
        """[cameras, grid_h, grid_w] of one layer (by model layer index, not by position in ``layers``)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not computed; have {list(self.layers)}")
        return self.values[self.layers.index(layer)]


def patch_grid(per_patch: np.ndarray, num_cameras: int, grid: tuple[int, int]) -> np.ndarray:
    """[..., cameras·grid_h·grid_w] (image tokens in prefix order) → [..., cameras, grid_h, grid_w]."""
    per_patch = np.asarray(per_patch)
    expected = num_cameras * grid[0] * grid[1]
    if per_patch.shape[-1] != expected:
        raise ValueError(f"expected {expected} image tokens ({num_cameras} cameras × {grid}), got {per_patch.shape}")
    # Row-major within a camera: the order in which SigLIP flattens its conv output [h, w] to tokens.
    return per_patch.reshape(*per_patch.shape[:-1], num_cameras, *grid)


def prompt_to_image_mass(
    attention: np.ndarray, query_weights: np.ndarray, num_cameras: int, grid: tuple[int, int]
) -> np.ndarray:
    """Attention mass from prompt tokens to each image patch.

    attention: [layers, heads, Q, P] probabilities of one observation (P keys, image tokens first).
    query_weights: [Q] weight of each query (1 for the chosen valid prompt tokens, 0 otherwise).
    Returns float32 [layers, cameras, grid_h, grid_w] = Σ_q w_q · mean_h attention[l, h, q, patch] / Σ_q w_q:
    the share of a chosen prompt token's attention, averaged over heads and chosen tokens, that lands on the patch.
    """
    attention = np.asarray(attention, np.float64)
    weights = np.asarray(query_weights, np.float64)
    if attention.ndim != 4 or weights.shape != (attention.shape[2],):
        raise ValueError(f"attention [layers, heads, Q, P] {attention.shape} and query_weights [Q] {weights.shape}")
    if weights.sum() <= 0:
        raise ValueError("no query token selected (all query weights are 0)")
    num_image_tokens = num_cameras * grid[0] * grid[1]
    per_key = np.einsum("lhqp,q->lp", attention[..., :num_image_tokens], weights) / (attention.shape[1] * weights.sum())
    return patch_grid(per_key, num_cameras, grid).astype(np.float32)


def cosine_to_patches(
    reference: np.ndarray, patch_states: np.ndarray, num_cameras: int, grid: tuple[int, int]
) -> np.ndarray:
    """Cosine similarity between one vector per layer and every image patch's state at that layer.

    reference: [layers, D]; patch_states: [layers, cameras·grid_h·grid_w, D]. Returns float32
    [layers, cameras, grid_h, grid_w].
    """
    reference = np.asarray(reference, np.float64)
    patch_states = np.asarray(patch_states, np.float64)
    if reference.ndim != 2 or patch_states.ndim != 3 or patch_states.shape[::2] != reference.shape:
        raise ValueError(f"reference [layers, D] {reference.shape} vs patch_states [layers, N, D] {patch_states.shape}")
    dots = np.einsum("ld,lnd->ln", reference, patch_states)
    norms = np.linalg.norm(reference, axis=-1)[:, None] * np.linalg.norm(patch_states, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / norms, np.nan)
    return patch_grid(cosine, num_cameras, grid).astype(np.float32)


def find_word_slots(token_ids: Sequence[int], word: str, tokenizer: PaligemmaTokenizer) -> list[int]:
    """Slots of the first occurrence of ``word`` (one or more words, e.g. "cream cheese") among ``token_ids``.

    Matching is on SentencePiece pieces, case-insensitive, at word boundaries: the run must start a word (its
    first piece begins with "▁", or follows BOS) and end one (the next piece begins with "▁" or is not text).
    """
    target = "".join(word.lower().split())
    if not target:
        raise ValueError("the word to look for is empty")
    pieces = [tokenizer.id_to_piece(int(i)) for i in token_ids]
    texts = [p.replace("▁", "").lower() for p in pieces]

    def is_word_piece(slot: int) -> bool:
        return slot < len(pieces) and pieces[slot] not in ("<s>", "</s>", "<pad>", "\n") and texts[slot] != ""

    def starts_word(slot: int) -> bool:
        return pieces[slot].startswith("▁") or slot == 0 or not is_word_piece(slot - 1)

    for start in range(len(pieces)):
        if not (is_word_piece(start) and starts_word(start)):
            continue
        joined, end = "", start
        while end < len(pieces) and is_word_piece(end) and len(joined) < len(target):
            joined += texts[end]
            end += 1
        if joined == target and (not is_word_piece(end) or starts_word(end)):
            return list(range(start, end))
    raise ValueError(f"{word!r} is not a word of the prompt; its pieces are {pieces}")


def _prefix_attention_fn(graphdef, state, obs: Observation, query_positions: jax.Array, layer_weights) -> jax.Array:
    return nnx.merge(graphdef, state).prefix_attention(obs, query_positions, layer_weights=layer_weights)


def _prefix_residuals_fn(graphdef, state, obs: Observation, positions: jax.Array, layer_weights) -> jax.Array:
    return nnx.merge(graphdef, state).prefix_residuals(obs, positions, layer_weights=layer_weights)


# Jitted once per model structure: the graphdef is static (hashable), the weights are an argument, as in Policy.
_prefix_attention = jax.jit(_prefix_attention_fn, static_argnums=0)
_prefix_residuals = jax.jit(_prefix_residuals_fn, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class _Inputs:
    model: Pi0
    obs: Observation  # preprocessed: images at model resolution in image_keys order, masks filled
    tokenizer: PaligemmaTokenizer | None
    batch_index: int
    layer_weights: Any = None  # a policy's per-layer weights (``Policy.layer_weights``): its model keeps no stacks

    @property
    def grid(self) -> tuple[int, int]:
        patch = self.model.config.siglip.patch_size
        height, width = self.model.config.image_resolution
        return height // patch, width // patch

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(self.model.config.image_keys)

    def prompt_ids(self) -> np.ndarray:
        return np.asarray(self.obs.tokenized_prompt)[self.batch_index]

    def prompt_mask(self) -> np.ndarray:
        return np.asarray(self.obs.tokenized_prompt_mask)[self.batch_index].astype(bool)

    def camera_valid(self) -> np.ndarray:
        return np.array([bool(np.asarray(self.obs.image_masks[k])[self.batch_index]) for k in self.camera_keys])

    def images_uint8(self) -> np.ndarray:
        """[cameras, H, W, 3] from the model's [-1, 1] float images."""
        images = np.stack([np.asarray(self.obs.images[k], np.float32)[self.batch_index] for k in self.camera_keys])
        return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _inputs(
    policy_or_model: Policy | Pi0,
    observation: Observation | dict,
    tokenizer: PaligemmaTokenizer | None,
    batch_index: int,
) -> _Inputs:
    from textlatent.policy import Policy

    layer_weights = None
    if isinstance(policy_or_model, Policy):
        model, layer_weights = policy_or_model.model, policy_or_model.layer_weights
        tokenizer = tokenizer if tokenizer is not None else policy_or_model.transforms.tokenizer
        if not isinstance(observation, Observation):
            observation, _, _ = policy_or_model.prepare(observation)  # a request dict, as for ``infer``
    elif isinstance(policy_or_model, Pi0):
        model = policy_or_model
        if not isinstance(observation, Observation):
            raise TypeError("with a bare Pi0 model, pass an Observation (a request dict needs the policy's transforms)")
    else:
        raise TypeError(f"expected a Policy or a Pi0 model, got {type(policy_or_model).__name__}")
    if observation.tokenized_prompt is None:
        raise ValueError("the observation has no prompt; prompt-to-image maps need one")
    obs = model.preprocess(observation)
    batch = obs.state.shape[0]
    if not 0 <= batch_index < batch:
        raise ValueError(f"batch_index {batch_index} out of range for a batch of {batch}")
    return _Inputs(model, obs, tokenizer, batch_index, layer_weights)


def _layers(layers: int | Sequence[int] | None, depth: int) -> list[int]:
    chosen = list(range(depth)) if layers is None else [layers] if isinstance(layers, int) else [int(l) for l in layers]
    if not chosen or not all(0 <= l < depth for l in chosen):
        raise ValueError(f"layers {chosen} must be a non-empty selection of 0 … {depth - 1}")
    return chosen


def _select_slots(
    token: TokenSelection, token_ids: np.ndarray, valid: np.ndarray, tokenizer: PaligemmaTokenizer | None
) -> list[int]:
    """Prompt slots chosen by ``token`` among the valid ones (see ``TokenSelection``)."""
    if token is None:
        slots = np.flatnonzero(valid).tolist()
    elif isinstance(token, str):
        if tokenizer is None:
            raise ValueError("selecting a prompt token by word needs a tokenizer (pass tokenizer= or a Policy)")
        slots = find_word_slots(token_ids[valid], token, tokenizer)
        slots = np.flatnonzero(valid)[slots].tolist()
    else:
        slots = [int(token)] if isinstance(token, (int, np.integer)) else [int(s) for s in token]
    bad = [s for s in slots if not (0 <= s < len(valid) and valid[s])]
    if not slots or bad:
        raise ValueError(f"prompt slots {slots} must be non-empty and valid prompt tokens (valid: {valid.tolist()})")
    return slots


def prompt_to_image_attention(
    policy_or_model: Policy | Pi0,
    observation: Observation | dict,
    layers: int | Sequence[int] | None = None,
    token: TokenSelection = None,
    *,
    tokenizer: PaligemmaTokenizer | None = None,
    batch_index: int = 0,
) -> PatchMaps:
    """Attention mass from prompt tokens to each image patch, per layer (see ``prompt_to_image_mass``).

    Args:
      policy_or_model: a ``Policy`` (``observation`` may then be a request dict, and its tokenizer finds words) or
        a ``Pi0`` (``observation`` must be an ``Observation``).
      layers: a layer, several, or None for all.
      token: None for all valid prompt tokens, a prompt slot (0 = BOS) or several, or a word of the prompt
        (e.g. an object name), found through the tokenizer.
      batch_index: which row of a batched observation to map.

    Returns PatchMaps with values [layers, cameras, grid_h, grid_w]; masked cameras get 0 (no attention reaches them).
    """
    inputs = _inputs(policy_or_model, observation, tokenizer, batch_index)
    model, config = inputs.model, inputs.model.config
    chosen_layers = _layers(layers, config.paligemma.depth)
    slots = _select_slots(token, inputs.prompt_ids(), inputs.prompt_mask(), inputs.tokenizer)
    # Every prompt slot is queried (one compile per model), then the chosen ones are weighted in.
    all_slots = np.arange(config.max_token_len)
    graphdef, state = nnx.split(model)
    attention = _prefix_attention(graphdef, state, inputs.obs, model.text_positions(all_slots), inputs.layer_weights)
    attention = np.asarray(attention)[chosen_layers, batch_index]  # [layers, heads, Q, P]
    weights = np.isin(all_slots, slots).astype(np.float64)
    values = prompt_to_image_mass(attention, weights, len(inputs.camera_keys), inputs.grid)
    return PatchMaps(
        values=values,
        layers=tuple(chosen_layers),
        camera_keys=inputs.camera_keys,
        query_slots=tuple(slots),
        images=inputs.images_uint8(),
        kind="attention",
    )


def prompt_to_image_alignment(
    policy_or_model: Policy | Pi0,
    observation: Observation | dict,
    layers: int | Sequence[int] | None = None,
    token: TokenSelection = None,
    *,
    latent: TextLatent | None = None,
    tokenizer: PaligemmaTokenizer | None = None,
    batch_index: int = 0,
) -> PatchMaps:
    """Cosine similarity between a prompt vector and each image patch's residual stream, per layer.

    The prompt vector at layer l is the mean over the chosen slots of ``latent.states[l]`` if a latent is given
    (``token`` then selects among the latent's slots and words), else of the observation's own prompt-token
    residual stream at layer l. Patch states are the residual stream entering block l at the image tokens.
    Arguments as ``prompt_to_image_attention``. Masked cameras get NaN.
    """
    inputs = _inputs(policy_or_model, observation, tokenizer, batch_index)
    model, config = inputs.model, inputs.model.config
    depth, width = config.paligemma.depth, config.paligemma.width
    chosen_layers = _layers(layers, depth)
    num_image_tokens = config.text_start
    positions = np.concatenate(
        [np.arange(num_image_tokens), np.asarray(model.text_positions(np.arange(config.max_token_len)))]
    )
    graphdef, state = nnx.split(model)
    residuals = _prefix_residuals(graphdef, state, inputs.obs, jnp.asarray(positions), inputs.layer_weights)
    residuals = np.asarray(residuals, np.float32)
    residuals = residuals[chosen_layers, batch_index]  # [layers, image tokens + prompt slots, D]
    patch_states, prompt_states = residuals[:, :num_image_tokens], residuals[:, num_image_tokens:]

    if latent is not None:
        if latent.width != width or latent.num_layers <= max(chosen_layers):
            raise ValueError(
                f"latent is {latent.num_layers} layers × width {latent.width}; the model needs width {width} and "
                f"layers {chosen_layers}"
            )
        slots = _select_slots(token, latent.token_ids, np.ones(latent.num_slots, bool), inputs.tokenizer)
        reference = latent.states[np.ix_(chosen_layers, slots)].mean(axis=1)
    else:
        slots = _select_slots(token, inputs.prompt_ids(), inputs.prompt_mask(), inputs.tokenizer)
        reference = prompt_states[:, slots].mean(axis=1)

    values = cosine_to_patches(reference, patch_states, len(inputs.camera_keys), inputs.grid)
    values[:, ~inputs.camera_valid()] = np.nan  # the model ignores masked cameras: no alignment to speak of
    return PatchMaps(
        values=values,
        layers=tuple(chosen_layers),
        camera_keys=inputs.camera_keys,
        query_slots=tuple(slots),
        images=inputs.images_uint8(),
        kind="alignment",
    )


# ------------------------------------------------------------------------------------------------------ overlays
def upsample_nearest(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """[grid_h, grid_w] → [height, width]: each pixel takes the value of the patch it lies in."""
    grid_map = np.asarray(grid_map)
    rows = np.arange(height) * grid_map.shape[0] // height
    cols = np.arange(width) * grid_map.shape[1] // width
    return grid_map[rows[:, None], cols[None, :]]


def _draw_overlay(ax, image: np.ndarray, grid_map: np.ndarray, alpha: float, vmin: float, vmax: float, cmap: str):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    grid_map = np.asarray(grid_map, np.float64)
    if grid_map.ndim != 2:
        raise ValueError(f"grid_map must be [grid_h, grid_w], got {grid_map.shape}")
    ax.imshow(image)
    # NaN cells (undefined) stay transparent.
    heat = ax.imshow(
        upsample_nearest(grid_map, *image.shape[:2]), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
        interpolation="nearest",
    )  # fmt: skip
    ax.set_axis_off()
    return heat


def _value_range(values: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(values, np.float64)[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return low, high if high > low else low + 1e-6


def plot_attention_overlay(
    image: np.ndarray,
    grid_map: np.ndarray,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
    dpi: int = DPI,
) -> pathlib.Path:
    """PNG of ``grid_map`` [grid_h, grid_w] upsampled patch-wise to the image uint8 [H, W, 3] and blended over it,
    with a colour bar. ``OVERLAY_FIGSIZE`` inches × ``dpi``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=OVERLAY_FIGSIZE, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    heat = _draw_overlay(ax, image, grid_map, alpha, *_value_range(grid_map), cmap)
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_patch_maps(
    maps: PatchMaps,
    layer: int,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    alpha: float = 0.5,
    cmap: str = "inferno",
    dpi: int = DPI,
) -> pathlib.Path:
    """One PNG with every camera's map of ``layer`` over its image, on a shared colour scale.
    ``(PANEL_WIDTH · cameras + 1) × PANEL_HEIGHT`` inches × ``dpi``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = maps.layer(layer)
    cameras = len(maps.camera_keys)
    fig = Figure(figsize=(PANEL_WIDTH * cameras + 1.0, PANEL_HEIGHT), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cameras, squeeze=False)[0]
    vmin, vmax = _value_range(values)  # shared, so cameras compare
    heat = None
    for ax, key, image, grid_map in zip(axes, maps.camera_keys, maps.images, values, strict=True):
        heat = _draw_overlay(ax, image, grid_map, alpha, vmin, vmax, cmap)
        ax.set_title(key, fontsize=9)
    fig.colorbar(heat, ax=list(axes), fraction=0.02, pad=0.02)
    fig.suptitle(title or f"{maps.kind}, layer {layer}, prompt slots {list(maps.query_slots)}", fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
