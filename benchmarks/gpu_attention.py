"""An experiment, kept to be rerun: the flow steps' attention alone on one GPU, XLA's kernels (the token-major layer
as ``Attention.forward`` writes it) against ``cached_attention`` below, one Pallas (Triton backend) kernel over key
splits plus a small combine (flash decoding), for several block shapes and split counts. π0's shapes: 51 query
tokens × 8 heads over one key head of dim 256, 608 keys (the LIBERO prefix padded, then the suffix's own keys), the
mask as the flow steps build it (prefix keys that exist, the state token not seeing the actions).

Result on an H100 (``results/gpu_attention_h100.md``): no block shape beats XLA's three kernels (≈ 14 µs a layer at
batch 1, 32 µs at batch 8), and a chunk with the kernel in every flow step was slower (``NOTES-gpu.md``, sixth
round), so the library does not use it.

Each timed call runs 18 layers' attention over distinct keys and values, as a flow step does; the table gives wall
and summed GPU-kernel µs per layer and each variant's max |Δ| from XLA's output and from float32 arithmetic on the
same bf16 inputs (XLA's own distance from float32 is the rounding budget). Off a GPU, ``--interpret`` runs the kernel
through Pallas' interpreter on small shapes (a check of its arithmetic only).

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_attention.py [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import itertools
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

LAYERS, TOKENS, HEADS, HEAD_DIM, KEYS, PREFIX_VALID = 18, 51, 8, 256, 608, 528


# ------------------------------------------------------------------------------------------ the kernel
TOKEN_BLOCK = 8
"""Query tokens per program; each program takes all query heads that share a key head, so its rows are
``TOKEN_BLOCK × heads-per-key-head`` (64 for π0)."""
KEY_BLOCK = 64
"""Keys per loop iteration of a program."""
KEY_SPLITS = 4
"""The keys are cut into this many contiguous splits, one program each (per token block): more SMs read the cache,
at the cost of more partial results to combine."""


def _split_kernel(q_ref, k_ref, v_ref, mask_ref, acc_ref, max_ref, sum_ref, *, tokens, keys, group, token_block,
                  key_block, span):  # fmt: skip
    """One (batch, key head, token block, key split): ``token_block × group`` query rows against the split's
    ``span`` keys, ``key_block`` at a time with a running max (flash attention). Writes the split's max logit, sum
    of exponentials and exponentials·values (the exponentials rounded to the value dtype, as the probabilities are
    in the unfused layer; float32 accumulator)."""
    b, kv_head, token_blk, split = (pl.program_id(i) for i in range(4))
    t0 = token_blk * token_block
    tokens_ok = t0 + jnp.arange(token_block) < tokens
    heads = pl.ds(kv_head * group, group)
    head_dim = q_ref.shape[-1]
    rows = token_block * group

    q = plgpu.load(q_ref.at[b, pl.ds(t0, token_block), heads, :], mask=tokens_ok[:, None, None], other=0.0)
    q = q.reshape(rows, head_dim)

    def chunk(i, carry):
        top, total, acc = carry
        s0 = split * span + i * key_block
        keys_ok = s0 + jnp.arange(key_block) < keys
        k = plgpu.load(k_ref.at[b, pl.ds(s0, key_block), kv_head, :], mask=keys_ok[:, None], other=0.0)
        v = plgpu.load(v_ref.at[b, pl.ds(s0, key_block), kv_head, :], mask=keys_ok[:, None], other=0.0)
        visible = plgpu.load(
            mask_ref.at[b, pl.ds(t0, token_block), pl.ds(s0, key_block)],
            mask=tokens_ok[:, None] & keys_ok[None, :],
            other=0,
        )
        visible = jnp.broadcast_to(visible[:, None, :] != 0, (token_block, group, key_block))
        logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        # A hidden key gets the unfused layer's mask value (a row that sees nothing is then uniform, as there); a
        # key past the cache's end gets -inf, so it adds nothing even then.
        logits = jnp.where(visible.reshape(rows, key_block), logits, ops.ATTENTION_MASK_VALUE)
        logits = jnp.where(jnp.broadcast_to(keys_ok[None, :], (rows, key_block)), logits, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(logits, axis=1))
        shift = jnp.where(new_top == -jnp.inf, 0.0, new_top)  # no key yet: keep exp() away from -inf - -inf
        scale = jnp.exp(top - shift)
        exps = jnp.exp(logits - shift[:, None])
        total = total * scale + jnp.sum(exps, axis=1)
        acc = acc * scale[:, None] + jnp.dot(exps.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return new_top, total, acc

    init = (
        jnp.full((rows,), -jnp.inf, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
        jnp.zeros((rows, head_dim), jnp.float32),
    )
    top, total, acc = lax.fori_loop(0, span // key_block, chunk, init)

    plgpu.store(acc_ref.at[b, split, pl.ds(t0, token_block), heads, :], acc.reshape(token_block, group, head_dim),
                mask=tokens_ok[:, None, None])  # fmt: skip
    plgpu.store(max_ref.at[b, split, pl.ds(t0, token_block), heads], top.reshape(token_block, group),
                mask=tokens_ok[:, None])  # fmt: skip
    plgpu.store(sum_ref.at[b, split, pl.ds(t0, token_block), heads], total.reshape(token_block, group),
                mask=tokens_ok[:, None])  # fmt: skip


def combine_blocks(acc: jax.Array, block_max: jax.Array, block_sum: jax.Array, dtype) -> jax.Array:
    """The softmax-weighted values from per-key-split partials: acc [B, J, T, N, H] (each split's exponentials
    times values, relative to its max logit), block_max/block_sum [B, J, T, N] → [B, T, N, H] in ``dtype``."""
    top = jnp.max(block_max, axis=1, keepdims=True)
    weight = jnp.where(block_max == -jnp.inf, 0.0, jnp.exp(block_max - top))  # a split past the cache's end
    total = jnp.sum(weight * block_sum, axis=1)
    return (jnp.sum(weight[..., None] * acc, axis=1) / total[..., None]).astype(dtype)


@functools.partial(
    jax.jit, static_argnames=("token_block", "key_block", "key_splits", "num_warps", "num_stages", "interpret")
)
def cached_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    token_block: int = TOKEN_BLOCK,
    key_block: int = KEY_BLOCK,
    key_splits: int = KEY_SPLITS,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> jax.Array:
    """Attention of q [B, T, N, H] (already rotated and scaled) over k/v [B, S, K, H] with mask bool [B, T, S]
    (which keys each query sees) → [B, T, N, H] in q's dtype.

    Logits and softmax statistics in float32, the second product over exponentials rounded to the value dtype with
    a float32 accumulator, as the unfused layer; the normalisation is applied to each output row at the end (flash
    attention), so results differ from the unfused layer by rounding. ``interpret``: run through Pallas'
    interpreter (any backend; slow — for checking the arithmetic)."""
    batch, tokens, heads, head_dim = q.shape
    _, keys, kv_heads, _ = k.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim or heads % kv_heads:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: expected k = v = [B, S, K, H] with K dividing N")
    if mask.shape != (batch, tokens, keys):
        raise ValueError(f"mask has shape {mask.shape}, expected {(batch, tokens, keys)}")
    group = heads // kv_heads
    token_blocks = pl.cdiv(tokens, token_block)
    splits = max(1, min(key_splits, pl.cdiv(keys, key_block)))
    span = pl.cdiv(pl.cdiv(keys, splits), key_block) * key_block  # keys per split, whole blocks
    splits = pl.cdiv(keys, span)
    kernel = functools.partial(
        _split_kernel, tokens=tokens, keys=keys, group=group, token_block=token_block, key_block=key_block, span=span
    )
    partial_shape = (batch, splits, tokens, heads)
    acc, block_max, block_sum = pl.pallas_call(
        kernel,
        grid=(batch, kv_heads, token_blocks, splits),
        out_shape=[
            jax.ShapeDtypeStruct((*partial_shape, head_dim), jnp.float32),
            jax.ShapeDtypeStruct(partial_shape, jnp.float32),
            jax.ShapeDtypeStruct(partial_shape, jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="cached_attention",
    )(q, k, v, mask.astype(jnp.int8))
    return combine_blocks(acc, block_max, block_sum, q.dtype)


# -------------------------------------------------------------------------------------- the measurement


def xla_attention(q, k, v, mask):
    """``Attention.forward``'s token-major arithmetic for one key head: q [B, T, N, H], k/v [B, S, 1, H]."""
    b, t, n, h = q.shape
    q = q.reshape(b, t, 1, n, h)
    logits = jnp.einsum("BTKGH,BSKH->BKTGS", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, :, None, :], logits, ops.ATTENTION_MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(k.dtype)
    encoded = lax.dot_general(probs, v, (((4,), (1,)), ((0, 1), (0, 2))))
    return jnp.transpose(encoded, (0, 2, 1, 3, 4)).reshape(b, t, n, h)


def inputs(batch: int, seed: int = 0, small: bool = False):
    """q/k/v for 18 layers (2 small ones: 11 tokens over 100 keys) and the flow steps' mask."""
    layers, tokens, keys, valid = (2, 11, 100, 40) if small else (LAYERS, TOKENS, KEYS, PREFIX_VALID)
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(layers, batch, tokens, HEADS, HEAD_DIM)) * 0.06, jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=(layers, batch, keys, 1, HEAD_DIM)), jnp.bfloat16)
    v = jnp.asarray(rng.normal(size=(layers, batch, keys, 1, HEAD_DIM)), jnp.bfloat16)
    prefix = keys - tokens
    index = np.arange(keys)
    mask = np.broadcast_to((index < valid) | (index >= prefix), (batch, tokens, keys)).copy()
    mask[:, 0, prefix + 1 :] = False  # the state token sees the prefix and itself
    return q, k, v, jnp.asarray(mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--token-blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--key-blocks", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--key-splits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--warps", type=int, nargs="+", default=[4])
    parser.add_argument("--stages", type=int, nargs="+", default=[2])
    parser.add_argument("--interpret", action="store_true", help="small shapes through Pallas' interpreter")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    def layers(attention):
        return jax.jit(lambda q, k, v, m: jnp.stack([attention(q[i], k[i], v[i], m) for i in range(len(q))]))

    rows = []
    for batch in args.batches:
        q, k, v, mask = inputs(batch, small=args.interpret)
        exact = np.asarray(
            jax.jit(jax.vmap(xla_attention, (0, 0, 0, None)))(
                *(a.astype(jnp.float32) for a in (q, k, v)), mask
            ),
            np.float64,
        )  # fmt: skip
        variants = [("xla", xla_attention)] + [
            (f"kernel tokens {t} keys {s} splits {j} warps {w} stages {g}",
             functools.partial(cached_attention, token_block=t, key_block=s, key_splits=j, num_warps=w,
                               num_stages=g, interpret=args.interpret))
            for t, s, j, w, g in itertools.product(
                args.token_blocks, args.key_blocks, args.key_splits, args.warps, args.stages
            )
        ]  # fmt: skip
        reference = None
        for name, attention in variants:
            run = layers(attention)
            try:
                out = np.asarray(run(q, k, v, mask), np.float64)
            except Exception as error:  # a block shape Triton rejects must not lose the others
                print(f"[b{batch} {name}] failed: {type(error).__name__}: {str(error)[:400]}", flush=True)
                continue
            reference = out if reference is None else reference
            wall = median_ms(functools.partial(run, q, k, v, mask), args.repeats) * 1000 / len(q)
            _, table = kernel_times(functools.partial(run, q, k, v, mask), 5)
            gpu = sum(ms for ms, _ in table.values()) * 1000 / len(q)
            launches = sum(n for _, n in table.values()) / len(q)
            row = (batch, name, wall, gpu, launches, np.abs(out - reference).max(), np.abs(out - exact).max())
            rows.append(row)
            print(*row, flush=True)
    lines = [
        "# The flow steps' attention alone (`benchmarks/gpu_attention.py`)",
        "",
        environment(),
        "",
        "| batch | variant | wall µs / layer | GPU µs / layer | kernels / layer | max abs diff from XLA | max abs diff "
        "from float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {b} | {n} | {w:.2f} | {g:.2f} | {k:.1f} | {d:.4g} | {e:.4g} |" for b, n, w, g, k, d, e in rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
