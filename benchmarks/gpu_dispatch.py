"""Where the host sits in a chunk's wall time at batch 1: handling the program's arguments (the model's ~800
weight arrays) before the device can start, and returning from the call.

Full-size π0 with random bf16 weights, compact LIBERO layout, the default GPU path (as ``gpu_profile.py``'s
``aligned_attention=true`` variant). Each row is the median wall time of blocked calls:

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_dispatch.py
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import TINY_MODEL, environment, median_ms
from pi0_latency import libero_observation, random_params

from textlatent.checkpoint import model_from_params
from textlatent.model import Pi0Config
from textlatent.model.pi0 import compact_observation

OPTIONS = {"one_image_pass": True, "expert_weights_per_layer": True, "aligned_attention": True}


def return_ms(fn, repeats: int) -> float:
    """Median time until ``fn()`` returns (JAX dispatches asynchronously), each result waited for afterwards."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
        jax.block_until_ready(out)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    base = Pi0Config(dtype="bfloat16", **(TINY_MODEL if args.tiny else {}))
    config = dataclasses.replace(base, **OPTIONS)
    model = model_from_params(config, random_params(base, jnp.bfloat16))
    graphdef, state = nnx.split(model)
    weights = jax.block_until_ready(model.layer_weights())
    full_state = (state, weights)
    leaves, treedef = jax.tree.flatten(full_state)
    obs = compact_observation(libero_observation(base, 1), base.max_token_len)
    noise = jax.random.normal(jax.random.key(0), (1, base.action_horizon, base.action_dim))

    def sample(state, obs, noise):
        return nnx.merge(graphdef, state[0]).sample_actions(None, obs, noise=noise, layer_weights=state[1])

    def sample_flat(leaves, obs, noise):
        return sample(jax.tree.unflatten(treedef, leaves), obs, noise)

    def first(_, obs, noise):  # every weight array passed in, none read
        return noise[0, 0, 0] + 1

    chunk = jax.jit(sample).lower(full_state, obs, noise).compile()
    chunk_flat = jax.jit(sample_flat).lower(leaves, obs, noise).compile()
    noop = jax.jit(first, keep_unused=True).lower(full_state, obs, noise).compile()
    noop_flat = jax.jit(first, keep_unused=True).lower(leaves, obs, noise).compile()
    noop_bare = jax.jit(lambda obs, noise: noise[0, 0, 0] + 1).lower(obs, noise).compile()

    tiny_leaves = [jnp.zeros((8,), a.dtype) for a in leaves]  # as many arrays, a few bytes each
    noop_tiny = jax.jit(first, keep_unused=True).lower(tiny_leaves, obs, noise).compile()
    flat_args = jax.tree.leaves((leaves, obs, noise))
    runtime = noop_flat._executable.xla_executable  # below jax's own dispatch: the runtime's execute alone

    def noop_runtime():
        return runtime.execute_sharded(flat_args).disassemble_into_single_device_arrays()

    r = args.repeats
    rows = [
        ("chunk, (nnx state, layer weights)", median_ms(lambda: chunk(full_state, obs, noise), r),
         return_ms(lambda: chunk(full_state, obs, noise), r)),
        ("chunk, flat list of arrays", median_ms(lambda: chunk_flat(leaves, obs, noise), r),
         return_ms(lambda: chunk_flat(leaves, obs, noise), r)),
        ("no-op, (nnx state, layer weights)", median_ms(lambda: noop(full_state, obs, noise), r),
         return_ms(lambda: noop(full_state, obs, noise), r)),
        ("no-op, flat list of arrays", median_ms(lambda: noop_flat(leaves, obs, noise), r),
         return_ms(lambda: noop_flat(leaves, obs, noise), r)),
        ("no-op, observation and noise only", median_ms(lambda: noop_bare(obs, noise), r),
         return_ms(lambda: noop_bare(obs, noise), r)),
        ("no-op, as many arrays of 8 elements", median_ms(lambda: noop_tiny(tiny_leaves, obs, noise), r),
         return_ms(lambda: noop_tiny(tiny_leaves, obs, noise), r)),
        ("no-op, flat list, runtime execute_sharded", median_ms(noop_runtime, r), return_ms(noop_runtime, r)),
    ]  # fmt: skip
    print(environment())
    distinct = {id(x): x for x in leaves}  # the layer weights also hold some of the state's stacks (unused there)
    print(
        f"\n{len(leaves)} weight arrays passed ({len(distinct)} distinct, "
        f"{sum(x.nbytes for x in distinct.values()) / 2**30:.2f} GiB on the device)\n"
    )
    print("| program, arguments | wall ms (blocked) | ms until the call returns |")
    print("|---|---|---|")
    for name, wall, ret in rows:
        print(f"| {name} | {wall:.3f} | {ret:.3f} |")


if __name__ == "__main__":
    main()
