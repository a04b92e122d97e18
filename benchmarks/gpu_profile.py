"""Model variants of the default GPU path side by side: chunk time at batch 1 and 8, prefix-only capture at batch 32,
each one's distance from the first variant and from float32 arithmetic, and where the GPU time goes (per-kernel
times, with each program's optimized HLO written beside them so that every kernel can be looked up).

Full-size π0 with random bf16 weights, compact LIBERO layout. Every variant starts from what ``load_policy`` runs on
a GPU (one image pass, expert weights per layer, every layer's weights cut at load time) and adds ``Pi0Config``
overrides and XLA compiler options:

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu_profile.py --out $OUT \\
        --variant default --variant aligned:aligned_attention=true --profile aligned
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import TINY_MODEL, environment, gpu_timeline, kernel_times, median_ms
from pi0_latency import libero_observation, random_params

from textlatent.checkpoint import model_from_params
from textlatent.model import Pi0Config
from textlatent.model.pi0 import compact_observation

DEFAULT_OPTIONS = {"one_image_pass": True, "expert_weights_per_layer": True, "aligned_attention": False}


def _parse(value: str):
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    parts = [part for part in value.split(",") if part]
    if "," in value and all(part.lstrip("-").isdigit() for part in parts):
        return tuple(int(part) for part in parts)  # e.g. siglip_command_buffer_breaks=1|4|13
    try:
        return int(value)
    except ValueError:
        return value


def parse_variant(spec: str) -> tuple[str, dict, dict]:
    """``name[:key=value,...]``; keys starting with ``xla_`` are compiler options, ``x_small_size`` is passed to
    ``Pi0.layer_weights``, the others are Pi0Config fields; ``a|b`` in a value stands for ``a,b``."""
    name, _, rest = spec.partition(":")
    options, compiler = {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        # A list value (e.g. xla_gpu_enable_command_buffer) is written with "|" between its items.
        (compiler if key.startswith(("xla_", "x_")) else options)[key] = _parse(value.replace("|", ","))
    return name, options, compiler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--variant", action="append", default=[], help="name[:key=value,...] (repeatable)")
    parser.add_argument("--profile", nargs="*", default=[], help="variants to profile (kernel times, HLO)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2, help="noise/observation seeds for the distance checks")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-capture", action="store_true")
    parser.add_argument("--no-check", action="store_true", help="skip the float32 and reference runs (timing only)")
    parser.add_argument("--flash-min-queries", type=int, help="override ops.FLASH_MIN_QUERIES (a probe)")
    args = parser.parse_args()
    if args.flash_min_queries is not None:
        from textlatent.model import ops

        ops.FLASH_MIN_QUERIES = args.flash_min_queries
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in args.variant or ["default"]]

    base = Pi0Config(dtype="bfloat16", **(TINY_MODEL if args.tiny else {}))
    params = random_params(base, jnp.bfloat16)
    batches = tuple(args.batches)
    inputs = {}  # (batch, seed) -> (obs, noise)
    for b in batches:
        for seed in range(args.seeds):
            obs = compact_observation(libero_observation(base, b, seed=seed), base.max_token_len)
            noise = jax.random.normal(jax.random.key(100 + seed), (b, base.action_horizon, base.action_dim))
            inputs[b, seed] = (obs, noise)
    capture_obs = compact_observation(libero_observation(base, 32), base.max_token_len)

    exact = reference = None
    if not args.no_check:
        # float32 arithmetic on the same weights (the reference layout, scan over stacked weights): the yardstick for
        # how far bf16 serving arithmetic is from exact, per input.
        f32_config = dataclasses.replace(base, dtype="float32")
        f32 = model_from_params(f32_config, jax.tree.map(lambda x: x.astype(jnp.float32), params))
        f32_graphdef, f32_state = nnx.split(f32)
        f32_sample = jax.jit(lambda s, o, n: nnx.merge(f32_graphdef, s).sample_actions(None, o, noise=n))
        exact = {key: np.asarray(f32_sample(f32_state, *value), np.float64) for key, value in inputs.items()}
        del f32, f32_state
        # The unoptimized bf16 path (stacked weights, scan, openpi's layouts) on the compact layout.
        ref_model = model_from_params(base, params)
        ref_graphdef, ref_state = nnx.split(ref_model)
        ref_sample = jax.jit(lambda s, o, n: nnx.merge(ref_graphdef, s).sample_actions(None, o, noise=n))
        reference = {key: np.asarray(ref_sample(ref_state, *value), np.float64) for key, value in inputs.items()}
        del ref_model, ref_state

    summary = {"environment": environment(), "variants": {}}
    print(summary["environment"], flush=True)
    rows = []
    for name, options, compiler in variants:
        try:
            result = measure_variant(name, options, compiler, base, params, inputs, capture_obs, reference, exact, args)
        except Exception as error:  # one variant failing to compile must not lose the others' numbers
            print(f"[{name}] failed: {type(error).__name__}: {str(error)[:2000]}", flush=True)
            continue
        summary["variants"][name] = result
        rows.append((name, result))
        (args.out / "profile.json").write_text(json.dumps(summary, indent=1, default=str))

    keys = [k for k in rows[0][1] if isinstance(rows[0][1][k], float)]
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[k]:.4g}" if k in r else "" for k in keys) + " |")


def in_turn(compiled, state, inputs, copies: int = 4):
    """A call of ``compiled`` on the next of ``copies`` copies of ``inputs``: new buffers each call."""
    pool = [jax.tree.map(jnp.copy, inputs) for _ in range(copies)]
    calls = iter(range(10**9))
    return lambda: compiled(state, *pool[next(calls) % copies])


def fed_back(compiled, state, obs, noise):
    """Calls of ``compiled`` (its noise donated) on the same observation, each call's actions the next noise."""
    carry = [jnp.copy(noise)]

    def call():
        carry[0] = compiled(state, obs, carry[0])
        return carry[0]

    return call


def measure_variant(name, options, compiler, base, params, inputs, capture_obs, reference, exact, args) -> dict:
    batches = tuple(args.batches)
    config = dataclasses.replace(base, **{**DEFAULT_OPTIONS, **options})
    model = model_from_params(config, params)
    graphdef, state = nnx.split(model)
    compiler = dict(compiler)
    small = compiler.pop("x_small_size", None)  # packing of the layers' vectors (``Pi0.layer_weights``)
    # The chunk's noise donated and each call's actions fed back as the next noise: every buffer the program reads or
    # writes keeps its address from call to call (a probe of what XLA's recorded command buffers cost to update).
    stable = compiler.pop("x_stable_buffers", False)
    weights = jax.block_until_ready(model.layer_weights(**({} if small is None else {"small_size": small})))
    full_state = (state, weights)

    def sample(state, obs, noise, graphdef=graphdef):
        return nnx.merge(graphdef, state[0]).sample_actions(None, obs, noise=noise, layer_weights=state[1])

    def prompt_sums(state, obs, frame_weights, graphdef=graphdef):
        model = nnx.merge(graphdef, state[0])
        positions = model.text_positions(jnp.arange(model.config.max_token_len))
        states = model.prefix_residuals(obs, positions, layer_weights=state[1])
        return jnp.einsum("lbsd,b->lsd", states.astype(jnp.float32), frame_weights, precision=jax.lax.Precision.HIGHEST)

    jit = functools.partial(jax.jit, compiler_options=compiler or None)
    result = {"options": options, "compiler": compiler}
    programs = {}
    for b in batches:
        t0 = time.perf_counter()
        compiled = (jit(sample, donate_argnums=2) if stable else jit(sample)).lower(full_state, *inputs[b, 0]).compile()
        result[f"compile b{b} s"] = time.perf_counter() - t0
        if stable:
            loop = fed_back(compiled, full_state, *inputs[b, 0])
            result[f"chunk b{b} ms"] = median_ms(loop, args.repeats)
            programs[f"chunk_b{b}"] = (loop, None)
            continue
        programs[f"chunk_b{b}"] = (compiled, (full_state, *inputs[b, 0]))
        result[f"chunk b{b} ms"] = median_ms(functools.partial(compiled, full_state, *inputs[b, 0]), args.repeats)
        # As a served policy is called: each request's inputs in new buffers (four copies in turn), which makes XLA
        # update its recorded command buffers.
        result[f"chunk b{b} new inputs ms"] = median_ms(in_turn(compiled, full_state, inputs[b, 0]), args.repeats)
        if reference is None:
            continue
        d_ref, d_exact, ref_exact = [], [], []
        for seed in range(args.seeds):
            got = np.asarray(compiled(full_state, *inputs[b, seed]), np.float64)
            d_ref.append(np.abs(got - reference[b, seed]).max())
            d_exact.append(np.abs(got - exact[b, seed]).max())
            ref_exact.append(np.abs(reference[b, seed] - exact[b, seed]).max())
        result[f"max|Δ ref| b{b}"] = max(d_ref)
        result[f"max|Δ f32| b{b}"] = max(d_exact)
        result[f"ref max|Δ f32| b{b}"] = max(ref_exact)
    if not args.no_capture:
        weights32 = jnp.ones(32, jnp.float32)
        compiled = jit(prompt_sums).lower(full_state, capture_obs, weights32).compile()
        programs["capture_b32"] = (compiled, (full_state, capture_obs, weights32))
        ms = median_ms(functools.partial(compiled, full_state, capture_obs, weights32), max(5, args.repeats // 2))
        result["capture b32 frames/s"] = 32 / ms * 1000
    print(f"[{name}] " + ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)), flush=True)

    if name in args.profile:
        for program, (compiled, program_inputs) in programs.items():
            if program_inputs is None:  # a call that feeds its output back (``x_stable_buffers``)
                call = new_buffers = compiled
            else:
                with gzip.open(args.out / f"{name}_{program}.hlo.txt.gz", "wt") as f:
                    f.write(compiled.as_text())
                call = functools.partial(compiled, *program_inputs)
                new_buffers = in_turn(compiled, program_inputs[0], program_inputs[1:])
            wall, table = kernel_times(call, 3)
            busy = sum(r[0] for r in table.values())
            launches = sum(r[1] for r in table.values())
            result[f"profile {program}"] = {"traced_wall_ms": wall, "busy_ms": busy, "launches": launches,
                                            "kernels": table}  # fmt: skip
            print(f"[{name}] {program}: traced {wall:.2f} ms, GPU busy {busy:.2f} ms in {launches} kernels")
            timeline = gpu_timeline(new_buffers)
            result[f"profile {program}"]["timeline"] = timeline
            if timeline:
                print(
                    f"[{name}] {program} timeline: span {timeline['span_ms']:.2f} ms, busy {timeline['busy_ms']:.2f}, "
                    f"idle {timeline['idle_ms']:.2f} ({timeline['gaps_over_5us']} gaps over 5 µs: "
                    f"{timeline['idle_in_gaps_over_5us_ms']:.2f} ms)"
                )
                for gap in timeline["longest_gaps"]:
                    print(f"    gap {gap['us']:8.1f} µs at {gap['at']:.3f}: {gap['after'][:45]} → {gap['before'][:45]}")
                for host_event, us in timeline["host_during_longest_gap_us"].items():
                    print(f"    host during the longest gap: {us:8.1f} µs  {host_event}")
            for kname, (kms, n) in sorted(table.items(), key=lambda kv: -kv[1][0])[:12]:
                print(f"    {kms:7.3f} ms {n:5d}×  {kname[:100]}")
    del model, state, weights, full_state, programs
    return result


if __name__ == "__main__":
    main()
