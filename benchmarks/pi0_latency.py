"""π0 inference latency with random weights (no checkpoint needed), LIBERO layout: 3 image slots (1 masked),
48 prompt slots, 10 flow steps. Prints one table; with --out, writes it as markdown with device and versions.

    PYTHONPATH=src python benchmarks/pi0_latency.py --variant full --batch 1 8
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from textlatent.checkpoint import model_from_params
from textlatent.model import Observation, Pi0, Pi0Config

VARIANTS = {
    "full": dict(),
    "dummy": dict(paligemma_variant="dummy", action_expert_variant="dummy"),
}


def random_params(config: Pi0Config, dtype, seed: int = 0):
    """Random parameters made directly in ``dtype`` on the device (no float32 copy of the full model)."""
    abstract = nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))

    @jax.jit
    def make(key, like):
        fan_in = like.shape[-2] if like.ndim >= 2 else like.shape[-1]
        return (jax.random.normal(key, like.shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype)

    return jax.tree_util.tree_unflatten(
        treedef, [make(k, jnp.zeros(x.shape, jnp.bfloat16)) for k, x in zip(keys, leaves, strict=True)]
    )


def libero_observation(config: Pi0Config, batch: int, prompt_len: int = 12, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    h, w = config.image_resolution
    images = {k: jnp.asarray(rng.uniform(-1, 1, (batch, h, w, 3)), jnp.float32) for k in config.image_keys}
    masks = {k: jnp.full((batch,), k != config.image_keys[-1]) for k in config.image_keys}
    tokens = np.zeros((batch, config.max_token_len), np.int32)
    tokens[:, :prompt_len] = rng.integers(3, 1000, (batch, prompt_len))
    return Observation(
        images=images,
        image_masks=masks,
        state=jnp.asarray(rng.normal(size=(batch, config.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens),
        tokenized_prompt_mask=jnp.asarray(np.arange(config.max_token_len)[None] < prompt_len).repeat(batch, 0),
    )


def timed(fn, *args, repeats: int):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the table (markdown) here")
    args = parser.parse_args()

    bf16_config = Pi0Config(dtype="bfloat16", **VARIANTS[args.variant])
    params = random_params(bf16_config, jnp.bfloat16)
    model = model_from_params(bf16_config, params)
    graphdef, state = nnx.split(model)

    @jax.jit
    def sample(state, obs, noise):
        return nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise)

    @jax.jit
    def capture(state, obs):
        m = nnx.merge(graphdef, state)
        return m.prefix_residuals(obs, m.text_positions(jnp.arange(bf16_config.max_token_len)))

    rows = []
    for batch in args.batch:
        obs = libero_observation(bf16_config, batch)
        noise = jax.random.normal(jax.random.key(1), (batch, bf16_config.action_horizon, bf16_config.action_dim))
        med, best = timed(sample, state, obs, noise, repeats=args.repeats)
        rows.append((f"sample_actions bf16, batch {batch}", med, best, f"{batch / med * 1000:.1f} chunks/s"))
        med, best = timed(capture, state, obs, repeats=args.repeats)
        rows.append((f"prefix capture bf16, batch {batch}", med, best, f"{batch / med * 1000:.1f} frames/s"))

    # Same weights in float32 (bf16 values upcast): how far is openpi's bf16 serving arithmetic from full precision?
    f32_config = Pi0Config(dtype="float32", **VARIANTS[args.variant])
    del model
    f32_model = model_from_params(f32_config, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    f32_state = nnx.split(f32_model)[1]
    f32_graphdef = nnx.split(f32_model)[0]
    obs = libero_observation(bf16_config, 1)
    noise = jax.random.normal(jax.random.key(1), (1, bf16_config.action_horizon, bf16_config.action_dim))
    a16 = np.asarray(sample(state, obs, noise))
    a32 = np.asarray(
        jax.jit(lambda s, o, n: nnx.merge(f32_graphdef, s).sample_actions(None, o, noise=n))(f32_state, obs, noise)
    )
    rel = float(np.linalg.norm(a16 - a32) / np.linalg.norm(a32))

    device = jax.devices()[0].device_kind
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    lines = [
        f"# π0 latency ({args.variant}, random bf16 weights)",
        "",
        f"device: {device}; jax {jax.__version__}; python {platform.python_version()}; "
        f"date {datetime.date.today()}; commit {commit or '?'}; median of {args.repeats} after warm-up",
        "",
        "| what | median ms | min ms | rate |",
        "|---|---|---|---|",
        *[f"| {name} | {med:.2f} | {best:.2f} | {rate} |" for name, med, best, rate in rows],
        "",
        f"bf16 vs float32 actions (same weights, batch 1): relative L2 error {rel:.2e}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
