"""What a kernel boundary costs inside one XLA program on this GPU, and how long one flow layer-step's weights take
to stream when read by k kernels: the two numbers that bound any XLA formulation of π0's flow steps at batch 1.

Three measurements, each a jitted program timed as a whole (median of ``--repeats`` waited-for calls), with the
kernels it launched counted by the profiler:

- a chain of n dependent 64×64 matrix products (distinct weights): time per kernel when a kernel does almost
  nothing, i.e. the launch, ramp-up and drain that XLA's CUDA graphs leave;
- the action expert's weights of one layer (34.6 MB in bf16; 18 distinct layers, so that nothing is served from
  L2 between layers) read and reduced by k dependent kernels per layer, k = 1 … 28: time per layer against k;
- the same with 51-row products in the expert's shapes (q/k/v, output, gate/up, down), as XLA compiles them.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_kernel_floor.py
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment, kernel_times, median_ms

LAYERS = 18
EXPERT_SHAPES = {"q/k/v": (1024, 2560), "output": (2048, 1024), "gate/up": (1024, 8192), "down": (4096, 1024)}
"""Input and output width of each of the action expert's products (width 1024, 8 query heads and 1 key/value head
of 256, feed-forward 4096): 17.3 M weights, 34.6 MB in bf16."""


def chain_of_products(n: int):
    """n dependent [64, 64] products: each kernel waits for the one before it and reads 8 KB."""

    def run(x, ws):
        for i in range(n):
            x = jnp.dot(x, ws[i % len(ws)])
        return x

    return jax.jit(run)


def streaming_reads(parts: int):
    """Each layer's weights ([rows, 1024] bf16) read by ``parts`` dependent row reductions (a kernel each, except
    that XLA splits a whole layer's reduction in two): every reduction's rows are scaled by an element of the previous
    one's result, so that XLA can neither merge nor reorder them."""

    def run(layers, scale):
        for weights in layers:
            for piece in jnp.split(weights, parts):
                scale = jnp.sum(piece.astype(jnp.float32) * scale, axis=1)[0] * 1e-9 + 1.0
        return scale

    return jax.jit(run)


def expert_products(rows: int):
    """Every layer's four products at ``rows`` rows, each fed by the one before it as in a flow step (q/k/v → its
    query columns → output → gate/up → its gate columns → down → residual)."""

    def run(weights, x):
        for qkv, out, gate_up, down in weights:
            h = jnp.dot(x, qkv)[:, : out.shape[0]]
            h = jnp.dot(jnp.dot(h, out), gate_up)[:, : down.shape[0]]
            x = x + jnp.dot(h, down)
        return x

    return jax.jit(run)


def measure(fn, args, repeats: int, show: bool = False) -> tuple[float, float, int]:
    """(median ms, GPU busy ms, kernels) of one call; ``show`` prints its kernels."""
    call = functools.partial(fn, *args)
    ms = median_ms(call, repeats)
    _, table = kernel_times(call, 3)
    if show:
        for name, (kernel_ms, launches) in sorted(table.items(), key=lambda kv: -kv[1][0])[:8]:
            print(f"    {kernel_ms:8.4f} ms {launches:5d}×  {name[:100]}")
    return ms, sum(r[0] for r in table.values()), sum(r[1] for r in table.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    key = jax.random.key(0)
    lines = [f"# Kernel boundaries and weight streaming in one XLA program\n\n{environment()}\n"]

    lines += [
        "| dependent 64×64 products | median ms | GPU busy ms | kernels | µs per kernel (wall) |",
        "|---|---|---|---|---|",
    ]
    ws = jax.random.normal(key, (64, 64, 64), jnp.bfloat16) * 0.1
    x = jax.random.normal(key, (64, 64), jnp.bfloat16)
    for n in (180, 720):
        ms, busy, kernels = measure(chain_of_products(n), (x, ws), args.repeats)
        lines.append(f"| {n} | {ms:.3f} | {busy:.3f} | {kernels} | {ms * 1000 / max(kernels, 1):.2f} |")
        print(lines[-1], flush=True)

    layer_rows = 16_884  # [16884, 1024] bf16: 34.6 MB, and 16884 rows divide into every k below
    layers = [jax.random.normal(jax.random.fold_in(key, i), (layer_rows, 1024), jnp.bfloat16) for i in range(LAYERS)]
    lines += [
        "",
        "| dependent reductions per layer (34.6 MB read) | µs per layer | GPU busy µs per layer | kernels | TB/s |",
        "|---|---|---|---|---|",
    ]
    for parts in (1, 2, 4, 7, 14, 28):
        ms, busy, kernels = measure(
            streaming_reads(parts), (layers, jnp.float32(1.0)), args.repeats, show=parts in (1, 14)
        )
        per_layer = ms * 1000 / LAYERS
        lines.append(
            f"| {parts} | {per_layer:.2f} | {busy * 1000 / LAYERS:.2f} | {kernels} | {2 * layer_rows * 1024 / per_layer / 1e6:.2f} |"
        )
        print(lines[-1], flush=True)
    del layers

    lines += [
        "",
        "| expert products at 51 rows, 18 layers | µs per layer | GPU busy µs per layer | kernels |",
        "|---|---|---|---|",
    ]
    weights = [
        [
            jax.random.normal(jax.random.fold_in(key, 100 * i + j), shape, jnp.bfloat16) * 0.02
            for j, shape in enumerate(EXPERT_SHAPES.values())
        ]
        for i in range(LAYERS)
    ]
    x = jax.random.normal(key, (51, 1024), jnp.bfloat16)
    ms, busy, kernels = measure(expert_products(51), (weights, x), args.repeats, show=True)
    lines.append(f"| all four | {ms * 1000 / LAYERS:.2f} | {busy * 1000 / LAYERS:.2f} | {kernels} |")
    print(lines[-1], flush=True)
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
