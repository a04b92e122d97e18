"""openpi-client's image resize (PIL bilinear, aspect kept, centred black padding) as integer arithmetic in a
compiled program: the same bytes as PIL, computed on the accelerator instead of the host.

PIL resamples uint8 images in fixed point: each output pixel is a weighted sum of input pixels with int32 weights
(``PRECISION_BITS`` = 22 fractional bits), rounded by adding half a unit and shifting, clipped to 0..255; the
horizontal pass runs first and its uint8 result feeds the vertical pass (Pillow up to 12, which openpi locks: 11.2.1;
Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the width, and
``transforms.resize_with_pad`` keeps the older order on any Pillow). The weights come from float64 arithmetic that
``_pil_bilinear_taps`` repeats operation by operation. Integer sums are exact whatever the order, so the compiled
program gives PIL's bytes on any backend (tested against PIL itself).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from textlatent.policy.transforms import resized_geometry

PRECISION_BITS = 22  # Pillow's libImaging/Resample.c: 32 - 8 - 2


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


@functools.cache
def _pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index int32 [out], fixed-point weights int32 [out, taps]) of PIL's bilinear resample of one axis
    from ``in_size`` to ``out_size`` pixels (``precompute_coeffs`` and ``normalize_coeffs_8bpc``, box = the whole
    image). Weights past an output pixel's window are 0; their indices are clamped into the image."""
    scale = in_size / out_size  # PIL: (double)(in1 - in0) / outSize, in1 - in0 an exact float here
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    taps = math.ceil(support) * 2 + 1
    starts = np.zeros(out_size, np.int32)
    weights = np.zeros((out_size, taps), np.int64)
    inv = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates towards zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bilinear((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        total = 0.0
        for value in w:  # one addition after another, as PIL; Python's sum() compensates (3.12+) and can differ
            total += value
        for x, value in enumerate(w):
            k = value / total if total != 0.0 else value
            weights[xx, x] = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
        starts[xx] = xmin
    return starts, weights.astype(np.int32)


def _resample_axis(images: jax.Array, axis: int, out_size: int) -> jax.Array:
    """One PIL pass along ``axis`` of uint8 images: uint8 results (PIL's intermediate between passes is uint8 too)."""
    in_size = images.shape[axis]
    starts, weights = _pil_bilinear_taps(in_size, out_size)
    trailing = (1,) * (images.ndim - axis - 1)
    # One tap at a time, summed: XLA fuses the gathers into one pass with nothing [.., out, taps, ..]-sized in memory
    # (a 4096-pixel side has 39 taps).
    total = jnp.full((1,), 1 << (PRECISION_BITS - 1), jnp.int32)
    for tap in range(weights.shape[1]):
        index = np.minimum(starts + tap, in_size - 1)
        w = jnp.asarray(weights[:, tap].reshape(out_size, *trailing))
        total = total + jnp.take(images, jnp.asarray(index), axis=axis).astype(jnp.int32) * w
    # ≤ 255 · Σ weights + 2^21 < 2^31: bilinear weights are non-negative and sum to ≈ 2^22: no int32 overflow.
    return jnp.clip(total >> PRECISION_BITS, 0, 255).astype(jnp.uint8)


def resize_with_pad(images: jax.Array, height: int, width: int) -> jax.Array:
    """uint8 [..., h, w, 3] → uint8 [..., height, width, 3], byte for byte what ``transforms.resize_with_pad``
    (PIL) returns; traceable (shapes are static). Images already at size are returned as they are."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"resize_with_pad takes uint8 images, got {images.dtype}")
    in_h, in_w = images.shape[-3:-1]
    if (in_h, in_w) == (height, width):
        return images
    new_h, new_w, top, left = resized_geometry(in_h, in_w, height, width)
    # PIL's order: the horizontal pass (only where the width changes), its uint8 result, then the vertical pass.
    if new_w != in_w:
        images = _resample_axis(images, images.ndim - 2, new_w)
    if new_h != in_h:
        images = _resample_axis(images, images.ndim - 3, new_h)
    pad = [(0, 0)] * (images.ndim - 3) + [(top, height - new_h - top), (left, width - new_w - left), (0, 0)]
    return jnp.pad(images, pad)


@functools.cache
def _jitted_resize_all(height: int, width: int):
    return jax.jit(lambda arrays: [resize_with_pad(a, height, width) for a in arrays])


def resize_all_on_device(arrays: Sequence, height: int, width: int) -> list[jax.Array]:
    """``resize_with_pad`` of several host uint8 arrays (a request's cameras) in one small compiled program, one per
    combination of input shapes: arrays on the default device at (height, width) out. The programs that take them
    see one image size whatever the cameras send, so a new camera resolution compiles this resize (a fraction of a
    second), never the model's programs. Arrays already at size are only put on the device, placed as the resized
    ones are: jit compiles a program anew for arguments placed differently."""
    out = list(arrays)
    todo = [i for i, a in enumerate(arrays) if tuple(a.shape[-3:-1]) != (height, width)]
    if todo:
        for i, resized in zip(todo, _jitted_resize_all(height, width)([arrays[i] for i in todo]), strict=True):
            out[i] = resized
    at_size = [i for i in range(len(arrays)) if i not in todo]
    if at_size:
        for i, placed in zip(at_size, jax.device_put([arrays[i] for i in at_size], jax.devices()[0]), strict=True):
            out[i] = placed
    return out


def resize_on_device(images, height: int, width: int) -> jax.Array:
    """``resize_all_on_device`` of one array."""
    return resize_all_on_device([images], height, width)[0]
