"""π0 on one GPU: speed against the compute floor, and the correctness of every speed-up, in one table.

Full-size π0 (3.24 B parameters) with random bf16 weights, LIBERO layout (3 camera slots, the third masked; a
12-token prompt in 48 slots; 10 flow steps). Floors (`../shared/spec/peers.md` §3.5): 5.5 ms per chunk, 330 frames/s
of capture.

- "full layout": openpi's arithmetic and prefix (816 tokens), the code path of ``load_policy(..., compact=False)``.
- "reference": the same arithmetic on the compact prefix (the always-masked camera and the prompt padding past 16
  slots left out: 528 tokens). Every speed-up is checked against it.
- "policy default": what ``load_policy`` runs on a GPU: the compact prefix, ``Pi0Config().resolved(True)`` (one
  image pass, expert weights per layer, aligned attention, flash attention for large passes, every layer's weights
  cut at load time) and the XLA options ``policy.compiler_options`` gives each batch size.

Correctness: bf16 arithmetic is itself off exact arithmetic by rounding. For each batch size and several random
observations and noises, the float32 path of the same weights gives the exact actions; the reference's own distance
from them (max |reference − float32|) is the rounding budget, and the policy default must stay within it of the
reference (max |default − reference|) — and be as close to float32 as the reference is.

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
from textlatent.model import Pi0Config, ResidualEdit
from textlatent.model.pi0 import compact_observation
from textlatent.policy.policy import compiler_options

VARIANTS = {"full": {}, "tiny": TINY_MODEL}  # "tiny": a quick check of this script
CHUNK_FLOOR_MS = 5.5
CAPTURE_FLOOR_FPS = 330.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="random observations/noises for the correctness checks")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    base = Pi0Config(dtype="bfloat16", **VARIANTS[args.variant])
    params = random_params(base, jnp.bfloat16)
    llm = base.paligemma

    def sampler(config, *, cut: bool):
        """(jitted sample(obs, noise, edit, batch), capture(obs, weights, batch)) for a model config."""
        model = model_from_params(config, params)
        weights = None
        if cut:  # as Policy: the layers cut once, the stacks dropped from the model the programs get
            model, weights = model.split_layer_weights()
            jax.block_until_ready(weights)
        graphdef, state = nnx.split(model)
        fast = cut  # the policy default also takes the policy's XLA options per batch size

        def sample(state, weights, obs, noise, edit):
            return nnx.merge(graphdef, state).sample_actions(None, obs, noise=noise, edit=edit, layer_weights=weights)

        def sums(state, weights, obs, frame_weights):
            model = nnx.merge(graphdef, state)
            positions = model.text_positions(jnp.arange(model.config.max_token_len))
            states = model.prefix_residuals(obs, positions, layer_weights=weights)
            return jnp.einsum(
                "lbsd,b->lsd", states.astype(jnp.float32), frame_weights, precision=jax.lax.Precision.HIGHEST
            )

        @functools.cache
        def jitted(fn, batch):
            return jax.jit(fn, compiler_options=compiler_options(batch, compact=fast))

        def run_sample(obs, noise, edit=None):
            return jitted(sample, obs.state.shape[0])(state, weights, obs, noise, edit)

        def run_capture(obs, frame_weights):
            return jitted(sums, obs.state.shape[0])(state, weights, obs, frame_weights)

        return run_sample, run_capture

    ref_sample, ref_capture = sampler(base, cut=False)
    default_sample, default_capture = sampler(base.resolved(True, accelerator=True), cut=True)
    model = model_from_params(base, params)
    tli = ResidualEdit(  # a TLI write: 9 prompt slots, layers 1..17 (values random; the cost is what matters)
        positions=model.text_positions(jnp.arange(9)),
        delta=jax.random.normal(jax.random.key(3), (llm.depth, 1, 9, llm.width), jnp.bfloat16).at[0].set(0),
    )
    del model

    def inputs(batch: int, seed: int = 0):
        full = libero_observation(base, batch, seed=seed)
        noise = jax.random.normal(jax.random.key(100 + seed), (batch, base.action_horizon, base.action_dim))
        return full, compact_observation(full, base.max_token_len), noise

    rows = []

    def chunk_row(name, batch, ms):
        floor = f"{CHUNK_FLOOR_MS * batch / ms * 100:.0f}%" if batch == 1 else ""
        rows.append((f"sample_actions, {name}, batch {batch}", ms, f"{batch / ms * 1000:.1f} chunks/s", floor))
        return ms

    def paired(run, run_tli, rounds: int = 3) -> tuple[float, float]:
        """Median ms of a program and of its TLI twin, timed in alternating rounds (median of the rounds' medians),
        so that a drift of the GPU's speed during the run does not land on one of the two."""
        plain, edited = [], []
        for _ in range(rounds):
            plain.append(median_ms(run, args.repeats))
            edited.append(median_ms(run_tli, args.repeats))
        return float(np.median(plain)), float(np.median(edited))

    timings = {}
    for batch in (1, 8):
        full, compact, noise = inputs(batch)
        run_ref = functools.partial(ref_sample, compact, noise)
        run_fast = functools.partial(default_sample, compact, noise)
        chunk_row("full layout", batch, median_ms(functools.partial(ref_sample, full, noise), args.repeats))
        base_ms, base_tli = paired(run_ref, functools.partial(run_ref, tli))
        chunk_row("reference (compact)", batch, base_ms)
        chunk_row("reference (compact) + TLI", batch, base_tli)
        fast_ms, fast_tli = paired(run_fast, functools.partial(run_fast, tli))
        chunk_row("policy default", batch, fast_ms)
        chunk_row("policy default + TLI", batch, fast_tli)
        timings[batch] = (base_ms, base_tli, fast_ms, fast_tli)

    for batch in (1, 32, 64):
        full, compact, _ = inputs(batch)
        frame_weights = jnp.ones(batch, jnp.float32)
        runs = [("reference (compact)", ref_capture, compact), ("policy default", default_capture, compact)]
        if batch == 32:
            runs.insert(0, ("full layout", ref_capture, full))
        for name, capture, obs in runs:
            ms = median_ms(functools.partial(capture, obs, frame_weights), max(5, args.repeats // 2))
            fps = batch / ms * 1000
            rows.append((f"latent capture (prefix only), {name}, batch {batch}", ms, f"{fps:.1f} frames/s",
                         f"{fps / CAPTURE_FLOOR_FPS * 100:.0f}%"))  # fmt: skip
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")

    # Correctness: bf16 default vs bf16 reference, both vs float32 arithmetic on the same weights.
    f32_config = dataclasses.replace(base, dtype="float32")
    f32_model = model_from_params(f32_config, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    f32_graphdef, f32_state = nnx.split(f32_model)
    f32_sample = jax.jit(lambda s, o, n, e: nnx.merge(f32_graphdef, s).sample_actions(None, o, noise=n, edit=e))

    def f32_capture(state, obs, frame_weights):  # the weights as an argument: closed over, they would be
        model = nnx.merge(f32_graphdef, state)  # embedded in the program as ~12 GB of constants
        positions = model.text_positions(jnp.arange(model.config.max_token_len))
        states = model.prefix_residuals(obs, positions)
        return jnp.einsum("lbsd,b->lsd", states, frame_weights, precision=jax.lax.Precision.HIGHEST)

    checks, verdicts = [], []
    for batch in (1, 8):
        for name, edit in (("", None), (" + TLI", tli)):
            d_ref, ref_err, fast_err, ref_rel, fast_rel = [], [], [], [], []
            for seed in range(args.seeds):
                _, compact, noise = inputs(batch, seed)
                exact = np.asarray(f32_sample(f32_state, compact, noise, edit), np.float64)
                ref = np.asarray(ref_sample(compact, noise, edit), np.float64)
                fast = np.asarray(default_sample(compact, noise, edit), np.float64)
                d_ref.append(np.abs(fast - ref).max())
                ref_err.append(np.abs(ref - exact).max())
                fast_err.append(np.abs(fast - exact).max())
                ref_rel.append(np.linalg.norm(ref - exact) / np.linalg.norm(exact))
                fast_rel.append(np.linalg.norm(fast - exact) / np.linalg.norm(exact))
            ok = max(d_ref) <= max(ref_err)
            verdicts.append(ok)
            checks.append(
                f"batch {batch}{name}, {args.seeds} inputs: max |default − reference| = {max(d_ref):.4f} "
                f"{'≤' if ok else '>'} the reference's own bf16 error max |reference − float32| = {max(ref_err):.4f} "
                f"({'within' if ok else 'OVER'} the rounding budget); max |default − float32| = {max(fast_err):.4f}; "
                f"relative L2 vs float32: reference {np.mean(ref_rel):.2e}, default {np.mean(fast_rel):.2e}"
            )
    _, compact, _ = inputs(32)
    frame_weights = jnp.ones(32, jnp.float32)
    exact = np.asarray(jax.jit(f32_capture)(f32_state, compact, frame_weights), np.float64)
    valid = np.isfinite(exact)
    rel = {}
    for name, capture in (("reference", ref_capture), ("default", default_capture)):
        got = np.asarray(capture(compact, frame_weights), np.float64)
        rel[name] = np.linalg.norm((got - exact)[valid]) / np.linalg.norm(exact[valid])
    checks.append(
        f"capture batch 32, relative L2 of the prompt sums vs float32: reference {rel['reference']:.2e}, "
        f"default {rel['default']:.2e}"
    )
    overhead = [
        f"TLI at batch {b}: reference +{(t[1] / t[0] - 1) * 100:.1f} %, policy default +{(t[3] / t[2] - 1) * 100:.1f} %"
        for b, t in timings.items()
    ]

    lines = [
        f"# π0 on one GPU ({args.variant}, random bf16 weights, LIBERO layout)",
        "",
        f"{environment()}; median of {args.repeats} (a compact program and its TLI twin: median of 3 alternating rounds of {args.repeats})",
        "",
        "| what | median ms | rate | % of floor |",
        "|---|---|---|---|",
        *[f"| {name} | {ms:.2f} | {rate} | {pct} |" for name, ms, rate, pct in rows],
        "",
        f"peak device memory (bf16 model, every program above): {peak / 2**30:.2f} GiB"
        if peak
        else "peak device memory: not reported by this backend",
        "",
        *[f"- {line}" for line in overhead],
        *[f"- {c}" for c in checks],
        f"- all within the rounding budget: {all(verdicts)}",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
