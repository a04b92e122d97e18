"""An experiment, kept to be rerun: fused Pallas (Triton backend) kernels for the action expert's flow-step layers,
against XLA's arithmetic for the same layer pieces, at full π0 size, on one GPU.

In a flow step the expert runs over 51 rows per batch element, so each layer is bound by reading its 35 MB of
weights, and XLA spends it in ~15 kernels. Each kernel here does one projection with what surrounds it, keeping the
unfused layer's rounding points (``ops.rms_norm``, ``ops.apply_rope``, ``ops.gelu``):

- ``qkv_rope``: RMSNorm, the fused q/k/v product, rotary embedding of q and k, and q's scaling;
- ``norm_geglu``: RMSNorm, the gate/up product and ``gelu(gate) * up``;
- ``matmul_add``: a product plus the residual it is added to.

A program owns a block of output columns and all rows. Result on an H100 (``results/gpu_kernels_h100.md``): 1.5–3×
slower than XLA's own products for the same pieces, so the library does not use them (``NOTES-gpu.md``, fifth round).

Each timed call runs a piece over 18 layers' distinct weights (as a flow step does, so weights come from device
memory, not L2); the table gives wall and summed GPU-kernel µs per layer, and each variant's max |Δ| from float32
arithmetic on the same bf16 inputs next to XLA's own (the rounding budget). Off a GPU the kernels run through Pallas'
interpreter (slow; a check of the arithmetic only).

    PYTHONPATH=src python benchmarks/gpu_kernels.py [--rows 51 102] [--out benchmarks/results/gpu_kernels_h100.md]
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from common import emit, environment, kernel_times, median_ms

from textlatent.model import ops

LAYERS = 18
D, HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 1024, 8, 1, 256, 4096


# ------------------------------------------------------------------------------------------------ the kernels
MAX_ROWS = 128
"""Largest number of rows (batch × tokens) the kernels take: all rows of a block stay in registers. The flow steps
have 51 rows per batch element; larger batches are matrix-bound and better served by XLA's products."""

_BLOCK_K = 128  # reduction dimension per loop iteration


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_block(rows: int) -> int:
    if rows > MAX_ROWS:
        raise ValueError(f"the fused kernels take at most {MAX_ROWS} rows, got {rows}")
    return max(16, _next_pow2(rows))


def _compiler_params(num_warps: int = 4, num_stages: int = 4):
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _check_width(name: str, width: int, block: int) -> None:
    if width % block:
        raise ValueError(f"{name} ({width}) must be a multiple of {block} for the fused kernels")


def _rms_inverse(x_ref, rows_ok, width: int):
    """``1 / sqrt(mean(x²) + 1e-6)`` of each row of ``x_ref`` [rows, width], in float32 (``ops.rms_norm``)."""

    def body(i, total):
        x = plgpu.load(x_ref.at[:, pl.ds(i * _BLOCK_K, _BLOCK_K)], mask=rows_ok[:, None], other=0.0)
        x = x.astype(jnp.float32)
        return total + jnp.sum(x * x, axis=1)

    total = lax.fori_loop(0, width // _BLOCK_K, body, jnp.zeros(rows_ok.shape, jnp.float32))
    return 1.0 / jnp.sqrt(total / width + 1e-6)


def _normed_block(x_ref, scale_ref, rows_ok, inverse, k):
    """Columns ``[k·BLOCK_K, (k+1)·BLOCK_K)`` of ``rms_norm(x)``, rounded to x's dtype as ``ops.rms_norm`` does:
    ``(x · inverse) · (1 + scale)`` in float32 with ``1 + scale`` rounded to the scale's dtype first."""
    columns = pl.ds(k * _BLOCK_K, _BLOCK_K)
    x = plgpu.load(x_ref.at[:, columns], mask=rows_ok[:, None], other=0.0)
    one_plus = (1.0 + scale_ref[columns].astype(jnp.float32)).astype(scale_ref.dtype).astype(jnp.float32)
    return ((x.astype(jnp.float32) * inverse[:, None]) * one_plus[None, :]).astype(x_ref.dtype)


def _rounded(acc, dtype):
    """A product's float32 accumulator as the layer sees it: rounded to the activation dtype."""
    return acc.astype(dtype).astype(jnp.float32)


def _normed_products(x_ref, scale_ref, first_ref, second_ref, rows_ok, width: int, dtype):
    """``rms_norm(x) @ first`` and ``rms_norm(x) @ second`` over one block of columns each, in one pass over the
    reduction dimension, each rounded to ``dtype`` as the layer rounds a product's output (returned as float32)."""
    inverse = _rms_inverse(x_ref, rows_ok, width)

    def body(k, accs):
        first, second = accs
        normed = _normed_block(x_ref, scale_ref, rows_ok, inverse, k)
        weights = pl.ds(k * _BLOCK_K, _BLOCK_K)
        first += jnp.dot(normed, first_ref[weights, :], preferred_element_type=jnp.float32)
        second += jnp.dot(normed, second_ref[weights, :], preferred_element_type=jnp.float32)
        return first, second

    zeros = jnp.zeros((x_ref.shape[0], first_ref.shape[1]), jnp.float32)
    first, second = lax.fori_loop(0, width // _BLOCK_K, body, (zeros, zeros))
    return _rounded(first, dtype), _rounded(second, dtype)


# ------------------------------------------------------------------------------------------------ q/k/v + rotary
def _qkv_rope_kernel(
    x_ref, scale_ref, w_first_ref, w_second_ref, sin_ref, cos_ref, q_ref, k_ref, v_ref, *, rows, width, heads, kv_heads,
    head_dim, block_n, q_scale,
):  # fmt: skip
    head, chunk = pl.program_id(0), pl.program_id(1)
    rows_ok = jnp.arange(x_ref.shape[0]) < rows
    dtype = q_ref.dtype
    first, second = _normed_products(x_ref, scale_ref, w_first_ref, w_second_ref, rows_ok, width, dtype)

    # ops.apply_rope: the split halves of a head rotated in float32, then rounded; v is not rotated.
    half_columns = pl.ds(chunk * block_n, block_n)
    sin = plgpu.load(sin_ref.at[:, half_columns], mask=rows_ok[:, None], other=0.0)
    cos = plgpu.load(cos_ref.at[:, half_columns], mask=rows_ok[:, None], other=0.0)
    rotated_first = (first * cos - second * sin).astype(dtype)
    rotated_second = (second * cos + first * sin).astype(dtype)
    mask = rows_ok[:, None]
    half = head_dim // 2

    @pl.when(head < heads)
    def _():
        scale = jnp.asarray(q_scale, dtype).astype(jnp.float32)  # q *= head_dim**-0.5 in the activation dtype
        start = head * head_dim + chunk * block_n
        plgpu.store(
            q_ref.at[:, pl.ds(start, block_n)], (rotated_first.astype(jnp.float32) * scale).astype(dtype), mask=mask
        )
        plgpu.store(q_ref.at[:, pl.ds(start + half, block_n)], (rotated_second.astype(jnp.float32) * scale).astype(dtype), mask=mask)  # fmt: skip

    @pl.when((head >= heads) & (head < heads + kv_heads))
    def _():
        start = (head - heads) * head_dim + chunk * block_n
        plgpu.store(k_ref.at[:, pl.ds(start, block_n)], rotated_first, mask=mask)
        plgpu.store(k_ref.at[:, pl.ds(start + half, block_n)], rotated_second, mask=mask)

    @pl.when(head >= heads + kv_heads)
    def _():
        start = (head - heads - kv_heads) * head_dim + chunk * block_n
        plgpu.store(v_ref.at[:, pl.ds(start, block_n)], first.astype(dtype), mask=mask)
        plgpu.store(v_ref.at[:, pl.ds(start + half, block_n)], second.astype(dtype), mask=mask)


def rope_tables(positions: jax.Array, head_dim: int, max_wavelength: int = 10_000) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) float32 [rows, head_dim // 2] for int ``positions`` [rows], the values ``ops.apply_rope`` uses."""
    freq_exponents = (2.0 / head_dim) * jnp.arange(head_dim // 2, dtype=jnp.float32)
    timescale = max_wavelength**freq_exponents
    radians = positions[:, None] / timescale[None, :]
    return jnp.sin(radians), jnp.cos(radians)


def qkv_rope(
    x: jax.Array,
    norm_scale: jax.Array,
    qkv: jax.Array,
    sin: jax.Array,
    cos: jax.Array,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    block_n: int = 16,
    num_warps: int = 4,
    num_stages: int = 4,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``rms_norm(x) @ qkv`` split into q, k, v, with q and k rotated (``rope_tables``) and q scaled by
    ``head_dim**-0.5``, as ``Attention.forward`` computes them.

    x [rows, D]; norm_scale [D] (the RMSNorm ``scale``); qkv [D, (heads + 2·kv_heads)·head_dim] as
    ``FusedProjections.qkv``; sin/cos [rows, head_dim // 2]. Returns q [rows, heads·head_dim] and k, v
    [rows, kv_heads·head_dim], each head's columns together."""
    rows, width = x.shape
    total_heads = heads + 2 * kv_heads
    if qkv.shape != (width, total_heads * head_dim):
        raise ValueError(f"qkv has shape {qkv.shape}, expected {(width, total_heads * head_dim)}")
    _check_width("width", width, _BLOCK_K)
    _check_width("head_dim / 2", head_dim // 2, block_n)
    chunks = head_dim // 2 // block_n
    per_head = head_dim // block_n
    row_block = _row_block(rows)
    kernel = _kernel(
        _qkv_rope_kernel, rows=rows, width=width, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        block_n=block_n, q_scale=head_dim**-0.5,
    )  # fmt: skip
    whole = lambda shape: pl.BlockSpec(shape, lambda h, c: (0,) * len(shape))  # noqa: E731
    return pl.pallas_call(
        kernel,
        grid=(total_heads, chunks),
        in_specs=[
            whole((row_block, width)),
            whole((width,)),
            pl.BlockSpec((width, block_n), lambda h, c: (0, h * per_head + c)),
            pl.BlockSpec((width, block_n), lambda h, c: (0, h * per_head + chunks + c)),
            whole((row_block, head_dim // 2)),
            whole((row_block, head_dim // 2)),
        ],
        out_specs=[
            whole((row_block, heads * head_dim)),
            whole((row_block, kv_heads * head_dim)),
            whole((row_block, kv_heads * head_dim)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((rows, heads * head_dim), x.dtype),
            jax.ShapeDtypeStruct((rows, kv_heads * head_dim), x.dtype),
            jax.ShapeDtypeStruct((rows, kv_heads * head_dim), x.dtype),
        ],
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="qkv_rope",
    )(x, norm_scale, qkv, qkv, sin, cos)


# ------------------------------------------------------------------------------------------------- norm + GeGLU
def _norm_geglu_kernel(x_ref, scale_ref, gate_ref, up_ref, out_ref, *, rows, width):
    rows_ok = jnp.arange(x_ref.shape[0]) < rows
    gate, up = _normed_products(x_ref, scale_ref, gate_ref, up_ref, rows_ok, width, out_ref.dtype)
    # ops.gelu (tanh form), in float32 on the rounded gate, times the rounded up projection.
    activated = 0.5 * gate * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (gate + 0.044715 * gate * gate * gate)))
    plgpu.store(out_ref, (activated * up).astype(out_ref.dtype), mask=rows_ok[:, None])


def norm_geglu(
    x: jax.Array,
    norm_scale: jax.Array,
    gate_up: jax.Array,
    *,
    block_n: int = 32,
    num_warps: int = 4,
    num_stages: int = 4,
    interpret: bool = False,
) -> jax.Array:
    """``gelu(h @ W_gate) * (h @ W_up)`` with ``h = rms_norm(x)``: x [rows, D], norm_scale [D], gate_up [D, 2F]
    (``FusedProjections.gate_up``) → [rows, F]."""
    rows, width = x.shape
    hidden = gate_up.shape[1] // 2
    if gate_up.shape != (width, 2 * hidden):
        raise ValueError(f"gate_up has shape {gate_up.shape}, expected ({width}, 2·hidden)")
    _check_width("width", width, _BLOCK_K)
    _check_width("hidden", hidden, block_n)
    row_block = _row_block(rows)
    blocks = hidden // block_n
    return pl.pallas_call(
        _kernel(_norm_geglu_kernel, rows=rows, width=width),
        grid=(blocks,),
        in_specs=[
            pl.BlockSpec((row_block, width), lambda j: (0, 0)),
            pl.BlockSpec((width,), lambda j: (0,)),
            pl.BlockSpec((width, block_n), lambda j: (0, j)),
            pl.BlockSpec((width, block_n), lambda j: (0, blocks + j)),
        ],
        out_specs=pl.BlockSpec((row_block, block_n), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((rows, hidden), x.dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="norm_geglu",
    )(x, norm_scale, gate_up, gate_up)


# --------------------------------------------------------------------------------------- product + residual add
def _matmul_add_kernel(x_ref, w_ref, residual_ref, out_ref, *, rows, width):
    rows_ok = jnp.arange(x_ref.shape[0]) < rows

    def body(k, acc):
        columns = pl.ds(k * _BLOCK_K, _BLOCK_K)
        x = plgpu.load(x_ref.at[:, columns], mask=rows_ok[:, None], other=0.0)
        return acc + jnp.dot(x, w_ref[columns, :], preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, width // _BLOCK_K, body, jnp.zeros(out_ref.shape, jnp.float32))
    residual = plgpu.load(residual_ref, mask=rows_ok[:, None], other=0.0).astype(jnp.float32)
    plgpu.store(out_ref, (residual + _rounded(acc, out_ref.dtype)).astype(out_ref.dtype), mask=rows_ok[:, None])


def matmul_add(
    x: jax.Array,
    w: jax.Array,
    residual: jax.Array,
    *,
    block_n: int = 16,
    num_warps: int = 4,
    num_stages: int = 4,
    interpret: bool = False,
) -> jax.Array:
    """``residual + x @ w`` with the product rounded to the activation dtype before the sum (a layer's output
    projection added to its residual stream): x [rows, K], w [K, N], residual [rows, N] → [rows, N]."""
    rows, width = x.shape
    out_width = w.shape[1]
    if w.shape[0] != width or residual.shape != (rows, out_width):
        raise ValueError(f"shapes do not chain: x {x.shape}, w {w.shape}, residual {residual.shape}")
    _check_width("width", width, _BLOCK_K)
    _check_width("output width", out_width, block_n)
    row_block = _row_block(rows)
    return pl.pallas_call(
        _kernel(_matmul_add_kernel, rows=rows, width=width),
        grid=(out_width // block_n,),
        in_specs=[
            pl.BlockSpec((row_block, width), lambda j: (0, 0)),
            pl.BlockSpec((width, block_n), lambda j: (0, j)),
            pl.BlockSpec((row_block, block_n), lambda j: (0, j)),
        ],
        out_specs=pl.BlockSpec((row_block, block_n), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((rows, out_width), x.dtype),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="matmul_add",
    )(x, w, residual)


def _kernel(fn, **static):
    def kernel(*refs):
        return fn(*refs, **static)

    return kernel


# ------------------------------------------------------------------------------------------------ the benchmark
def reference_qkv(x, scale, qkv, positions):
    h = ops.rms_norm(x, scale)
    y = jnp.dot(h, qkv.astype(h.dtype))
    q, k, v = jnp.split(y, [HEADS * HEAD_DIM, (HEADS + KV_HEADS) * HEAD_DIM], -1)
    rows = x.shape[0]
    q = ops.apply_rope(q.reshape(1, rows, HEADS, HEAD_DIM), positions[None]) * HEAD_DIM**-0.5
    k = ops.apply_rope(k.reshape(1, rows, KV_HEADS, HEAD_DIM), positions[None])
    return q.reshape(rows, -1), k.reshape(rows, -1), v


def reference_geglu(x, scale, gate_up):
    gate, up = jnp.split(jnp.dot(ops.rms_norm(x, scale), gate_up.astype(x.dtype)), 2, -1)
    return ops.gelu(gate) * up


def reference_matmul_add(x, w, residual):
    return residual + jnp.dot(x, w.astype(x.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[51, 102])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer block variants")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    interpret = jax.default_backend() != "gpu"
    bf = jnp.bfloat16
    keys = iter(jax.random.split(jax.random.key(0), 1024))

    def weights(shape, layers=LAYERS):
        return [(jax.random.normal(next(keys), shape) / np.sqrt(shape[0])).astype(bf) for _ in range(layers)]

    scales = [(0.1 * jax.random.normal(next(keys), (D,))).astype(bf) for _ in range(LAYERS)]
    qkv_w = weights((D, (HEADS + 2 * KV_HEADS) * HEAD_DIM))
    gate_up_w = weights((D, 2 * HIDDEN))
    out_w = weights((HEADS * HEAD_DIM, D))
    down_w = weights((HIDDEN, D))

    pieces = {  # name: (kernel fn(x, layer) , reference fn(x, layer), input width, tunables)
        "q/k/v + rope": (
            lambda x, i, pos, **kw: qkv_rope(
                x,
                scales[i],
                qkv_w[i],
                *rope_tables(pos, HEAD_DIM),
                heads=HEADS,
                kv_heads=KV_HEADS,
                head_dim=HEAD_DIM,
                interpret=interpret,
                **kw,
            ),
            lambda x, i, pos: reference_qkv(x, scales[i], qkv_w[i], pos),
            D,
            [(16, 4, 4), (32, 4, 4), (64, 4, 3), (64, 8, 3), (128, 8, 3)],
        ),
        "norm + gate/up + GeGLU": (
            lambda x, i, pos, **kw: norm_geglu(x, scales[i], gate_up_w[i], interpret=interpret, **kw),
            lambda x, i, pos: reference_geglu(x, scales[i], gate_up_w[i]),
            D,
            [(32, 4, 4), (64, 4, 3), (64, 8, 3), (128, 8, 3)],
        ),
        "attention out + residual": (
            lambda x, i, pos, **kw: matmul_add(x, out_w[i], x[:, :D], interpret=interpret, **kw),
            lambda x, i, pos: reference_matmul_add(x, out_w[i], x[:, :D]),
            HEADS * HEAD_DIM,
            [(16, 4, 4), (32, 4, 4), (64, 4, 3), (64, 8, 3), (128, 8, 3)],
        ),
        "down + residual": (
            lambda x, i, pos, **kw: matmul_add(x, down_w[i], x[:, :D], interpret=interpret, **kw),
            lambda x, i, pos: reference_matmul_add(x, down_w[i], x[:, :D]),
            HIDDEN,
            [(16, 4, 4), (32, 4, 4), (64, 4, 3), (64, 8, 3), (128, 8, 3)],
        ),
    }
    if args.quick:
        pieces = {k: (*v[:3], v[3][:1]) for k, v in pieces.items()}

    rows_out = []
    for rows in args.rows:
        positions = jnp.arange(rows) + 600
        for name, (kernel, reference, width, tunables) in pieces.items():
            x = jax.random.normal(next(keys), (rows, width), bf)

            def all_layers(fn, x, positions):
                return [fn(x, i, positions) for i in range(LAYERS)]

            exact = jax.jit(functools.partial(all_layers, functools.partial(_f32, reference)))(x, positions)
            ref_fn = jax.jit(functools.partial(all_layers, reference))
            ref_out = ref_fn(x, positions)
            budget = _max_delta(ref_out, exact)
            rows_out.append((rows, name, "XLA", *_times(ref_fn, x, positions, args.repeats), budget, ""))
            print(*rows_out[-1], flush=True)
            for block_n, num_warps, num_stages in tunables:
                options = {"block_n": block_n, "num_warps": num_warps, "num_stages": num_stages}
                fn = jax.jit(functools.partial(all_layers, functools.partial(kernel, **options)))
                try:
                    out = fn(x, positions)
                    times = _times(fn, x, positions, args.repeats)
                except Exception as error:  # a block shape the compiler rejects is a finding, not a crash
                    note = str(error).replace("\n", " ")[:80]
                    rows_out.append((rows, name, str(options), float("nan"), float("nan"), float("nan"), note))
                    continue
                rows_out.append((rows, name, str(options), *times, _max_delta(out, exact), ""))
                print(*rows_out[-1], flush=True)

    lines = [
        "# Fused expert kernels vs XLA (`benchmarks/gpu_kernels.py`)",
        "",
        environment(),
        "",
        "| rows | piece | variant | wall µs per layer | GPU kernel µs per layer | max abs diff from float32 | note |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r} | {n} | {v} | {us:.2f} | {gpu:.2f} | {d:.4g} | {note} |" for r, n, v, us, gpu, d, note in rows_out
    ]
    emit("\n".join(lines), args.out)


def _times(fn, x, positions, repeats) -> tuple[float, float]:
    """(wall µs, summed GPU kernel µs) per layer of one call."""
    wall = median_ms(functools.partial(fn, x, positions), repeats) / LAYERS * 1000
    _, table = kernel_times(functools.partial(fn, x, positions), 5)
    gpu = sum(ms for ms, *_ in table.values()) / LAYERS * 1000 if table else float("nan")
    return wall, gpu


def _f32(reference, x, i, positions):
    """The reference piece in float32 arithmetic on the same bf16 inputs (weights upcast inside)."""
    with jax.default_matmul_precision("highest"):
        return reference(x.astype(jnp.float32), i, positions)


def _max_delta(got, want) -> float:
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    return max(
        float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()) for a, b in zip(got, want, strict=True)
    )


if __name__ == "__main__":
    main()
