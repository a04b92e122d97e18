"""SigLIP vision transformer (big_vision ViT as openpi configures it: learned position embedding, no pooling,
a linear head to the PaliGemma width). Parameter tree matches openpi's ``PaliGemma/img``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax import lax

from textlatent.model import ops
from textlatent.model.config import SiglipConfig
from textlatent.model.packing import SMALL_LEAF_SIZE, STACKS_RELEASED, LayerLeaves, release_stacks

_xavier = jax.nn.initializers.xavier_uniform

HIDDEN_MULTIPLE = 32
"""``layer_weights`` pads the feed-forward hidden width to a multiple of this, once at load time: So400m's 4304 is not
one, and XLA's GPU matrix products otherwise pad the down projection's weights and its input again in every call
(two copies a block, ~14 µs at batch 1 on an H100)."""


@struct.dataclass
class EncoderWeights:
    """The encoder blocks' parameters cut into one state per block (``SigLIP.layer_weights``), kept as tuples of
    arrays for a fast flatten in jitted calls (as ``gemma.LayerWeights``)."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    layers: LayerLeaves  # the leaves of each block's nnx.State, vectors packed
    layer_def: jax.tree_util.PyTreeDef = struct.field(pytree_node=False)

    @property
    def per_layer(self) -> tuple:
        """One nnx.State per block."""
        return self.layers.trees(self.layer_def)


class _Dense(nnx.Module):
    """``kernel``/``bias`` pair applied with flax's Dense/DenseGeneral promotion rules."""

    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)

    def __call__(self, x, *, in_axes: int = 1, dtype=None):
        return ops.dense_general(x, self.kernel[...], self.bias[...], in_axes=in_axes, dtype=dtype)


class _LayerNorm(nnx.Module):
    def __init__(self, shape: tuple[int, ...]):
        self.scale = nnx.Param(jnp.ones(shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros(shape, jnp.float32))

    def __call__(self, x, *, dtype):
        return ops.layer_norm(x, self.scale[...], self.bias[...], dtype=dtype)


def _stacked_xavier(key, depth, shape, in_axes: int):
    """xavier_uniform per layer over a kernel whose first ``in_axes`` axes are inputs."""
    fan_in = 1
    for s in shape[:in_axes]:
        fan_in *= s
    fan_out = 1
    for s in shape[in_axes:]:
        fan_out *= s
    flat = _xavier()(key, (depth, fan_in, fan_out), jnp.float32) if depth else _xavier()(key, (fan_in, fan_out))
    return flat.reshape((depth, *shape) if depth else shape)


class _MultiHeadAttention(nnx.Module):
    def __init__(self, depth: int, width: int, num_heads: int, rngs: nnx.Rngs, *, flash: bool = False):
        self.flash = flash
        head_dim = width // num_heads
        for name in ("query", "key", "value"):
            kernel = _stacked_xavier(rngs.params(), depth, (width, num_heads, head_dim), in_axes=1)
            setattr(self, name, _Dense(kernel, jnp.zeros((depth, num_heads, head_dim), jnp.float32)))
        kernel = _stacked_xavier(rngs.params(), depth, (num_heads, head_dim, width), in_axes=2)
        self.out = _Dense(kernel, jnp.zeros((depth, width), jnp.float32))

    def __call__(self, x, dtype):
        q = self.query(x, dtype=dtype)  # [B, T, N, H]
        k = self.key(x, dtype=dtype)
        v = self.value(x, dtype=dtype)
        # flax divides q by sqrt(head_dim) rounded to the activation dtype (8.5 instead of 8.485 in bf16).
        q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        if ops.flash_attention_available(self.flash, q.shape[0] * q.shape[1]):
            encoded = ops.flash_attention(q, k, v)
        else:
            logits = jnp.einsum("...qhd,...khd->...hqk", q, k)
            probs = jax.nn.softmax(logits).astype(q.dtype)
            encoded = jnp.einsum("...hqk,...khd->...qhd", probs, v)
        return self.out(encoded, in_axes=2, dtype=dtype)


class _MlpBlock(nnx.Module):
    def __init__(self, depth: int, width: int, mlp_dim: int, rngs: nnx.Rngs):
        normal = jax.nn.initializers.normal(1e-6)
        self.Dense_0 = _Dense(
            _stacked_xavier(rngs.params(), depth, (width, mlp_dim), 1), normal(rngs.params(), (depth, mlp_dim))
        )
        self.Dense_1 = _Dense(
            _stacked_xavier(rngs.params(), depth, (mlp_dim, width), 1), normal(rngs.params(), (depth, width))
        )

    def __call__(self, x, dtype):
        return self.Dense_1(ops.gelu(self.Dense_0(x, dtype=dtype)), dtype=dtype)


class EncoderBlock(nnx.Module):
    """Pre-norm ViT block; parameters stacked over depth and scanned by ``Transformer``."""

    def __init__(self, config: SiglipConfig, rngs: nnx.Rngs, *, flash_attention: bool = False):
        d = config.depth
        self.LayerNorm_0 = _LayerNorm((d, config.width))
        self.MultiHeadDotProductAttention_0 = _MultiHeadAttention(
            d, config.width, config.num_heads, rngs, flash=flash_attention
        )
        self.LayerNorm_1 = _LayerNorm((d, config.width))
        self.MlpBlock_0 = _MlpBlock(d, config.width, config.mlp_dim, rngs)

    def __call__(self, x, dtype):
        x = x + self.MultiHeadDotProductAttention_0(self.LayerNorm_0(x, dtype=dtype), dtype)
        return x + self.MlpBlock_0(self.LayerNorm_1(x, dtype=dtype), dtype)


class Transformer(nnx.Module):
    def __init__(
        self,
        config: SiglipConfig,
        rngs: nnx.Rngs,
        *,
        flash_attention: bool = False,
        command_buffer_breaks: tuple[int, ...] = (),
    ):
        self.encoderblock = EncoderBlock(config, rngs, flash_attention=flash_attention)
        self.encoder_norm = _LayerNorm((config.width,))
        self.layer_stacks_released = False
        self.command_buffer_breaks = tuple(command_buffer_breaks)

    def release_layer_stacks(self) -> None:
        """Replace the stacked block weights by empty stand-ins (``packing.release_stacks``): passes then need
        ``layer_weights``."""
        release_stacks(self.encoderblock)
        self.layer_stacks_released = True

    def layer_weights(
        self, hidden_multiple: int = HIDDEN_MULTIPLE, small_size: int = SMALL_LEAF_SIZE
    ) -> EncoderWeights:
        """The blocks cut one per layer, with the feed-forward hidden width padded with zeros to a multiple of
        ``hidden_multiple`` (see ``HIDDEN_MULTIPLE``; 1 leaves it as it is), and the blocks' vectors packed into
        one array (``LayerLeaves``; ``small_size`` 0 packs nothing)."""
        if hidden_multiple < 1:
            raise ValueError(f"hidden_multiple must be a positive integer (1: no padding), got {hidden_multiple}")
        if self.layer_stacks_released:
            raise ValueError(STACKS_RELEASED)
        graphdef, state = nnx.split(self.encoderblock)
        hidden = state["MlpBlock_0"]["Dense_0"]["bias"][...].shape[-1]
        pad = -hidden % hidden_multiple
        # Zero columns in, zero bias, zero rows out: each padded unit is gelu(0) = 0 times zero weights, so every
        # output is the same sum with exact zeros added. (A new tree: the model's own parameters stay as they are.)
        padded_axis = {("Dense_0", "kernel"): -1, ("Dense_0", "bias"): -1, ("Dense_1", "kernel"): 1}

        def pad_hidden(path, a):
            names = tuple(key.key for key in path if isinstance(key, jax.tree_util.DictKey))
            axis = padded_axis.get(names[-2:]) if "MlpBlock_0" in names else None
            if not pad or axis is None:
                return a
            widths = [(0, 0)] * a.ndim
            widths[axis] = (0, pad)
            return np.pad(a, widths) if isinstance(a, np.ndarray) else jnp.pad(a, widths)  # host weights stay there

        state = jax.tree_util.tree_map_with_path(pad_hidden, state)
        leaves, layer_def = jax.tree.flatten(state)
        depth = leaves[0].shape[0]
        layers = LayerLeaves.pack([[a[i] for a in leaves] for i in range(depth)], small_size)
        return EncoderWeights(graphdef, layers, layer_def)

    def __call__(self, x, dtype, layer_weights: EncoderWeights | None = None):
        """``layer_weights``: the blocks already cut one per layer (``layer_weights()``); they then run as
        straight-line code (the same arithmetic) instead of a scan that copies each block's slice of the stacks."""
        if layer_weights is not None:
            for i, block_state in enumerate(layer_weights.per_layer):
                x = nnx.merge(layer_weights.graphdef, block_state)(x, dtype)
                if i in self.command_buffer_breaks:
                    x = ops.command_buffer_break(x)
            return self.encoder_norm(x, dtype=dtype)
        if self.layer_stacks_released:
            raise ValueError(STACKS_RELEASED)
        graphdef, state = nnx.split(self.encoderblock)

        def run_block(x, block_state):
            return nnx.merge(graphdef, block_state)(x, dtype), None

        x, _ = lax.scan(run_block, x, state)
        return self.encoder_norm(x, dtype=dtype)


class SigLIP(nnx.Module):
    """Image encoder: [B, H, W, 3] in [-1, 1] → [B, (H/p)(W/p), out_width] tokens in the model dtype."""

    def __init__(
        self,
        config: SiglipConfig,
        *,
        out_width: int,
        num_patches: int,
        dtype: str,
        rngs: nnx.Rngs,
        flash_attention: bool = False,
        command_buffer_breaks: tuple[int, ...] = (),
    ):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        p, w = config.patch_size, config.width
        fan_in = p * p * 3
        self.embedding = _Dense(
            jax.nn.initializers.lecun_normal()(rngs.params(), (fan_in, w)).reshape(p, p, 3, w),
            jnp.zeros((w,), jnp.float32),
        )
        self.pos_embedding = nnx.Param(
            jax.nn.initializers.normal(1 / w**0.5)(rngs.params(), (1, num_patches, w), jnp.float32)
        )
        self.Transformer = Transformer(
            config, rngs, flash_attention=flash_attention, command_buffer_breaks=command_buffer_breaks
        )
        # openpi zero-initialises the head; a random head keeps freshly made models sensitive to their images.
        self.head = _Dense(
            jax.nn.initializers.lecun_normal()(rngs.params(), (w, out_width)), jnp.zeros((out_width,), jnp.float32)
        )

    def layer_weights(
        self, hidden_multiple: int = HIDDEN_MULTIPLE, small_size: int = SMALL_LEAF_SIZE
    ) -> EncoderWeights:
        """The encoder blocks' weights, one state per block, for ``__call__(..., layer_weights=...)`` (see
        ``Transformer.layer_weights``)."""
        return self.Transformer.layer_weights(hidden_multiple, small_size)

    def __call__(self, image: jax.Array, layer_weights: EncoderWeights | None = None) -> jax.Array:
        # Patch extraction and position embedding run in float32; the blocks in the model dtype.
        x = jnp.asarray(image, jnp.float32)
        kernel, bias = ops.promote(self.embedding.kernel[...], self.embedding.bias[...], dtype=jnp.float32)
        x = lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.config.patch_size, self.config.patch_size),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x += bias.reshape(1, 1, 1, -1)
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])
        x = x + jnp.asarray(self.pos_embedding[...], jnp.float32)
        x = x.astype(self.dtype)
        x = self.Transformer(x, self.dtype, layer_weights)
        return self.head(x, dtype=self.dtype)
