"""The user-facing path on a GPU, end to end: ``Policy.infer`` (host transforms, the jitted chunk with the policy's
default options and XLA settings, results back on the host) at batch 1 and 8, and ``LatentCapture.add`` at batch 32
and 64. Full-size π0 with random bf16 weights, LIBERO requests of 256×256 frames.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/policy_gpu.py --out benchmarks/results/policy_h100.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from capture import VARIANTS, build_policy, frames
from common import emit, environment, median_ms

from textlatent.latents.capture import LatentCapture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    policy = build_policy(args.variant)
    options = {k: getattr(policy.model.config, k) for k in ("one_image_pass", "expert_weights_per_layer",
               "aligned_attention", "flash_attention", "weights_per_layer")}  # fmt: skip
    rows = []
    for batch in (1, 8):
        request = frames(batch)
        if batch == 1:
            request = {k: v[0] for k, v in request.items()}  # a single, unbatched request, as a robot sends it
        ms = median_ms(lambda request=request: policy.infer(request)["actions"], args.repeats)
        rows.append((f"Policy.infer, batch {batch}", ms, f"{batch / ms * 1000:.1f} chunks/s"))
    for batch in (32, 64):
        request = frames(batch)
        capture = LatentCapture(policy, batch_size=batch)

        def add(capture=capture, request=request):
            capture.add(request)
            jax.block_until_ready(capture.running[request["prompt"][0]].sums)

        ms = median_ms(add, max(5, args.repeats // 2))
        rows.append((f"LatentCapture.add, batch {batch}", ms, f"{batch / ms * 1000:.1f} frames/s"))
    lines = [
        f"# The policy end to end ({args.variant} π0, random bf16 weights, LIBERO requests of 256×256 frames)",
        "",
        f"{environment()}; median of {args.repeats} after warm-up; model options as resolved by the policy: {options}",
        "",
        "| what | median ms | rate |",
        "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {rate} |" for name, ms, rate in rows],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
