"""SigLIP So400m/14 alone on one GPU, over per-layer weights as the policy runs it: the feed-forward hidden width
padded at load time or not (``Transformer.layer_weights(hidden_multiple=...)``), and cuDNN's fused attention or
XLA's products, for 2 and 16 images (a LIBERO observation's two cameras at batch 1 and 8). Random bf16 weights.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_siglip.py [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment, median_ms

from textlatent.model import Pi0Config, ops
from textlatent.model.siglip import SigLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    config = Pi0Config()
    rows, references = [], {}
    for flash in (False, True):
        encoder = SigLIP(
            config.siglip, out_width=config.paligemma.width, num_patches=config.tokens_per_image,
            dtype="bfloat16", rngs=nnx.Rngs(0), flash_attention=flash,
        )  # fmt: skip
        graphdef, state = nnx.split(encoder)
        state = jax.tree.map(lambda a: a.astype(jnp.bfloat16), state)
        ops.FLASH_MIN_QUERIES = 0  # the option alone decides here
        for multiple in (1, 32):
            weights = nnx.merge(graphdef, state).layer_weights(hidden_multiple=multiple)
            run = jax.jit(lambda s, w, x, graphdef=graphdef: nnx.merge(graphdef, s)(x, layer_weights=w))
            for images in args.images:
                x = jax.random.uniform(jax.random.key(images), (images, 224, 224, 3), minval=-1.0, maxval=1.0)
                out = run(state, weights, x)
                reference = references.setdefault(images, out)  # the first variant: unpadded, unfused
                ms = median_ms(functools.partial(run, state, weights, x), args.repeats)
                delta = float(jnp.abs(out.astype(jnp.float32) - reference.astype(jnp.float32)).max())
                rows.append((images, flash, multiple, ms, delta))
                print(*rows[-1], flush=True)
    lines = [
        "# SigLIP So400m/14 alone (`benchmarks/gpu_siglip.py`)",
        "",
        environment(),
        "",
        "| images | cuDNN flash attention | hidden width padded to a multiple of | median ms | max abs diff from unpadded, unfused |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {f} | {m} | {ms:.3f} | {d:.4g} |" for i, f, m, ms, d in rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
