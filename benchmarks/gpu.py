"""π0 on one GPU: speed against the compute floor, and the correctness of every speed-up, in one table.

Full-size π0 (3.24 B parameters) with random bf16 weights, LIBERO layout (3 camera slots, the third masked; a
12-token prompt in 48 slots; 10 flow steps). "full layout" is the prefix as openpi computes it (816 tokens);
"compact" leaves out the always-masked camera and the prompt padding past 16 slots (528 tokens), as `Policy` and
`LatentCapture` do by default. Floors (`../shared/spec/peers.md` §3.5): 5.5 ms per chunk, 330 frames/s of capture.
"GPU options" is the same model with `Pi0Config(one_image_pass=True, expert_weights_per_layer=True)`; "policy
default" adds the weights cut per layer once at load time (`Pi0.layer_weights()`, passed into every call), which is
what `load_policy(...)` (compact, the default) runs on a GPU. With `--xla-variant`, "all" adds `unroll_layers=True` to
the GPU options and compiles with `XLA_OPTIONS` (cuBLAS instead of Triton matrix products, with dynamic-slice fusion:
weights read in place). Each variant's actions are compared with the reference compact path under the table.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/gpu.py --out benchmarks/results/gpu_h100.md
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import TINY_MODEL, emit, environment, median_ms
from pi0_latency import libero_observation, random_params

from textlatent.checkpoint import model_from_params
from textlatent.latents.capture import _prompt_sums
from textlatent.model import Pi0Config, ResidualEdit
from textlatent.model.pi0 import compact_observation

VARIANTS = {
    "full": {},
    "tiny": TINY_MODEL,  # a quick check of this script
}
GPU_OPTIONS = {"one_image_pass": True, "expert_weights_per_layer": True}
XLA_OPTIONS = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_enable_dynamic_slice_fusion": True}
CHUNK_FLOOR_MS = 5.5
CAPTURE_FLOOR_FPS = 330.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--xla-variant", action="store_true", help="also the 'all' variant (unrolled, cuBLAS/DSF)")
    args = parser.parse_args()

    config = Pi0Config(dtype="bfloat16", **VARIANTS[args.variant])
    params = random_params(config, jnp.bfloat16)
    model = model_from_params(config, params)
    graphdef, state = nnx.split(model)

    @jax.jit
    def sample(state, obs, noise, edit):
        return nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise, edit=edit)

    def fast_variant(options: dict, compiler_options: dict, *, cut_at_load: bool = False):
        fast_model = model_from_params(dataclasses.replace(config, **options), params)
        fast_graphdef, fast_state = nnx.split(fast_model)
        layer_weights = jax.block_until_ready(fast_model.layer_weights()) if cut_at_load else None

        def fast_sample(state, obs, noise, edit, layer_weights):
            return nnx.merge(fast_graphdef, state).sample_actions(
                None, obs, noise=noise, edit=edit, layer_weights=layer_weights
            )

        def fast_sums(state, obs, weights, layer_weights):  # ``_prompt_sums`` with the weights cut at load
            model = nnx.merge(fast_graphdef, state)
            positions = model.text_positions(jnp.arange(model.config.max_token_len))
            states = model.prefix_residuals(obs, positions, layer_weights=layer_weights)
            return jnp.einsum("lbsd,b->lsd", states.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)

        sample_fn = jax.jit(fast_sample, compiler_options=compiler_options)
        sums_fn = jax.jit(fast_sums, compiler_options=compiler_options)
        return (
            fast_state,
            lambda state, obs, noise, edit: sample_fn(state, obs, noise, edit, layer_weights),
            lambda state, obs, weights: sums_fn(state, obs, weights, layer_weights),
        )

    fast_variants = {
        "GPU options": fast_variant(GPU_OPTIONS, {}),
        "policy default (GPU options, weights cut at load)": fast_variant(GPU_OPTIONS, {}, cut_at_load=True),
    }
    if args.xla_variant:
        fast_variants["all (GPU options, unrolled layers, XLA cuBLAS/DSF)"] = fast_variant(
            {**GPU_OPTIONS, "unroll_layers": True}, XLA_OPTIONS
        )

    sums = jax.jit(_prompt_sums, static_argnums=(0,))
    llm = config.paligemma
    tli = ResidualEdit(  # a TLI write: 9 prompt slots, layers 1..17 (values random; the cost is what matters)
        positions=model.text_positions(jnp.arange(9)),
        delta=jax.random.normal(jax.random.key(3), (llm.depth, 1, 9, llm.width), jnp.bfloat16).at[0].set(0),
    )

    rows, checks = [], []
    for batch in (1, 8):
        full = libero_observation(config, batch)
        compact = compact_observation(full, config.max_token_len)
        noise = jax.random.normal(jax.random.key(1), (batch, config.action_horizon, config.action_dim))
        for name, obs, edit in (
            ("full layout", full, None),
            ("compact", compact, None),
            ("compact + TLI", compact, tli),
        ):
            ms = median_ms(lambda obs=obs, edit=edit, noise=noise: sample(state, obs, noise, edit), args.repeats)
            rows.append((f"sample_actions, {name}, batch {batch}", ms, f"{batch / ms * 1000:.1f} chunks/s",
                         f"{CHUNK_FLOOR_MS * batch / ms * 100:.0f}%" if batch == 1 else ""))  # fmt: skip
        for variant, (fast_state, fast, _) in fast_variants.items():
            for name, edit in (("compact", None), ("compact + TLI", tli)):
                run = functools.partial(fast, fast_state, compact, noise, edit)
                ms = median_ms(run, args.repeats)
                rows.append((f"sample_actions, {name}, {variant}, batch {batch}", ms, f"{batch / ms * 1000:.1f} chunks/s",
                             f"{CHUNK_FLOOR_MS * batch / ms * 100:.0f}%" if batch == 1 else ""))  # fmt: skip
        a_full = np.asarray(sample(state, full, noise, None), np.float32)
        a_compact = np.asarray(sample(state, compact, noise, None), np.float32)
        rounding = f"(bf16 rounding at the actions' scale: {np.abs(a_full).max() * 2**-8:.3g})"
        checks.append(
            f"batch {batch}: compact vs full layout max |Δ actions| = {np.abs(a_compact - a_full).max():.3g} {rounding}"
        )
        for variant, (fast_state, fast, _) in fast_variants.items():
            for name, edit in (("", None), (", with the TLI edit", tli)):
                a_ref = np.asarray(sample(state, compact, noise, edit), np.float32)
                a_fast = np.asarray(fast(fast_state, compact, noise, edit), np.float32)
                checks.append(
                    f"batch {batch}{name}: {variant} vs reference (compact) max |Δ actions| = "
                    f"{np.abs(a_fast - a_ref).max():.3g} {rounding}"
                )

    for batch in (1, 32, 64):
        full = libero_observation(config, batch)
        weights = jnp.ones(batch, jnp.float32)
        layouts = [("compact", compact_observation(full, config.max_token_len))]
        if batch == 32:
            layouts.insert(0, ("full layout", full))
        runs = [(name, functools.partial(sums, graphdef, state, obs, weights)) for name, obs in layouts]
        compact = layouts[-1][1]
        if batch in (1, 32):
            for variant, (fast_state, _, fast_sums) in fast_variants.items():
                runs.append((f"compact, {variant}", functools.partial(fast_sums, fast_state, compact, weights)))
        for name, run in runs:
            ms = median_ms(run, max(5, args.repeats // 2))
            fps = batch / ms * 1000
            rows.append((f"latent capture (prefix only), {name}, batch {batch}", ms, f"{fps:.1f} frames/s",
                         f"{fps / CAPTURE_FLOOR_FPS * 100:.0f}%"))  # fmt: skip
        if batch == 32:
            ref = np.asarray(sums(graphdef, state, compact, weights))
            valid = np.isfinite(ref)
            for variant, (fast_state, _, fast_sums) in fast_variants.items():
                got = np.asarray(fast_sums(fast_state, compact, weights))
                checks.append(
                    f"capture batch 32: {variant} vs reference, relative L2 difference of the prompt sums = "
                    f"{np.linalg.norm((got - ref)[valid]) / np.linalg.norm(ref[valid]):.2e}"
                )
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")

    # Same weights in float32: how far is bf16 serving arithmetic from full precision?
    f32_config = Pi0Config(dtype="float32", **VARIANTS[args.variant])
    f32 = model_from_params(f32_config, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    f32_graphdef, f32_state = nnx.split(f32)
    obs = compact_observation(libero_observation(config, 1), config.max_token_len)
    noise = jax.random.normal(jax.random.key(1), (1, config.action_horizon, config.action_dim))
    a16 = np.asarray(sample(state, obs, noise, None), np.float32)
    a32 = np.asarray(
        jax.jit(lambda s, o, n: nnx.merge(f32_graphdef, s).sample_actions(None, o, noise=n))(f32_state, obs, noise)
    )
    checks.append(
        f"bf16 vs float32 actions (same weights, batch 1): relative L2 error {np.linalg.norm(a16 - a32) / np.linalg.norm(a32):.2e}"
    )

    lines = [
        f"# π0 on one GPU ({args.variant}, random bf16 weights, LIBERO layout)",
        "",
        f"{environment()}; median of {args.repeats}",
        "",
        "| what | median ms | rate | % of floor |",
        "|---|---|---|---|",
        *[f"| {name} | {ms:.2f} | {rate} | {pct} |" for name, ms, rate, pct in rows],
        "",
        f"peak device memory (bf16 model, all runs above, before the float32 copy): {peak / 2**30:.2f} GiB"
        if peak
        else "peak device memory: not reported by this backend",
        "",
        *[f"- {c}" for c in checks],
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
