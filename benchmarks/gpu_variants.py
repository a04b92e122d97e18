"""Model options side by side in one process: per-program times (prefix pass, one flow step, the whole chunk,
prefix-only capture), kernels per compiled program, a kernel-time profile of one chunk, and every variant's actions
against the first variant's (the reference arithmetic). Full-size π0, random bf16 weights, compact LIBERO layout.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_variants.py \\
        --variants base cudnn cudnn+one_image_pass --profile base cudnn
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import os
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import TINY_MODEL, environment, kernel_times, median_ms
from pi0_latency import libero_observation, random_params

from textlatent.checkpoint import model_from_params
from textlatent.model import Pi0Config
from textlatent.model.pi0 import compact_observation

OPTIONS = {
    "base": {},
    "one_image_pass": {"one_image_pass": True},
    "unroll": {"unroll_layers": True},
    "expert": {"expert_weights_per_layer": True},
    "cut": {},  # not a config option: every layer's weights cut once before timing (``Pi0.layer_weights``)
    "barrier": {},  # a probe: an optimization barrier at each layer's input (no fusion across layers)
}


@contextlib.contextmanager
def layer_barriers(on: bool):
    """While on, every Gemma and SigLIP layer starts with ``lax.optimization_barrier`` on its input (trace time)."""
    if not on:
        yield
        return
    from textlatent.model import gemma, siglip

    block_forward, encoder_call = gemma.Block.forward, siglip.EncoderBlock.__call__

    def forward(self, xs, *args, **kwargs):
        return block_forward(self, jax.lax.optimization_barrier(xs), *args, **kwargs)

    def call(self, x, dtype):
        return encoder_call(self, jax.lax.optimization_barrier(x), dtype)

    gemma.Block.forward, siglip.EncoderBlock.__call__ = forward, call
    try:
        yield
    finally:
        gemma.Block.forward, siglip.EncoderBlock.__call__ = block_forward, encoder_call


def _parse(value: str):
    return {"true": True, "false": False}.get(value.lower(), value)


def variant_options(name: str) -> dict:
    options = {}
    for part in name.split("+"):
        options.update(OPTIONS[part])
    return options


def kernel_counts(compiled_text: str) -> str:
    """Fusions and custom calls (cuBLAS, cuDNN) per HLO computation, the three largest computations first."""
    counts, name = collections.Counter(), None
    for line in compiled_text.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(2)
            continue
        if name and re.search(r"\bfusion\(|custom-call\(", line):
            counts[name] += 1
    kinds = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', compiled_text))
    top = ", ".join(f"{n}: {c}" for n, c in counts.most_common(3))
    return f"{sum(counts.values())} launches in all ({top}); custom calls {dict(kinds)}"


def kernel_profile(fn, calls: int, top: int) -> list[str]:
    """Sum of GPU kernel time per kernel name over ``calls`` calls of ``fn`` (after one warm-up)."""
    wall, table = kernel_times(fn, calls)
    if not table:
        return ["no GPU kernels traced"]
    total = sum(ms for ms, _ in table.values())
    lines = [
        f"wall {wall:.2f} ms per call (traced); GPU busy {total:.2f} ms in {sum(n for _, n in table.values())} kernels"
    ]
    for name, (ms, n) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {ms:7.3f} ms  {n:5d}×  {name[:110]}")
    return lines


def measure(name, model, args, observations, noises, reference, compiler_options) -> dict:
    """One variant's programs: compile, time, compare with ``reference`` (filled by the first variant)."""
    graphdef, state = nnx.split(model)
    first = name == args.variants[0]
    # "cut": the weights cut per layer once, here (as ``Policy`` does at load time), and passed into every program.
    weights = jax.block_until_ready(model.layer_weights()) if "cut" in name.split("+") else None

    # The weights travel as an argument (a closure would make them constants of the program).
    def sample(state, obs, noise):
        return nnx.merge(graphdef, state[0]).sample_actions(None, obs, noise=noise, layer_weights=state[1])

    def prefix(state, obs):
        return nnx.merge(graphdef, state[0]).encode_prefix(obs, layer_weights=state[1])[0]

    def step(state, obs, cache, x):
        model = nnx.merge(graphdef, state[0])
        expert = None if state[1] is None else state[1].llm
        return model.velocity(model.preprocess(obs), cache, x, jnp.full(x.shape[0], 0.5), layer_weights=expert)

    def prompt_sums(state, obs, frame_weights):
        model = nnx.merge(graphdef, state[0])
        positions = model.text_positions(jnp.arange(model.config.max_token_len))
        states = model.prefix_residuals(obs, positions, layer_weights=state[1])
        return jnp.einsum("lbsd,b->lsd", states.astype(jnp.float32), frame_weights, precision=jax.lax.Precision.HIGHEST)

    state = (state, weights)
    jit = functools.partial(jax.jit, compiler_options=compiler_options)
    prefix_jit, result = jit(prefix), {}
    for b in (1,) if "b8" in args.skip else (1, 8):
        obs, noise = observations[b], noises[b]
        t0 = time.perf_counter()
        compiled = jit(sample).lower(state, obs, noise).compile()
        result[f"compile b{b} s"] = time.perf_counter() - t0
        if b == 1:
            print(f"[{name}] sample b1 kernels: {kernel_counts(compiled.as_text())}", flush=True)
            if args.dump and first:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{name.replace('+', '_')}_chunk_b1.hlo.txt").write_text(compiled.as_text())
        run = functools.partial(compiled, state, obs, noise)
        result[f"chunk b{b}"] = median_ms(run, args.repeats)
        actions = np.asarray(run(), np.float32)
        if first:
            reference[b] = actions
        result[f"max Δ b{b}"] = float(np.abs(actions - reference[b]).max())
        result[f"bf16 ulp b{b}"] = float(np.abs(reference[b]).max() * 2**-8)
        if "prefix" not in args.skip:
            result[f"prefix b{b}"] = median_ms(functools.partial(prefix_jit, state, obs), args.repeats)
        if "step" not in args.skip:
            cache = prefix_jit(state, obs)
            step_c = jit(step).lower(state, obs, cache, noise).compile()
            if b == 1:
                print(f"[{name}] one flow step b1 kernels: {kernel_counts(step_c.as_text())}", flush=True)
                if args.dump and first:
                    (args.dump / f"{name.replace('+', '_')}_step_b1.hlo.txt").write_text(step_c.as_text())
            result[f"step b{b}"] = median_ms(functools.partial(step_c, state, obs, cache, noise), args.repeats)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k.endswith((f"b{b}", f"b{b} s")))
        print(f"[{name}] b{b}: {shown}", flush=True)
        if b == 1 and name in args.profile:
            for line in kernel_profile(run, 3, 25):
                print(f"[{name}] profile chunk b1: {line}", flush=True)
    if "capture" not in args.skip:
        run = functools.partial(jit(prompt_sums), state, observations[32], jnp.ones(32, jnp.float32))
        result["capture b32 frames/s"] = 32 / median_ms(run, max(5, args.repeats // 2)) * 1000
        captured = np.asarray(run())
        if first:
            reference["capture"] = captured
        valid = np.isfinite(reference["capture"])
        rel = np.linalg.norm((captured - reference["capture"])[valid]) / np.linalg.norm(reference["capture"][valid])
        result["capture rel Δ"] = float(rel)
        print(f"[{name}] capture b32: {result['capture b32 frames/s']:.1f} frames/s, rel Δ {rel:.2e}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["base", "cudnn"])
    parser.add_argument("--profile", nargs="*", default=[], help="variants to profile (one chunk at batch 1)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model (a quick check of this script)")
    parser.add_argument(
        "--compiler-option", action="append", default=[], help="KEY=VALUE XLA option for every program (jax.jit)"
    )
    parser.add_argument(
        "--dump", type=pathlib.Path, help="write each variant's compiled HLO (chunk, step; batch 1) here"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="programs to skip: prefix step b8 capture")
    args = parser.parse_args()
    compiler_options = {k: _parse(v) for k, _, v in (o.partition("=") for o in args.compiler_option)}
    print(environment(), "| XLA_FLAGS:", os.environ.get("XLA_FLAGS", ""), "| options:", compiler_options, flush=True)

    base = Pi0Config(dtype="bfloat16", **(TINY_MODEL if args.tiny else {}))
    params = random_params(base, jnp.bfloat16)
    observations = {b: compact_observation(libero_observation(base, b), base.max_token_len) for b in (1, 8, 32)}
    noises = {b: jax.random.normal(jax.random.key(1), (b, base.action_horizon, base.action_dim)) for b in (1, 8)}

    rows, reference = [], {}
    for name in args.variants:
        config = dataclasses.replace(base, **variant_options(name))
        model = model_from_params(config, params)
        with layer_barriers("barrier" in name.split("+")):
            rows.append((name, measure(name, model, args, observations, noises, reference, compiler_options)))
        del model

    keys = list(dict.fromkeys(k for _, r in rows for k in r))
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[k]:.4g}" if k in r else "" for k in keys) + " |")


if __name__ == "__main__":
    main()
