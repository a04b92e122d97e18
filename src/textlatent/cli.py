"""Command line: ``textlatent demo`` (random-weight π0 end to end) and ``textlatent checkpoint`` (inspect one)."""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time
from typing import Literal

import tyro


@dataclasses.dataclass
class Demo:
    """Write a small random-weight π0 checkpoint in openpi's layout, load it with ``load_policy`` and run inference on
    a synthetic LIBERO observation. Random weights: the actions mean nothing; the numbers show the pipeline works."""

    out: pathlib.Path | None = None
    """Where to write the checkpoint and tokenizer (default: a temporary directory)."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """bfloat16 = openpi's serving arithmetic; float32 = full precision."""
    paligemma_variant: str = "dummy"
    action_expert_variant: str = "dummy"
    siglip_variant: str = "mu/14"
    """Vision tower size; So400m/14 is π0's real one (large to write on a CPU)."""
    prompt: str = "put the bowl on the plate"
    repeats: int = 5
    """Timed inferences after the first (compiling) one."""

    def run(self) -> None:
        import numpy as np

        import textlatent
        from textlatent.checkpoint.random import write_random_checkpoint
        from textlatent.policy import get_config
        from textlatent.tokenizer_training import train_tokenizer

        root = self.out or pathlib.Path(tempfile.mkdtemp(prefix="textlatent-demo-"))
        overrides = dict(
            paligemma_variant=self.paligemma_variant,
            action_expert_variant=self.action_expert_variant,
            siglip_variant=self.siglip_variant,
            dtype=self.dtype,
        )
        config = get_config("pi0_libero", **overrides)
        checkpoint = root / "checkpoint"
        start = time.perf_counter()
        if not (checkpoint / "params").exists():
            write_random_checkpoint(checkpoint, config.model, asset_id=config.asset_id)
        tokenizer = root / "tokenizer.model"
        if not tokenizer.exists():
            train_tokenizer(tokenizer)
        print(f"random-weight checkpoint (openpi layout): {checkpoint}  [{time.perf_counter() - start:.1f} s]")
        print("  (weights are random: the policy does nothing useful; pass a real checkpoint to load_policy for that)")

        start = time.perf_counter()
        policy = textlatent.load_policy("pi0_libero", checkpoint, tokenizer=str(tokenizer), **overrides)
        print(f"loaded with load_policy('pi0_libero', ...) in {time.perf_counter() - start:.1f} s")

        rng = np.random.default_rng(0)
        obs = {
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8),
            "prompt": self.prompt,
        }
        start = time.perf_counter()
        out = policy.infer(obs)
        first = time.perf_counter() - start
        times = []
        for _ in range(self.repeats):
            out = policy.infer(obs)
            times.append(out["policy_timing"]["infer_ms"])
        actions = out["actions"]
        print(f"prompt: {self.prompt!r} -> tokens {policy.transforms.tokenizer.encode(self.prompt)}")
        print(f"actions: shape {actions.shape}, dtype {actions.dtype}")
        print("first step:", np.array2string(actions[0], precision=4, suppress_small=True))
        print("last step: ", np.array2string(actions[-1], precision=4, suppress_small=True))
        if times:
            print(
                f"latency: first call {first * 1000:.0f} ms (compiles), then median {np.median(times):.1f} ms "
                f"over {len(times)} calls ({self.dtype}, CPU/GPU as JAX found it)"
            )


@dataclasses.dataclass
class Checkpoint:
    """Describe an openpi checkpoint: parameter count, inferred variants, norm stats (no weights are loaded)."""

    path: tyro.conf.Positional[str]
    """Checkpoint directory: local, gs://… or hf://…"""

    def run(self) -> None:
        import math

        from textlatent.checkpoint import read_param_shapes, resolve_checkpoint
        from textlatent.checkpoint.params import guess_variants

        directory = resolve_checkpoint(self.path)
        shapes = read_param_shapes(directory / "params")
        total = sum(math.prod(s) for s in shapes.values())
        print(f"{directory}: {len(shapes)} leaves, {total:,} parameters")
        for key, value in guess_variants(shapes).items():
            print(f"  {key} = {value!r}")
        for stats in sorted((directory / "assets").rglob("norm_stats.json")) if (directory / "assets").exists() else []:
            print(f"  norm stats: {stats.parent.relative_to(directory / 'assets')}")


def main(argv: list[str] | None = None) -> None:
    command = tyro.extras.subcommand_cli_from_dict(
        {"demo": Demo, "checkpoint": Checkpoint},
        description="textlatent: π0 as openpi computes it, with text-latent access.",
        args=argv,
    )
    command.run()


if __name__ == "__main__":
    main()
