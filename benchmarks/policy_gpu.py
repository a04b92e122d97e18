"""The user-facing path on a GPU, end to end: ``Policy.infer`` (host transforms, the jitted chunk with the policy's
default options and XLA settings, results back on the host) at batch 1 and 8, and ``LatentCapture.add`` at batch 32
and 64; and the device memory the policy holds (its weights after loading, the peak while loading, each program's
temporary buffers). Full-size π0 with random bf16 weights, LIBERO requests of 256×256 frames.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/policy_gpu.py --out benchmarks/results/policy_h100.md
"""

from __future__ import annotations

import argparse
import functools
import gc
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
from textlatent.policy.transforms import resize_with_pad


def pixel_table_check() -> str:
    """Whether ``Policy``'s in-program table lookup gives the eager conversion's bits on this device, for every uint8
    value in images of three shapes; and how many values XLA's fused arithmetic would change."""
    from textlatent.model import Observation

    try:
        from textlatent.model.pi0 import lookup_pixel_values, uint8_pixel_values, uint8_to_unit_range
    except ImportError:  # an older tree (a before/after comparison) converts images eagerly
        return "pixel table: not in this tree (images converted by eager operations)"

    rng = np.random.default_rng(0)
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    images = [ramp] + [rng.integers(0, 256, shape).astype(np.uint8) for shape in ((2, 37, 23, 3), (1, 224, 224, 3))]
    obs = Observation(images=dict(enumerate(images)), image_masks={}, state=np.zeros((1, 4), np.float32))
    looked_up = jax.jit(lookup_pixel_values)(obs, uint8_pixel_values())
    same = all(
        np.array_equal(np.asarray(looked_up.images[i]).view(np.uint32),
                       np.asarray(uint8_to_unit_range(image)).view(np.uint32))
        for i, image in enumerate(images)
    )  # fmt: skip
    fused = jax.jit(lambda x: x.astype(np.float32) / 255.0 * 2.0 - 1.0)(ramp)
    changed = int((np.asarray(fused) != np.asarray(uint8_to_unit_range(ramp))).sum())
    return f"pixel table lookup gives the eager conversion's bits: {same}; fused arithmetic changes {changed} of 768"


def device_bytes() -> tuple[int, int] | None:
    """(bytes in use, peak bytes in use) on the first device, or None where the backend does not say."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_in_use" not in stats:
        return None
    return stats["bytes_in_use"], stats.get("peak_bytes_in_use", 0)


def checkpoint_bytes(config) -> int:
    """Bytes of π0's weights in bf16 (the checkpoint's parameters, as openpi serves them)."""
    from flax import nnx

    from textlatent.model import Pi0

    abstract = nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0)))
    return sum(int(np.prod(a.shape)) * 2 for a in jax.tree.leaves(nnx.state(abstract)))


def host_breakdown(policy, request: dict, repeats: int) -> None:
    """Median ms of each step ``Policy.infer`` takes for one request, in its order, printed."""
    from textlatent.policy.policy import _sample_and_advance

    program = policy.jitted(policy.bound(_sample_and_advance), 1, static_argnames=("num_steps",))
    steps: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append((time.perf_counter() - start) * 1000)
        return out

    key = jax.device_put(jax.random.key(0), jax.devices()[0])
    on_device = hasattr(policy, "resize_images")  # this code: images resized on the device (older trees: by PIL)
    for i in range(repeats + 2):
        if on_device:
            inputs = timed("transforms.inputs", lambda: policy.transforms.inputs(request, resize_images=False))
            inputs = timed("images resized on the device (dispatch)", lambda i=inputs: policy.resize_images(i))
        else:
            inputs = timed("transforms.inputs", lambda: policy.transforms.inputs(request))
        inputs.pop("batched")
        observation = timed("model observation", lambda i=inputs: policy._observation(i, convert_uint8=False))
        call = functools.partial(program, policy.model_split[1], key, observation, None, None, policy.layer_weights,
                                 policy._pixel_values, num_steps=policy.config.num_steps)  # fmt: skip
        actions, key = timed("dispatch of the program", call)
        if on_device:  # this code also queues the copy back behind the chunk
            timed("copy back queued", lambda a=actions: a.copy_to_host_async())
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

    check = pixel_table_check()
    print(check, flush=True)
    start = device_bytes()
    policy = build_policy(args.variant)  # the model it was made from is dropped here, as load_policy drops it
    gc.collect()
    loaded = device_bytes()
    memory = []
    if start is not None and loaded is not None:
        gib = 2**30
        memory.append(f"π0's weights in bf16: {checkpoint_bytes(policy.model.config) / gib:.2f} GiB")
        memory.append(f"held by the policy after loading: {(loaded[0] - start[0]) / gib:.2f} GiB")
        arrays = {id(a): a for a in jax.tree.leaves((policy.model_split[1], policy.layer_weights))}
        cut = {id(a): a for a in jax.tree.leaves(policy.layer_weights)}
        memory.append(
            f"its arrays: {sum(a.nbytes for a in arrays.values()) / gib:.2f} GiB, of which the per-layer weights "
            f"{sum(a.nbytes for a in cut.values()) / gib:.2f} GiB"
        )
        memory.append(f"peak while loading (the stacks and their per-layer cuts at once): {loaded[1] / gib:.2f} GiB")
    print("; ".join(memory), flush=True)
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
        # Frames a client resized to 224×224 itself (openpi's LIBERO client does): no resize on the server's side.
        small = {k: resize_with_pad(v, 224, 224) if "image" in k else v for k, v in request.items()}
        small_ms = median_ms(lambda small=small: policy.infer(small)["actions"], args.repeats)
        rows.append(
            (
                f"Policy.infer, batch {batch}, frames sent at 224×224",
                small_ms,
                f"{batch / small_ms * 1000:.1f} chunks/s",
            )
        )
        # The same program alone, its inputs already on the device: the rest of infer is host work.
        inputs = policy.transforms.inputs(request)  # resized by PIL: the program alone
        inputs.pop("batched")
        # As infer runs it: uint8 images converted inside the program where the policy does that (this code).
        in_program = hasattr(policy, "_pixel_values")
        observation = policy._observation(inputs, convert_uint8=False) if in_program else policy._observation(inputs)
        observation = jax.device_put(observation)
        head = (policy.model_split[1], jax.random.key(0), observation, None, None, policy.layer_weights)
        if in_program:
            head = (*head, policy._pixel_values)
        if hasattr(policy, "bound"):
            program = policy.jitted(policy.bound(_sample), batch, static_argnames=("num_steps",))
        else:  # older trees (a before/after comparison): the graphdef is a static argument
            program = policy.jitted(_sample, batch, static_argnums=(0,), static_argnames=("num_steps",))
            head = (policy.model_split[0], *head)
        call = functools.partial(program, *head, num_steps=policy.config.num_steps)
        alone = median_ms(call, args.repeats)
        rows.append((f"its device program alone, batch {batch}", alone, f"host side {ms - alone:.2f} ms"))
        analysis = program.lower(*head, num_steps=policy.config.num_steps).compile().memory_analysis()
        if analysis is not None:
            memory.append(
                f"temporary buffers of the batch-{batch} chunk: {analysis.temp_size_in_bytes / 2**20:.0f} MiB"
            )
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
        check,
        "",
        "Device memory: " + ("; ".join(memory) if memory else "not reported by this backend") + ".",
        "",
        "| what | median ms (per call) | rate |",
        "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {rate} |" for name, ms, rate in rows],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
