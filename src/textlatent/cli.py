"""Command line: ``textlatent demo`` (random-weight π0 end to end), ``checkpoint`` (inspect one), ``serve`` (policy server)."""

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

        root = self.out or pathlib.Path(tempfile.mkdtemp(prefix="textlatent-demo-"))
        overrides = dict(
            paligemma_variant=self.paligemma_variant,
            action_expert_variant=self.action_expert_variant,
            siglip_variant=self.siglip_variant,
            dtype=self.dtype,
        )
        start = time.perf_counter()
        checkpoint, tokenizer = write_random_setup(root, "pi0_libero", overrides)
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


@dataclasses.dataclass
class Serve:
    """Serve a π0 policy over openpi's websocket protocol (the stock openpi-client works unchanged), batching
    concurrent clients into shared model calls; requests may steer it with registered text latents."""

    checkpoint: str | None = None
    """Checkpoint directory: local, gs://… or hf://… (or --random)."""
    config: str = "pi0_libero"
    """openpi config name."""
    tokenizer: str | None = None
    """SentencePiece model (default: PaliGemma's, downloaded once)."""
    random: bool = False
    """Serve a small random-weight checkpoint written on the fly (for demos and tests: its actions mean nothing)."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for every interface, as openpi's default)."""
    port: int = 8000
    max_batch: int = 8
    """Most requests in one model call (batches are padded to powers of two up to this)."""
    max_wait_ms: float = 5.0
    """How long a request may wait for others to share its model call."""
    batch_invariant: bool = False
    """Run every model call at --max-batch rows: a request's actions are then bit-identical whatever shared its call
    (otherwise equal to float rounding across batch sizes). Costs latency at low load."""
    max_request_mb: float = 16.0
    """Larger requests get an error reply; frames over 4× this are refused unread (close code 1009)."""
    max_request_rows: int = 64
    """Most observations one batched request may carry."""
    max_connections: int = 256
    api_key: str | None = None
    """Require the header 'Authorization: Api-Key <key>' (openpi_client's api_key=)."""
    latents: tuple[pathlib.Path, ...] = ()
    """Text-latent files or directories of *.safetensors to register for steering (name = file stem)."""
    dtype: Literal["bfloat16", "float32"] | None = None
    """Override the config's dtype (bfloat16 is openpi's serving arithmetic)."""
    warmup: bool = False
    """Compile every batch size before accepting clients."""
    log_level: Literal["debug", "info", "warning"] = "info"
    """debug: one line per request; info: connections and a summary line a minute."""

    def run(self) -> None:
        import logging
        import os

        # JAX would otherwise reserve 75% of GPU memory up front; a server should hold what it uses.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)

        import textlatent
        from textlatent.latents import load_latents
        from textlatent.serving import PolicyServer, ServerConfig

        if (self.checkpoint is None) == (not self.random):
            raise SystemExit("give exactly one of --checkpoint DIR|gs://…|hf://… and --random")
        overrides = {} if self.dtype is None else {"dtype": self.dtype}
        checkpoint, tokenizer = self.checkpoint, self.tokenizer
        if self.random:
            from textlatent.checkpoint.download import cache_dir

            checkpoint, tokenizer = write_random_setup(cache_dir() / "random" / self.config, self.config, SMALL_RANDOM)
            overrides = {**SMALL_RANDOM, **overrides}
            print(f"serving RANDOM weights from {checkpoint} (actions mean nothing)")
        policy = textlatent.load_policy(self.config, checkpoint, tokenizer=tokenizer, **overrides)
        server = PolicyServer(
            policy,
            ServerConfig(
                host=self.host,
                port=self.port,
                max_batch=self.max_batch,
                max_wait_ms=self.max_wait_ms,
                batch_invariant=self.batch_invariant,
                max_request_mb=self.max_request_mb,
                max_request_rows=self.max_request_rows,
                max_connections=self.max_connections,
                api_key=self.api_key,
            ),
            latents=load_latents(self.latents),
        )
        if self.warmup:
            for size, seconds in server.engine.warmup().items():
                print(f"compiled batch {size} in {seconds:.1f} s")
        server.run()


SMALL_RANDOM = {"paligemma_variant": "dummy", "action_expert_variant": "dummy", "siglip_variant": "mu/14"}


def write_random_setup(root: pathlib.Path, config_name: str, overrides: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """A random-weight checkpoint (openpi layout) and a small tokenizer under ``root``, each written once:
    (checkpoint, tokenizer)."""
    from textlatent.checkpoint.random import write_random_checkpoint
    from textlatent.policy import get_config
    from textlatent.tokenizer_training import train_tokenizer

    config = get_config(config_name, **overrides)
    checkpoint, tokenizer = root / "checkpoint", root / "tokenizer.model"
    if not (checkpoint / "params").exists():
        write_random_checkpoint(checkpoint, config.model, asset_id=config.asset_id)
    if not tokenizer.exists():
        train_tokenizer(tokenizer)
    return checkpoint, tokenizer


def main(argv: list[str] | None = None) -> None:
    command = tyro.extras.subcommand_cli_from_dict(
        {"demo": Demo, "checkpoint": Checkpoint, "serve": Serve},
        description="textlatent: π0 as openpi computes it, with text-latent access.",
        args=argv,
    )
    command.run()


if __name__ == "__main__":
    main()
