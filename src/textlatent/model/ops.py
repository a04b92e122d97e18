"""Numerical building blocks of π0, written to reproduce openpi's arithmetic operation by operation.

Every function keeps openpi's dtype behaviour: which operand is cast first, where float32 is used and where the
activation dtype (bfloat16 when serving) is kept. Comments name the non-obvious casts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Gemma's mask value (slightly above float32's minimum so that adding to it cannot overflow).
ATTENTION_MASK_VALUE = -2.3819763e38


def promote(*arrays, dtype=None):
    """Flax's ``promote_dtype``: cast every array to ``dtype`` or, if None, to their common result type."""
    present = [a for a in arrays if a is not None]
    target = jnp.result_type(*present) if dtype is None else jnp.dtype(dtype)
    return tuple(None if a is None else jnp.asarray(a, target) for a in arrays)


def dense(x, kernel, bias=None, *, dtype=None):
    """``y = x @ kernel + bias`` over the last axis of ``x`` after promoting all three (flax ``Dense``)."""
    x, kernel, bias = promote(x, kernel, bias, dtype=dtype)
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
        y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


def dense_general(x, kernel, bias, *, in_axes: int, dtype=None):
    """Flax ``DenseGeneral``: contract the last ``in_axes`` axes of ``x`` with the first ``in_axes`` of ``kernel``."""
    x, kernel, bias = promote(x, kernel, bias, dtype=dtype)
    contract = tuple(range(x.ndim - in_axes, x.ndim))
    y = lax.dot_general(x, kernel, ((contract, tuple(range(in_axes))), ((), ())))
    if bias is not None:
        y += jnp.reshape(bias, (1,) * (y.ndim - bias.ndim) + bias.shape)
    return y


def layer_norm(x, scale, bias, *, dtype, epsilon: float = 1e-6):
    """Flax ``LayerNorm`` with its defaults: float32 statistics, fast variance, ``(x-μ)·(rsqrt(σ²+ε)·scale)+bias``."""
    x32 = jnp.asarray(x, jnp.promote_types(dtype, jnp.float32))
    mean = x32.mean(-1)
    mean2 = lax.square(x32).mean(-1)
    var = jnp.maximum(0.0, mean2 - lax.square(mean))
    y = x - mean[..., None]
    mul = lax.rsqrt(var[..., None] + epsilon)
    mul *= scale
    y *= mul
    y += bias
    return jnp.asarray(y, dtype)


def rms_norm(x, scale):
    """Gemma RMSNorm. Statistics in float32; ``1 + scale`` is formed in the parameter dtype (bf16 when serving)."""
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = jnp.asarray(x * jnp.reciprocal(jnp.sqrt(var + 1e-06)))
    normed = normed * (1 + scale)
    return normed.astype(dtype)


def apply_rope(x, positions, max_wavelength: int = 10_000):
    """Rotary embedding over all of ``x``'s last axis, split-half layout, computed in float32 and cast back.

    x: [B, T, N, H]; positions: int[B, T].
    """
    freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(x.shape[-1] // 2, dtype=jnp.float32)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None] / timescale[None, None, :]
    radians = radians[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


FLASH_MIN_QUERIES = 4096
"""Fused attention pays only for large passes: on an H100 a π0 chunk is slower with it up to batch 4 (2112 prefix
queries; SigLIP 8×256) and faster from batch 8 on (4224; 16×256) (``benchmarks/NOTES-gpu.md``)."""


def flash_attention_available(wanted: bool, queries: int) -> bool:
    """Whether a layer asked for fused (flash) attention gets it for a pass of ``queries`` query rows (batch ×
    tokens): only on a Hopper or newer GPU (where cuDNN's kernel was measured, head dims up to 256), and only for
    passes of at least ``FLASH_MIN_QUERIES`` rows; otherwise the layer keeps its own arithmetic (a trace-time
    decision)."""
    if not wanted or queries < FLASH_MIN_QUERIES or jax.default_backend() != "gpu":
        return False
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    try:
        return float(capability) >= 9.0
    except ValueError:
        return False


def flash_attention(q, k, v, mask=None):
    """cuDNN's fused attention over already-scaled queries: q [B, T, N, H], k/v [B, S, K, H], mask bool
    [B, 1, T, S] or None → [B, T, N, H]. Logits and softmax in float32, probabilities cast to the value dtype for the
    second product, as the unfused layers do; the normalisation is applied to the output instead of the
    probabilities (flash attention), so results differ from the unfused path by rounding."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation="cudnn")


def command_buffer_break(x):
    """``x`` unchanged (bit for bit, NaN and -0.0 included), after a tiny convolution that depends on it and that
    everything reading the result waits for. On a GPU, XLA records runs of kernels as CUDA graphs but runs
    convolutions outside them, so the graph in progress ends here. A large graph takes the host ~1.3 µs a kernel to
    launch, and the GPU waits for all of it (``benchmarks/NOTES-gpu.md``, tenth round); graphs that grow along the
    program let the GPU start while the host launches the rest."""
    probe = jnp.ravel(x)[:9].astype(jnp.float32)
    probe = jnp.pad(probe, (0, 9 - probe.shape[0])).reshape(1, 3, 3, 1)
    # A 2×2 window over 3×3 pixels: neither a 1×1 window nor the whole input, so XLA keeps it a convolution.
    zero = lax.conv_general_dilated(
        probe, jnp.zeros((2, 2, 1, 1), jnp.float32), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # Always true (the kernel is zero; NaN != 1 too), but not provably so: x itself, ordered after the convolution.
    return jnp.where(zero[0, 0, 0, 0] != 1, x, -x)


def make_attn_mask(input_mask, mask_ar):
    """Prefix-LM block mask: token i sees valid token j iff j's block index (cumsum of ``mask_ar``) is ≤ i's.

    input_mask: bool[B, N]; mask_ar: bool[N] or bool[B, N]. Returns bool[B, N, N] (query, key).
    """
    mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
    cumsum = jnp.cumsum(mask_ar, axis=1)
    attn_mask = cumsum[:, None, :] <= cumsum[:, :, None]
    valid_mask = input_mask[:, None, :] * input_mask[:, :, None]
    return jnp.logical_and(attn_mask, valid_mask)


def posemb_sincos(pos, embedding_dim: int, min_period: float, max_period: float):
    """Sine-cosine embedding of scalar positions (flow time), sin half first. pos: [B] -> [B, embedding_dim]."""
    if embedding_dim % 2:
        raise ValueError(f"embedding_dim ({embedding_dim}) must be even")
    fraction = jnp.linspace(0.0, 1.0, embedding_dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    sinusoid = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(sinusoid), jnp.cos(sinusoid)], axis=-1)


def gelu(x):
    """tanh-approximated GELU (flax's ``nn.gelu`` default)."""
    return jax.nn.gelu(x, approximate=True)


def euler_update(x_t, v_t, dt: float):
    """One flow step ``x + dt·v``. ``dt`` is a Python float, so with a bf16 velocity (serving) ``dt·v`` is rounded
    to bf16 — with dt itself rounded to bf16 — before it is added to the float32 ``x``, as in openpi."""
    return x_t + dt * v_t
