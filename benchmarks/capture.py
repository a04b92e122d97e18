"""Text-latent capture throughput (frames/s) vs batch size, with random weights (no checkpoint needed).

Rows: the device part alone (prefix-only forward + float32 sums of the prompt slots, on prepared inputs), the whole
`LatentCapture.add` (host transforms of 256×256 LeRobot-LIBERO frames + device), and for comparison the paper's
capture path on the same model: a full forward with the action expert and the flow-matching loss, at batch 1.

    uv run python benchmarks/capture.py --variant small --batch 1 8 32          # CPU
    PYTHONPATH=src python benchmarks/capture.py --variant full --batch 1 32 64   # GPU
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment, median_ms
from pi0_latency import random_params

from textlatent.checkpoint import model_from_params
from textlatent.checkpoint.random import random_norm_stats
from textlatent.latents.capture import LatentCapture, _prompt_sums
from textlatent.model import Observation, Pi0
from textlatent.model.pi0 import compact_observation
from textlatent.policy import LiberoTransforms, Policy, get_config
from textlatent.tokenizer import PaligemmaTokenizer
from textlatent.tokenizer_training import train_tokenizer

VARIANTS = {
    "full": {},
    "dummy": {"paligemma_variant": "dummy", "action_expert_variant": "dummy"},
    "small": {"paligemma_variant": "dummy", "action_expert_variant": "dummy", "siglip_variant": "mu/14"},
}


def build_policy(variant: str, *, with_model: bool = False) -> Policy | tuple[Policy, Pi0]:
    """The policy over random bf16 weights; ``with_model``: also the model it was made from (its stacked weights
    kept, for passes the policy does not run, such as the training forward)."""
    config = get_config("pi0_libero", **VARIANTS[variant])
    model = model_from_params(config.model, random_params(config.model, jnp.bfloat16))
    tokenizer_path = train_tokenizer(pathlib.Path(tempfile.mkdtemp()) / "tok.model")
    tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=config.model.max_token_len)
    transforms = LiberoTransforms.for_config(config, tokenizer, random_norm_stats(8, 7, seed=0))
    policy = Policy(model, config, transforms, metadata={"config": config.name})
    return (policy, model) if with_model else policy


def frames(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=(batch, 8)).astype(np.float32),
        "prompt": ["put the cream cheese in the bowl"] * batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="small")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    policy, model = build_policy(args.variant, with_model=True)
    policy_graphdef, policy_state = policy.model_split
    device_sums = jax.jit(_prompt_sums, static_argnums=(0,))
    rows = []
    for batch in args.batch:
        request = frames(batch)
        inputs = policy.transforms.inputs(request)
        inputs.pop("batched")
        full = Observation.from_dict(inputs)
        weights = jnp.ones(batch, jnp.float32)
        for layout, obs in (
            ("full layout", full),
            ("compact", compact_observation(full, policy.model.config.max_token_len)),
        ):
            obs = jax.device_put(obs)

            def sums(obs=obs, w=weights):
                return device_sums(policy_graphdef, policy_state, obs, w, policy.layer_weights)

            seconds = median_ms(sums, args.repeats) / 1000
            rows.append((f"device only (prefix forward + f32 sums), {layout}, batch {batch}", seconds, batch))
        capture = LatentCapture(policy, batch_size=batch)

        def add(capture=capture, request=request):
            capture.add(request)
            jax.block_until_ready(capture.running[request["prompt"][0]].sums)

        rows.append(
            (
                f"LatentCapture.add (host transforms + device, compact), batch {batch}",
                median_ms(add, args.repeats) / 1000,
                batch,
            )
        )

    # The paper's path: the whole training forward (prefix + action expert + loss) per frame, batch 1.
    request = frames(1)
    inputs = policy.transforms.inputs(request)
    inputs.pop("batched")
    obs = jax.device_put(Observation.from_dict(inputs))
    actions = jnp.zeros((1, policy.model.config.action_horizon, policy.model.config.action_dim), jnp.float32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def full_forward(state, obs, actions):
        model = nnx.merge(graphdef, state)
        slots = jnp.arange(model.config.max_token_len)
        states = model.prefix_residuals(obs, model.text_positions(slots)).astype(jnp.float32).sum(axis=1)
        return states, model.compute_loss(jax.random.key(0), obs, actions).mean()

    seconds = median_ms(lambda: full_forward(state, obs, actions), args.repeats) / 1000
    rows.append(("paper's path: full forward with action expert and loss, batch 1", seconds, 1))

    lines = [
        f"# Text-latent capture ({args.variant}, random bf16 weights, LIBERO layout, 256×256 frames)",
        "",
        f"{environment()}; median of {args.repeats} after warm-up",
        "",
        "| what | ms per call | frames/s |",
        "|---|---|---|",
        *[f"| {name} | {s * 1000:.2f} | {b / s:.1f} |" for name, s, b in rows],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
