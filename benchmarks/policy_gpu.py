"""The user-facing path on a GPU, end to end: ``Policy.infer`` (host transforms, the jitted chunk with the policy's
default options and XLA settings, results back on the host) at batch 1 and 8, and ``LatentCapture.add`` at batch 32
and 64. Full-size π0 with random bf16 weights, LIBERO requests of 256×256 frames.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/policy_gpu.py --out benchmarks/results/policy_h100.md
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from capture import VARIANTS, build_policy, frames
from common import emit, environment, median_ms

from textlatent.latents.capture import LatentCapture
from textlatent.policy.policy import _sample


def host_breakdown(policy, request: dict, repeats: int) -> None:
    """Median ms of each step ``Policy.infer`` takes for one request, in its order, printed."""
    program = policy.jitted(policy.bound(_sample), 1, static_argnames=("num_steps",))
    steps: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return out

    for i in range(repeats + 2):
        inputs = timed("transforms.inputs", lambda: policy.transforms.inputs(request))
        inputs.pop("batched")
        observation = timed("model observation (image conversion)", lambda i=inputs: policy._observation(i))
        seed = jax.random.key(i)
        key = timed("key split", lambda k=seed: jax.random.split(k)[1])
        call = functools.partial(program, policy.model_split[1], key, observation, None, None, policy.layer_weights,
                                 num_steps=policy.config.num_steps)  # fmt: skip
        actions = timed("dispatch of the program", call)
        timed("device work not overlapped", lambda a=actions: jax.block_until_ready(a))
        host = timed("actions to the host", lambda a=actions: np.asarray(jax.device_get(a)))
        timed("transforms.outputs", lambda h=host, i=inputs: policy.transforms.outputs(h, i["state"]))
        if i < 2:  # warm-up
            steps.clear()
    for name, times in steps.items():
        print(f"infer step: {name}: {statistics.median(times):.3f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--breakdown", action="store_true", help="also time the steps of infer at batch 1")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    policy = build_policy(args.variant)
    if args.breakdown:
        host_breakdown(policy, {k: v[0] for k, v in frames(1).items()}, args.repeats)
    options = {k: getattr(policy.model.config, k) for k in ("one_image_pass", "expert_weights_per_layer",
               "aligned_attention", "flash_attention", "weights_per_layer")}  # fmt: skip
    rows = []
    for batch in (1, 8):
        request = frames(batch)
        if batch == 1:
            request = {k: v[0] for k, v in request.items()}  # a single, unbatched request, as a robot sends it
        ms = median_ms(lambda request=request: policy.infer(request)["actions"], args.repeats)
        rows.append((f"Policy.infer, batch {batch}", ms, f"{batch / ms * 1000:.1f} chunks/s"))
        # The same program alone, its inputs already on the device: the rest of infer is host work.
        inputs = policy.transforms.inputs(request)
        inputs.pop("batched")
        observation = policy._observation(inputs)
        head = (policy.model_split[1], jax.random.key(0), observation, None, None, policy.layer_weights)
        if hasattr(policy, "bound"):
            program = policy.jitted(policy.bound(_sample), batch, static_argnames=("num_steps",))
        else:  # older trees (a before/after comparison): the graphdef is a static argument
            program = policy.jitted(_sample, batch, static_argnums=(0,), static_argnames=("num_steps",))
            head = (policy.model_split[0], *head)
        call = functools.partial(program, *head, num_steps=policy.config.num_steps)
        alone = median_ms(call, args.repeats)
        rows.append((f"its device program alone, batch {batch}", alone, f"host side {ms - alone:.2f} ms"))
    for batch in (32, 64):
        request = frames(batch)
        capture = LatentCapture(policy, batch_size=batch)

        def add(capture=capture, request=request):
            capture.add(request)
            jax.block_until_ready(capture.running[request["prompt"][0]].sums)

        ms = median_ms(add, max(5, args.repeats // 2))
        rows.append((f"LatentCapture.add, batch {batch}, waited for", ms, f"{batch / ms * 1000:.1f} frames/s"))

        # As a capture over a dataset runs: requests back to back, the host preparing the next batch while the
        # device runs the last one (JAX dispatches asynchronously); waited for once at the end.
        def stream(capture=capture, request=request, count=8):
            for _ in range(count):
                capture.add(request)
            jax.block_until_ready(capture.running[request["prompt"][0]].sums)

        ms = median_ms(stream, 3) / 8
        rows.append((f"LatentCapture.add, batch {batch}, 8 back to back", ms, f"{batch / ms * 1000:.1f} frames/s"))
    lines = [
        f"# The policy end to end ({args.variant} π0, random bf16 weights, LIBERO requests of 256×256 frames)",
        "",
        f"{environment()}; median of {args.repeats} after warm-up; model options as resolved by the policy: {options}",
        "",
        "| what | median ms (per call) | rate |",
        "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {rate} |" for name, ms, rate in rows],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
