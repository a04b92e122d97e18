"""π0: SigLIP + PaliGemma prefix, action-expert suffix, flow matching. openpi's arithmetic, with residual access."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from textlatent.model import ops
from textlatent.model.config import Pi0Config
from textlatent.model.gemma import Gemma, KVCache, LayerWeights, SuffixBuffers
from textlatent.model.intervention import ResidualEdit
from textlatent.model.packing import SMALL_LEAF_SIZE
from textlatent.model.siglip import EncoderWeights, SigLIP

logger = logging.getLogger(__name__)


@struct.dataclass
class Observation:
    """Model inputs, batched. Images are float in [-1, 1] (uint8 is converted by ``from_dict``)."""

    images: dict[str, jax.Array]  # [B, H, W, 3]
    image_masks: dict[str, jax.Array]  # bool[B]
    state: jax.Array  # [B, action_dim]
    tokenized_prompt: jax.Array | None = None  # int[B, L]
    tokenized_prompt_mask: jax.Array | None = None  # bool[B, L]
    absent_cameras: tuple[str, ...] = struct.field(pytree_node=False, default=())
    """Cameras left out of ``images`` because they are masked in every row (see ``compact_observation``): static,
    so each layout compiles once."""

    @classmethod
    def from_dict(cls, data: dict, *, convert_uint8: bool = True) -> Observation:
        """openpi's dict form: ``image``, ``image_mask``, ``state``, ``tokenized_prompt``, ``tokenized_prompt_mask``.

        ``convert_uint8=False`` keeps uint8 images as they are, for a compiled caller that converts them itself
        with ``lookup_pixel_values`` (the same values, without the eager operations here)."""
        if ("tokenized_prompt" in data) != ("tokenized_prompt_mask" in data):
            raise ValueError("tokenized_prompt and tokenized_prompt_mask must be provided together")
        images = {}
        for key, image in data["image"].items():
            if image.dtype == np.uint8 and convert_uint8:
                image = uint8_to_unit_range(image)
            images[key] = image
        return cls(
            images=images,
            image_masks=dict(data.get("image_mask", {})),
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
        )


def uint8_to_unit_range(image) -> jax.Array:
    """uint8 → float32 in [-1, 1] as openpi converts images: eager JAX ops, /255 then *2 then -1, each rounded to
    float32 on the default device. (NumPy rounds x/255 differently, and XLA, compiling the three into one fused
    operation, differently again: either would move bf16 results by an ulp.)"""
    return jnp.asarray(image).astype(jnp.float32) / 255.0 * 2.0 - 1.0


def uint8_pixel_values() -> jax.Array:
    """float32 [256]: ``uint8_to_unit_range`` of every uint8 value, computed by those same eager operations. Each of
    them gives an element the same value whatever the array around it, so looking images up in this table
    (``lookup_pixel_values``, inside a compiled program) reproduces the eager conversion bit for bit, which putting
    the arithmetic itself into the program does not."""
    return uint8_to_unit_range(np.arange(256, dtype=np.uint8))


def lookup_pixel_values(obs: Observation, pixel_values: jax.Array) -> Observation:
    """``obs`` with its uint8 images converted through ``uint8_pixel_values()`` (float images are kept)."""
    images = {k: pixel_values[v] if v.dtype == jnp.uint8 else v for k, v in obs.images.items()}
    return obs.replace(images=images)


@functools.cache
def sampling_times(num_steps: int) -> np.ndarray:
    """float32 [S]: the time of each of openpi's Euler steps (S = num_steps for any practical count). Its sampler
    starts at 1.0, adds ``dt = -1 / num_steps`` in float32 and goes on while ``time >= -dt / 2``: counted here with
    that arithmetic, before tracing, rather than assumed."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    dt = -1.0 / num_steps
    stop, step, times = np.float32(-dt / 2), np.float32(dt), [np.float32(1.0)]
    while times[-1] >= stop:
        times.append(np.float32(times[-1] + step))
    out = np.asarray(times[:-1], np.float32)
    out.flags.writeable = False
    return out


def cameras_masked_in_every_row(images: dict, masks: dict) -> tuple[str, ...]:
    """The cameras of ``images`` whose mask is False in every row, sorted: no valid token sees them. Host masks."""
    return tuple(sorted(k for k, m in masks.items() if k in images and m is not None and not np.any(np.asarray(m))))


def compact_observation(obs: Observation, max_token_len: int, *, min_prompt_len: int = 16) -> Observation:
    """The same observation without the work that cannot change a valid token: cameras masked in every row are
    dropped, and prompt columns past the last valid token are cut to a bucket (min_prompt_len, 2×, …, max_token_len,
    so few shapes compile). Runs on the host with concrete masks.

    Valid tokens see only valid keys, so their values — and the actions — are those of the full layout up to float
    rounding (reductions over fewer exact zeros). Padding tokens attend to every key, so *their* values change: keep
    the full layout where padding states are read (the paper's fixed 9-slot window on shorter prompts)."""
    absent = cameras_masked_in_every_row(obs.images, obs.image_masks)
    images = {k: v for k, v in obs.images.items() if k not in absent}
    masks = {k: v for k, v in obs.image_masks.items() if k not in absent}
    tokens, prompt_mask = obs.tokenized_prompt, obs.tokenized_prompt_mask
    if prompt_mask is not None:
        valid = np.asarray(prompt_mask)
        needed = int(valid.shape[1] - np.argmax(valid[:, ::-1].any(axis=0))) if valid.any() else 1
        length = min_prompt_len
        while length < needed:
            length *= 2
        length = min(length, max_token_len, valid.shape[1])
        tokens, prompt_mask = tokens[:, :length], prompt_mask[:, :length]
    return obs.replace(
        images=images,
        image_masks=masks,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=prompt_mask,
        absent_cameras=tuple(sorted({*obs.absent_cameras, *absent})),
    )


def resize_with_pad(images: jax.Array, height: int, width: int) -> jax.Array:
    """Aspect-preserving bilinear resize then centred padding (−1 for float images, 0 for uint8). [B, h, w, c]."""
    cur_h, cur_w = images.shape[1:3]
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = jax.image.resize(images, (images.shape[0], new_h, new_w, images.shape[3]), method="linear")
    if images.dtype == jnp.uint8:
        resized = jnp.round(resized).clip(0, 255).astype(jnp.uint8)
    elif images.dtype == jnp.float32:
        resized = resized.clip(-1.0, 1.0)
    else:
        raise ValueError(f"unsupported image dtype {images.dtype}; use uint8 or float32")
    pad_h0, rem_h = divmod(height - new_h, 2)
    pad_w0, rem_w = divmod(width - new_w, 2)
    return jnp.pad(
        resized,
        ((0, 0), (pad_h0, pad_h0 + rem_h), (pad_w0, pad_w0 + rem_w), (0, 0)),
        constant_values=0 if images.dtype == jnp.uint8 else -1.0,
    )


class Linear(nnx.Module):
    """``nnx.Linear`` semantics: inputs and parameters promoted to their common dtype."""

    def __init__(self, in_features: int, out_features: int, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.nn.initializers.lecun_normal()(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    @property
    def out_features(self) -> int:
        return self.kernel.shape[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.dense(x, self.kernel[...], self.bias[...])


class PaliGemma(nnx.Module):
    def __init__(self, llm: Gemma, img: SigLIP):
        self.llm = llm
        self.img = img


@struct.dataclass
class PrefixCache:
    """What the suffix needs from one prefix pass: keys/values of every layer and which prefix tokens are valid."""

    kv: KVCache  # each [depth, B, P, K, H]
    mask: jax.Array  # bool[B, P]


KEY_MULTIPLE = 32
"""``aligned_attention`` pads the prefix cache so that the suffix's keys (prefix + suffix) are a multiple of this."""


def pad_keys(cache: PrefixCache, suffix_len: int, multiple: int = KEY_MULTIPLE) -> PrefixCache:
    """``cache`` with masked zero keys/values appended so that ``P + suffix_len`` is a multiple of ``multiple``.

    A masked key's logit is replaced by the mask value, so its softmax weight is exactly 0 and its zero value adds
    exactly 0: the suffix's attention is the same function. Positions are unchanged (they count valid keys)."""
    extra = -(cache.mask.shape[1] + suffix_len) % multiple
    if not extra:
        return cache
    k, v = cache.kv
    widths = [(0, 0)] * k.ndim
    widths[2] = (0, extra)
    return PrefixCache(kv=(jnp.pad(k, widths), jnp.pad(v, widths)), mask=jnp.pad(cache.mask, ((0, 0), (0, extra))))


@struct.dataclass
class ModelLayerWeights:
    """Every layer's weights cut out of the stacks (``Pi0.layer_weights``): SigLIP's blocks and both Gemma streams."""

    img: EncoderWeights
    llm: LayerWeights


class Pi0(nnx.Module):
    def __init__(self, config: Pi0Config, rngs: nnx.Rngs):
        if config.action_dim < 1 or config.action_horizon < 1:
            raise ValueError("action_dim and action_horizon must be positive")
        self.config = config
        prefix_cfg, expert_cfg = config.paligemma, config.action_expert
        llm = Gemma(
            [prefix_cfg, expert_cfg],
            vocab_size=config.vocab_size,
            embed_dtype=config.dtype,
            rngs=rngs,
            unroll_layers=config.unroll_layers,
            token_major_attention=bool(config.aligned_attention),
            flash_attention=bool(config.flash_attention),
        )
        img = SigLIP(
            config.siglip,
            out_width=prefix_cfg.width,
            num_patches=config.tokens_per_image,
            dtype=config.dtype,
            rngs=rngs,
            flash_attention=bool(config.flash_attention),
            command_buffer_breaks=config.siglip_command_buffer_breaks,
        )
        self.PaliGemma = PaliGemma(llm, img)
        width = expert_cfg.width
        self.state_proj = Linear(config.action_dim, width, rngs)
        self.action_in_proj = Linear(config.action_dim, width, rngs)
        self.action_time_mlp_in = Linear(2 * width, width, rngs)
        self.action_time_mlp_out = Linear(width, width, rngs)
        self.action_out_proj = Linear(width, config.action_dim, rngs)

    def with_config(self, config: Pi0Config) -> Pi0:
        """This model's weights (shared, not copied) under ``config``, which may differ only in options that leave
        the parameters as they are (the GPU options, ``unroll_layers``). The modules are built anew, so options read
        when a module is made (the attention layout, flash attention, unrolled layers) take effect, not only those
        read from ``self.config`` at call time."""
        if config == self.config:
            return self
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0))))
        _, state = nnx.split(self)
        # Shapes only: parameters keep the dtype they were loaded in (bf16 checkpoints), whatever the init's.
        expected = {path: a.shape for path, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        found = {path: a.shape for path, a in jax.tree_util.tree_flatten_with_path(state)[0]}
        changed = sorted(
            jax.tree_util.keystr(k) for k in expected.keys() | found.keys() if expected.get(k) != found.get(k)
        )
        if changed:
            raise ValueError(
                f"with_config changes the parameters ({', '.join(changed[:5])}{', …' if len(changed) > 5 else ''}); "
                "only options that keep the weights may change: build a new model for another variant"
            )
        return nnx.merge(graphdef, jax.tree.map(lambda a: a, state))

    # ----------------------------------------------------------------------------------------------- layout helpers
    def text_positions(self, slots) -> jax.Array:
        """Prefix positions of prompt-token slots (slot 0 = BOS)."""
        slots = jnp.asarray(slots, jnp.int32)
        return self.config.text_start + slots

    # ------------------------------------------------------------------------------------------------------ inputs
    def present_cameras(self, obs: Observation) -> tuple[str, ...]:
        return tuple(k for k in self.config.image_keys if k not in obs.absent_cameras)

    def prefix_layout(self, obs: Observation) -> np.ndarray | None:
        """Where each canonical prefix position (``prefix_len`` of them: every camera, ``max_token_len`` prompt slots)
        sits in ``obs``'s prefix: int[prefix_len], ``-1`` where it was left out. None when the layouts agree."""
        prompt_len = self.config.max_token_len if obs.tokenized_prompt is None else obs.tokenized_prompt.shape[1]
        if not obs.absent_cameras and prompt_len == self.config.max_token_len:
            return None
        n = self.config.tokens_per_image
        index, start = [], 0
        for key in self.config.image_keys:
            if key in obs.absent_cameras:
                index += [-1] * n
            else:
                index += range(start, start + n)
                start += n
        slots = np.arange(self.config.max_token_len)
        index += list(np.where(slots < prompt_len, start + slots, -1))
        return np.asarray(index, np.int32)

    def preprocess(self, obs: Observation) -> Observation:
        """Resize images to the model resolution if needed, order them as ``image_keys``, default masks to True."""
        unknown = [k for k in obs.absent_cameras if k not in self.config.image_keys or k in obs.images]
        if unknown:
            raise ValueError(f"absent_cameras {unknown} must be image keys that are not in the observation")
        missing = [k for k in self.present_cameras(obs) if k not in obs.images]
        if missing:
            raise ValueError(f"observation lacks images {missing}; expected keys {list(self.config.image_keys)}")
        batch_shape = obs.state.shape[:-1]
        images, masks = {}, {}
        for key in self.present_cameras(obs):
            image = obs.images[key]
            if tuple(image.shape[1:3]) != self.config.image_resolution:
                logger.info("Resizing image %s from %s to %s", key, image.shape[1:3], self.config.image_resolution)
                image = resize_with_pad(image, *self.config.image_resolution)
            images[key] = image
            mask = obs.image_masks.get(key)
            masks[key] = jnp.ones(batch_shape, dtype=jnp.bool_) if mask is None else jnp.asarray(mask)
        return obs.replace(images=images, image_masks=masks)

    def embed_prefix(
        self, obs: Observation, image_weights: EncoderWeights | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Image tokens (in ``image_keys`` order) then prompt embeddings: ([B, P, D], valid bool[B, P], ar bool[P]).
        ``image_weights``: SigLIP's blocks cut per layer (``layer_weights().img``)."""
        tokens, masks, ar = [], [], []
        cameras = self.present_cameras(obs)
        if self.config.one_image_pass and len(cameras) > 1:
            stacked = self.PaliGemma.img(jnp.concatenate([obs.images[key] for key in cameras], axis=0), image_weights)
            per_camera = jnp.split(stacked, len(cameras), axis=0)
        else:
            per_camera = [self.PaliGemma.img(obs.images[key], image_weights) for key in cameras]
        for key, image_tokens in zip(cameras, per_camera, strict=True):
            tokens.append(image_tokens)
            masks.append(jnp.repeat(obs.image_masks[key][:, None], image_tokens.shape[1], axis=1))
            ar += [False] * image_tokens.shape[1]
        if obs.tokenized_prompt is not None:
            text = self.PaliGemma.llm.embed(obs.tokenized_prompt)
            tokens.append(text)
            masks.append(obs.tokenized_prompt_mask)
            ar += [False] * text.shape[1]
        return jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1), jnp.array(ar)

    def embed_suffix(self, obs: Observation, noisy_actions: jax.Array, time: jax.Array):
        """State token then action tokens mixed with the flow time: ([B, 1+H, D], valid, ar)."""
        state_token = self.state_proj(obs.state)[:, None, :]
        action_tokens = self.action_in_proj(noisy_actions)
        time_emb = ops.posemb_sincos(time, self.action_in_proj.out_features, min_period=4e-3, max_period=4.0)
        horizon = self.config.action_horizon
        time_tokens = jnp.repeat(time_emb[:, None, :], horizon, axis=1)
        mixed = jnp.concatenate([action_tokens, time_tokens], axis=-1)
        mixed = self.action_time_mlp_out(jax.nn.swish(self.action_time_mlp_in(mixed)))
        tokens = jnp.concatenate([state_token, mixed], axis=1)
        mask = jnp.ones(tokens.shape[:2], dtype=jnp.bool_)
        ar = jnp.array([True, True] + [False] * (horizon - 1))
        return tokens, mask, ar

    # ------------------------------------------------------------------------------------------------ weights
    def layer_weights(self, small_size: int = SMALL_LEAF_SIZE) -> ModelLayerWeights:
        """Every layer's weights cut out of the stacked parameters (SigLIP's blocks, both Gemma streams, the
        feed-forward gate/up halves apart), for ``sample_actions``/``encode_prefix``/``prefix_residuals``
        (``layer_weights=...``). Call it once, outside ``jit``, and pass the result into every call: the slices are
        then plain arrays that the compiled programs read in place, instead of copies made in every call. The
        arithmetic is the same; the layers run as straight-line code. Costs a second copy of the layer weights, unless
        the stacks are dropped (``split_layer_weights``).
        The layers' vectors are packed into one array per model part (``packing.LayerLeaves``): a call pays per array
        passed. ``small_size``: the largest leaf packed (0 packs nothing)."""
        return ModelLayerWeights(
            img=self.PaliGemma.img.layer_weights(small_size=small_size),
            llm=self.PaliGemma.llm.layer_weights([0, 1], small_size),
        )

    def split_layer_weights(self, small_size: int = SMALL_LEAF_SIZE) -> tuple[Pi0, ModelLayerWeights]:
        """``layer_weights()`` and a copy of this model without the stacks they were cut from (SigLIP's blocks and
        both Gemma streams; embeddings and the other weights are shared): the weights in memory once instead of
        twice, once the caller drops this model. The copy's passes need ``layer_weights=`` (without, they raise);
        this model is unchanged. ``Policy`` does this on accelerators (``weights_per_layer``)."""
        weights = self.layer_weights(small_size)
        graphdef, state = nnx.split(self)
        # New variables over the same arrays (merging ``state`` itself would reuse this model's variables).
        released = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
        released.PaliGemma.llm.release_layer_stacks()
        released.PaliGemma.img.Transformer.release_layer_stacks()
        return released, weights.replace(llm=weights.llm.without_rest_stacks())

    # ----------------------------------------------------------------------------------------------- prefix pass
    def encode_prefix(
        self,
        obs: Observation,
        *,
        edit: ResidualEdit | None = None,
        capture_positions: jax.Array | None = None,
        layer_weights: ModelLayerWeights | None = None,
    ) -> tuple[PrefixCache, jax.Array | None]:
        """Run the prefix once: returns its KV cache and, if asked, the residual stream entering each block at
        ``capture_positions`` ([depth, B, P, D]). ``edit`` is written into the stream on the way. ``layer_weights``:
        ``layer_weights()``, cut once by the caller."""
        cache, captured, _ = self._prefix_pass(
            obs, edit=edit, capture_positions=capture_positions, layer_weights=layer_weights
        )
        if self.config.aligned_attention:
            cache = pad_keys(cache, self.config.action_horizon + 1)
        return cache, captured

    def _prefix_pass(
        self,
        obs: Observation,
        *,
        edit: ResidualEdit | None = None,
        capture_positions: jax.Array | None = None,
        attention_queries: jax.Array | None = None,
        layer_weights: ModelLayerWeights | None = None,
        capture_only: bool = False,
    ) -> tuple[PrefixCache | None, jax.Array | None, jax.Array | None]:
        """``encode_prefix`` plus, if asked, the prefix attention probabilities (see ``prefix_attention``).
        ``capture_only``: only the captured residuals are wanted (no cache is returned; see ``Gemma.forward``)."""
        obs = self.preprocess(obs)
        tokens, mask, ar = self.embed_prefix(obs, None if layer_weights is None else layer_weights.img)
        attn_mask = ops.make_attn_mask(mask, ar)
        positions = jnp.cumsum(mask, axis=1) - 1
        layout = self.prefix_layout(obs)
        if layout is not None:
            # Callers address the canonical layout; left-out positions map past the end (writes there are dropped,
            # reads give NaN).
            length = tokens.shape[1]
            table = jnp.asarray(np.where(layout < 0, length, layout), jnp.int32)
            if edit is not None:
                edit = edit.replace(positions=table[jnp.asarray(edit.positions, jnp.int32)])
            if capture_positions is not None:
                capture_positions = table[jnp.asarray(capture_positions, jnp.int32)]
            if attention_queries is not None:
                raise ValueError("attention maps need the full prefix layout; pass an uncompacted observation")
        _, kv, captured, attention = self.PaliGemma.llm.forward(
            [tokens, None],
            positions,
            attn_mask,
            edit=edit,
            capture_positions=capture_positions,
            attention_queries=attention_queries,
            layer_weights=None if layer_weights is None else layer_weights.llm,
            capture_only=capture_only,
        )
        return (None if capture_only else PrefixCache(kv=kv, mask=mask)), captured, attention

    def prefix_residuals(
        self,
        obs: Observation,
        positions,
        *,
        edit: ResidualEdit | None = None,
        layer_weights: ModelLayerWeights | None = None,
    ) -> jax.Array:
        """Residual stream entering every block at prefix ``positions``: [depth, B, P, D]. No action expert runs.
        With ``layer_weights`` the last block is skipped and the one before it runs only the captured rows."""
        _, captured, _ = self._prefix_pass(
            obs,
            edit=edit,
            capture_positions=jnp.asarray(positions, jnp.int32),
            layer_weights=layer_weights,
            capture_only=True,
        )
        return captured

    def prefix_attention(
        self,
        obs: Observation,
        query_positions,
        *,
        edit: ResidualEdit | None = None,
        layer_weights: ModelLayerWeights | None = None,
    ) -> jax.Array:
        """Attention probabilities of the prefix at every layer, for queries at prefix ``query_positions`` (e.g.
        ``text_positions(slots)``): float32 [depth, B, num_heads, Q, prefix_len]. No action expert runs.

        Each row is the layer's float32 softmax over all prefix keys, as the model computes it: it sums to 1 over
        the keys the query sees and is exactly 0 on masked keys (masked cameras, prompt padding). A query that is
        itself padding sees no key; the model then spreads it uniformly over all keys — weight rows by the
        prompt mask. Asking for attention never changes the passes that do not ask (it is a trace-time option).
        ``layer_weights``: ``layer_weights()``, cut once by the caller.
        """
        queries = jnp.asarray(query_positions, jnp.int32)
        _, _, attention = self._prefix_pass(obs, edit=edit, attention_queries=queries, layer_weights=layer_weights)
        return attention

    # ----------------------------------------------------------------------------------------------- suffix pass
    def velocity(
        self,
        obs: Observation,
        cache: PrefixCache,
        x_t: jax.Array,
        time: jax.Array,
        *,
        layer_weights: LayerWeights | None = None,
    ) -> jax.Array:
        """Flow velocity v(x_t, t) from the action expert attending to the cached prefix. [B, H, action_dim].
        ``layer_weights``: the expert's per-layer weights (``Gemma.layer_weights([1])``), cut once for all steps."""
        velocity, _ = self._velocity(obs, cache.mask, cache.kv, x_t, time, layer_weights)
        return velocity

    def _velocity(self, obs, prefix_mask, kv, x_t, time, layer_weights) -> tuple[jax.Array, KVCache | SuffixBuffers]:
        """``velocity`` from the prefix's mask and keys/values (stacked, or ``SuffixBuffers`` with room for the
        suffix's keys, which are then returned updated in place)."""
        suffix, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, time)
        suffix_attn = ops.make_attn_mask(suffix_mask, suffix_ar)
        prefix_attn = jnp.repeat(prefix_mask[:, None, :], suffix.shape[1], axis=1)
        full_mask = jnp.concatenate([prefix_attn, suffix_attn], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, suffix_out), kv, _, _ = self.PaliGemma.llm.forward(
            [None, suffix], positions, full_mask, kv_cache=kv, layer_weights=layer_weights
        )
        return self.action_out_proj(suffix_out[:, -self.config.action_horizon :]), kv

    def sample_actions(
        self,
        rng: jax.Array | None,
        obs: Observation,
        *,
        num_steps: int = 10,
        noise: jax.Array | None = None,
        edit: ResidualEdit | None = None,
        layer_weights: ModelLayerWeights | None = None,
    ) -> jax.Array:
        """Integrate the flow from noise (t=1) to actions (t=0) with ``num_steps`` Euler steps. [B, H, action_dim].

        ``noise`` defaults to ``normal(rng, (B, H, action_dim))`` with ``rng`` used unsplit, as openpi does.
        ``layer_weights``: ``layer_weights()``, cut once by the caller: every pass reads its layers from there.
        """
        obs = self.preprocess(obs)
        dt = -1.0 / num_steps
        batch = obs.state.shape[0]
        if noise is None:
            if rng is None:
                raise ValueError("sample_actions needs either rng or noise")
            noise = jax.random.normal(rng, (batch, self.config.action_horizon, self.config.action_dim))
        cache, _ = self.encode_prefix(obs, edit=edit, layer_weights=layer_weights)
        steps = len(sampling_times(num_steps))
        return self.integrate(obs, cache, noise, start_time=1.0, steps=steps, dt=dt, layer_weights=layer_weights)

    def integrate(
        self,
        obs: Observation,
        cache: PrefixCache,
        x_t: jax.Array,
        *,
        start_time: float,
        steps: int,
        dt: float,
        layer_weights: ModelLayerWeights | None = None,
    ) -> jax.Array:
        """``steps`` Euler steps of the flow from ``x_t`` [B, H, action_dim] at ``start_time`` over the prefix
        ``cache``, ``sample_actions``'s loop (which runs it from 1.0 on noise): the time is carried in float32 from
        the Python float ``start_time`` adding ``dt``, as openpi's sampler does. ``obs``: preprocessed."""
        batch = obs.state.shape[0]
        if layer_weights is not None:
            expert_weights = layer_weights.llm
        elif self.config.expert_weights_per_layer:
            expert_weights = self.PaliGemma.llm.layer_weights([1])
        else:
            expert_weights = None

        # With straight-line expert layers, the suffix's keys/values go into buffers carried from step to step
        # and written in place, instead of a fresh concatenation with the prefix cache in every layer of every step.
        kv = cache.kv if expert_weights is None else SuffixBuffers.from_cache(cache.kv, self.config.action_horizon + 1)

        def step(carry):
            x_t, time, kv = carry
            v_t, new_kv = self._velocity(
                obs, cache.mask, kv, x_t, jnp.broadcast_to(time, batch), layer_weights=expert_weights
            )
            return ops.euler_update(x_t, v_t, dt), time + dt, new_kv if expert_weights is not None else kv

        # The time carry accumulates t + dt in float32 exactly as openpi (1.0, 0.9, 0.79999995, ...). openpi loops
        # while t >= -dt/2; the count of those steps is known before tracing (``sampling_times``), and a loop with a
        # known count needs no device-to-host read of its condition between steps.
        x_0, _, _ = jax.lax.fori_loop(0, steps, lambda _, carry: step(carry), (x_t, start_time, kv))
        return x_0

    # -------------------------------------------------------------------------------------------------- training
    def compute_loss(self, rng: jax.Array, obs: Observation, actions: jax.Array, *, train: bool = False) -> jax.Array:
        """Flow-matching loss per action step, [B, H]; ``rng`` is split as openpi splits it (same noise and time).

        Image augmentation (openpi's ``train=True``) is not part of textlatent: ``train=True`` raises.
        """
        if train:
            raise NotImplementedError(
                "training-time image augmentation is not implemented; call compute_loss with train=False"
            )
        _preprocess_rng, noise_rng, time_rng = jax.random.split(rng, 3)
        obs = self.preprocess(obs)
        batch_shape = actions.shape[:-2]
        noise = jax.random.normal(noise_rng, actions.shape)
        time = jax.random.beta(time_rng, 1.5, 1, batch_shape) * 0.999 + 0.001
        t = time[..., None, None]
        x_t = t * noise + (1 - t) * actions
        u_t = noise - actions

        prefix, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix, suffix_mask, suffix_ar = self.embed_suffix(obs, x_t, time)
        mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        ar = jnp.concatenate([prefix_ar, suffix_ar], axis=0)
        attn_mask = ops.make_attn_mask(mask, ar)
        positions = jnp.cumsum(mask, axis=1) - 1
        (_, suffix_out), _, _ = self.PaliGemma.llm([prefix, suffix], positions, attn_mask)
        v_t = self.action_out_proj(suffix_out[:, -self.config.action_horizon :])
        return jnp.mean(jnp.square(v_t - u_t), axis=-1)
