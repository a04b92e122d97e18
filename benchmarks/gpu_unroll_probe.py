"""One measurement per process: `sample_actions` (compact LIBERO prefix, full-size π0, random bf16 weights) with the
layer scan and/or the flow loop unrolled from outside the library, to decide whether to build either.

    PYTHONPATH=src python benchmarks/gpu_unroll_probe.py layers|flow|none
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from pi0_latency import libero_observation, random_params

from textlatent.checkpoint import model_from_params
from textlatent.model import Pi0Config
from textlatent.model import gemma as gemma_module
from textlatent.model import pi0 as pi0_module
from textlatent.model.pi0 import compact_observation


def main(variant: str) -> None:
    if variant in ("layers", "both"):
        scan = gemma_module.lax.scan
        gemma_module.lax.scan = lambda f, init, xs, **kw: scan(f, init, xs, unroll=True, **kw)
    if variant in ("flow", "both"):

        def while_loop(cond, body, carry):
            for _ in range(10):
                carry = body(carry)
            return carry

        pi0_module.jax.lax.while_loop = while_loop
    config = Pi0Config(dtype="bfloat16")
    model = model_from_params(config, random_params(config, jnp.bfloat16))
    graphdef, state = nnx.split(model)

    @jax.jit
    def sample(state, obs, noise):
        return nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise)

    for batch in (1, 8):
        obs = compact_observation(libero_observation(config, batch), config.max_token_len)
        noise = jax.random.normal(jax.random.key(1), (batch, config.action_horizon, config.action_dim))
        start = time.perf_counter()
        jax.block_until_ready(sample(state, obs, noise))
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(20):
            start = time.perf_counter()
            jax.block_until_ready(sample(state, obs, noise))
            times.append((time.perf_counter() - start) * 1000)
        print(f"{variant}: batch {batch}: {statistics.median(times):.2f} ms (first call {compile_s:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
