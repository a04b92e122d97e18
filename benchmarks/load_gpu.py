"""Device memory while a policy loads a full-size checkpoint, and what it holds afterwards: ``load_policy`` (which,
on an accelerator, reads the weights into host memory, cuts every layer and puts only the cuts on the device)
against a policy made from a model loaded onto the device first (the stacks and their cuts then meet on the
device). Each runs in a fresh process, so that its peak is its own.

Writes a full-size random bf16 checkpoint (openpi's layout, ~6 GB) to a temporary directory first.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/load_gpu.py --out benchmarks/results/load_h100.md
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment

MODES = {
    "load_policy": "`load_policy` (weights read into host memory, cut, the cuts put on the device)",
    "device load": "`Policy(load_model(...))` (weights loaded onto the device, then cut there)",
}


def _overrides(variant: str) -> dict:
    from textlatent.checkpoint.random import SMALL_RANDOM

    return {} if variant == "full" else SMALL_RANDOM


def child(mode: str, checkpoint: str, tokenizer: str, variant: str) -> dict:
    import textlatent
    from textlatent.checkpoint import load_model, load_norm_stats
    from textlatent.policy import LiberoTransforms, Policy, get_config
    from textlatent.tokenizer import PaligemmaTokenizer

    start = time.perf_counter()
    if mode == "load_policy":
        policy = textlatent.load_policy("pi0_libero", checkpoint, tokenizer=tokenizer, **_overrides(variant))
    else:
        config = get_config("pi0_libero", **_overrides(variant))
        stats = load_norm_stats(checkpoint, config.asset_id)
        transforms = LiberoTransforms.for_config(
            config, PaligemmaTokenizer(tokenizer, max_len=config.model.max_token_len), stats
        )
        policy = Policy(load_model(config.model, pathlib.Path(checkpoint) / "params"), config, transforms)
    gc.collect()
    jax.block_until_ready(policy.layer_weights)
    seconds = time.perf_counter() - start
    loaded = jax.devices()[0].memory_stats() or {}  # None on the CPU: a smoke test of the script
    rng = np.random.default_rng(0)
    request = {
        "observation/image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "put the cream cheese in the bowl",
    }
    actions = policy.infer(request)["actions"]
    served = jax.devices()[0].memory_stats() or {}
    return {
        "load s": seconds,
        "held GiB": loaded.get("bytes_in_use", float("nan")) / 2**30,
        "load peak GiB": loaded.get("peak_bytes_in_use", float("nan")) / 2**30,
        "peak after one infer GiB": served.get("peak_bytes_in_use", float("nan")) / 2**30,
        "actions finite": bool(np.isfinite(actions).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--variant", choices=("full", "small"), default="full", help="small: a quick check")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CHECKPOINT", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.variant)))
        return

    from pi0_latency import random_params

    from textlatent.checkpoint import write_checkpoint
    from textlatent.checkpoint.random import random_norm_stats
    from textlatent.policy import get_config
    from textlatent.tokenizer_training import train_tokenizer

    root = pathlib.Path(tempfile.mkdtemp())
    config = get_config("pi0_libero", **_overrides(args.variant))
    start = time.perf_counter()
    write_checkpoint(
        root / "checkpoint",
        random_params(config.model, jnp.bfloat16),
        stats=random_norm_stats(8, 7),
        asset_id=config.asset_id,
    )
    print(f"checkpoint written in {time.perf_counter() - start:.1f} s", flush=True)
    tokenizer = train_tokenizer(root / "tok.model")
    rows = []
    for mode, label in MODES.items():
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                args.variant,
                "--child",
                mode,
                str(root / "checkpoint"),
                str(tokenizer),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            print(done.stderr[-3000:], flush=True)
            raise SystemExit(f"{mode} failed")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, result, flush=True)
        rows.append((label, result))
    keys = list(rows[0][1])
    lines = [
        f"# Device memory of a policy loading π0 ({args.variant}, random bf16 checkpoint, openpi's layout)",
        "",
        f"{environment()}; each row a fresh process",
        "",
        "| path | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        *[
            f"| {label} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
            for label, r in rows
        ],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
