"""Rectified-flow action inversion for π0: an action chunk back to the noise that ``sample_actions`` maps onto it.

openpi samples with Euler steps ``x ← x + dt·v(x, t)``, dt = -1/N, from t = 1 (noise) down to t = 0 (actions), with t a
float32 carry accumulated as 1.0, 0.9, 0.79999995, …  Write ``grid[k]`` for the time of the k-th iterate x_k
(``time_grid``): grid[0] = 1, grid[N] = 0, and sampling step k is ``x_{k+1} = x_k - Δ·v(x_k, grid[k])`` with Δ = 1/N.
Inversion walks the same grid upward (t: 0 → 1), one step per sampling step:

* ``naive`` — the public reference implementation's method: ``x_k = x_{k+1} + Δ·v(x_{k+1}, grid[k+1])``, explicit
  Euler with the velocity at the lower end of the interval. The sampler used the upper end, so every step is off by
  Δ·[v(x_{k+1}, grid[k+1]) - v(x_k, grid[k])]; these telescope to an O(Δ) error in the recovered noise.
* ``fixed_point`` — solve ``x_k = x_{k+1} + Δ·v(x_k, grid[k])``, the exact inverse of the sampler's step, by iterating
  that map until it moves by at most ``tolerance`` (or stops shrinking: the rounding floor). It contracts when Δ·Lip(v) < 1; converged, sample → invert →
  reconstruct round-trips to float rounding. Each iteration costs one action-expert pass.

Only the suffix (action expert) runs per step: the prefix is encoded once into a ``PrefixCache`` and reused by every
step of sampling, inversion and reconstruction under the same prompt (pass ``cache=`` to share it across calls).

Every function here works eagerly on a ``Pi0`` and traces under ``jax.jit``; the ``*_split`` functions are the jitted
forms that take the model as ``(graphdef, state)`` (as ``Policy`` does), with the grid, method and iteration cap
static. ``layer_weights`` (``Pi0.layer_weights()``, e.g. ``Policy.layer_weights``) makes every pass run the layers
cut once at load time, as the policy samples; a model whose stacks were released (``Pi0.split_layer_weights``)
needs them.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from textlatent.model import ops
from textlatent.model.intervention import ResidualEdit
from textlatent.model.pi0 import ModelLayerWeights, Observation, Pi0, PrefixCache, sampling_times

Method = Literal["naive", "fixed_point"]
METHODS: tuple[str, ...] = ("naive", "fixed_point")
DEFAULT_ITERATIONS = 50
"""Cap on fixed-point iterations per step (each one an action-expert pass)."""
DEFAULT_TOLERANCE = 1e-6
"""Fixed-point stop: the iterate moved by at most this (max over every entry; float32 rounding of O(1) actions is
~1e-7). Iteration also stops when the change stops shrinking, which is where a bfloat16 model ends (its Δ·v is
rounded to ~4e-3·|Δ·v|)."""


@functools.cache
def time_grid(num_steps: int) -> np.ndarray:
    """float32 [S+1]: the time of each iterate of ``Pi0.sample_actions`` with ``num_steps`` steps (S = num_steps for
    any sane N): grid[0] = 1.0, grid[k+1] = float32(grid[k] + float32(-1/N)) while ≥ 1/(2N), exactly the sampler's
    carry; the last entry (the actions) is 0.0. The sampler's own final carry (~1e-8) never reaches the network;
    ``naive`` inversion evaluates the velocity at the actions at t = 0.0 there, as the reference implementation did."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    grid = np.asarray([*sampling_times(num_steps), 0.0], np.float32)
    grid.flags.writeable = False
    return grid


def grid_index(t: float, num_steps: int) -> int:
    """Index k of the grid time nearest ``t`` (0 ↔ t = 1, noise; S ↔ t = 0, actions). Raises if ``t`` is not within
    a quarter step of a grid point: partial inversion and reconstruction can only stop and start on the grid."""
    grid = time_grid(num_steps)
    k = int(np.argmin(np.abs(grid - np.float32(t))))
    if not abs(float(grid[k]) - float(t)) <= 0.25 / num_steps:
        raise ValueError(f"t = {t} is not a time of the {num_steps}-step grid {grid.tolist()}")
    return k


# --------------------------------------------------------------------------------------------------- model level
def encode(
    model: Pi0,
    obs: Observation,
    *,
    edit: ResidualEdit | None = None,
    layer_weights: ModelLayerWeights | None = None,
) -> PrefixCache:
    """The prefix KV cache of ``obs`` (with ``edit`` written into the residual stream): one prefix pass."""
    cache, _ = model.encode_prefix(model.preprocess(obs), edit=edit, layer_weights=layer_weights)
    return cache


@struct.dataclass
class InversionTrace:
    """``invert``'s result with its per-step diagnostics. Steps are in execution order (upward in t)."""

    noise: jax.Array  # [B, H, D] the latent at the stopping time (noise when it is 1)
    iterations: jax.Array  # int32 [S'] velocity evaluations of each step (1 for naive)
    step_change: jax.Array  # float32 [S'] max |Δx| of each step's last fixed-point iteration (0 for naive)


def invert_with_trace(
    model: Pi0,
    obs: Observation,
    actions: jax.Array,
    *,
    num_steps: int = 10,
    method: Method = "fixed_point",
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float | jax.Array = DEFAULT_TOLERANCE,
    start_t: float = 0.0,
    stop_t: float = 1.0,
    cache: PrefixCache | None = None,
    layer_weights: ModelLayerWeights | None = None,
) -> InversionTrace:
    """``invert`` plus the iterations and last change of every step (see ``invert``)."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {list(METHODS)}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    first, last = grid_index(start_t, num_steps), grid_index(stop_t, num_steps)
    if last > first:
        raise ValueError(f"inversion runs upward in t: start_t ({start_t}) must not exceed stop_t ({stop_t})")
    obs = model.preprocess(obs)
    _check_chunk(model, obs, actions, "actions")
    if cache is None:
        cache = encode(model, obs, layer_weights=layer_weights)
    expert_weights = None if layer_weights is None else layer_weights.llm
    grid = jnp.asarray(time_grid(num_steps))
    up = 1.0 / num_steps  # Δ: a Python float, so Δ·v rounds exactly as the sampler's dt·v (with the sign flipped)
    count = first - last

    def velocity(x: jax.Array, time: jax.Array) -> jax.Array:
        return model.velocity(obs, cache, x, jnp.broadcast_to(time, x.shape[:1]), layer_weights=expert_weights)

    iters = jnp.ones((count,), jnp.int32)
    changes = jnp.zeros((count,), jnp.float32)
    if count == 0:  # start = stop: nothing to invert (the loop bodies below could not even be traced)
        return InversionTrace(noise=actions, iterations=iters, step_change=changes)
    if method == "naive":

        def naive_step(i, x):
            k = first - i  # x sits at grid[k]; the step lands on grid[k - 1]
            return ops.euler_update(x, velocity(x, grid[k]), up)

        noise = jax.lax.fori_loop(0, count, naive_step, actions)
        return InversionTrace(noise=noise, iterations=iters, step_change=changes)

    def exact_step(i, carry):
        x, v_previous, iters, changes = carry
        target_time = grid[first - i - 1]
        # Warm start: one Euler step with the velocity of the previous solve (O(Δ²) off, rather than O(Δ) for x).
        guess = ops.euler_update(x, v_previous, up)

        def not_done(c):
            _, _, j, change, previous = c
            # Stop at the tolerance, at the cap, or once a change no longer shrinks: the map contracts, so that means
            # rounding of the velocity (bf16: ~1e-2·|Δv|) now sets the change and more passes cannot help.
            return (j == 0) | ((j < iterations) & (change > tolerance) & (change < previous))

        def iterate(c):
            y, _, j, change, _ = c
            v = velocity(y, target_time)
            y_next = ops.euler_update(x, v, up)  # the y whose sampler step lands on x, given v(y)
            return y_next, v, j + 1, jnp.max(jnp.abs(y_next - y)).astype(jnp.float32), change

        infinite = jnp.asarray(jnp.inf, jnp.float32)
        y, v, used, change, _ = jax.lax.while_loop(
            not_done, iterate, (guess, v_previous, jnp.int32(0), infinite, infinite)
        )
        return y, v, iters.at[i].set(used), changes.at[i].set(change)

    # The velocity keeps the model's dtype (bf16 when serving): Δ·v must round as the sampler's dt·v does.
    v_dtype = jax.eval_shape(velocity, actions, grid[first]).dtype
    start = (actions, jnp.zeros(actions.shape, v_dtype), iters, changes)
    noise, _, iters, changes = jax.lax.fori_loop(0, count, exact_step, start)
    return InversionTrace(noise=noise, iterations=iters, step_change=changes)


def invert(
    model: Pi0,
    obs: Observation,
    actions: jax.Array,
    *,
    num_steps: int = 10,
    method: Method = "fixed_point",
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float | jax.Array = DEFAULT_TOLERANCE,
    start_t: float = 0.0,
    stop_t: float = 1.0,
    cache: PrefixCache | None = None,
    layer_weights: ModelLayerWeights | None = None,
) -> jax.Array:
    """Map an action chunk (normalized model space, [B, H, D]) at time ``start_t`` back along the flow to the latent at
    ``stop_t`` ([B, H, D]; the noise when stop_t = 1), through the ``num_steps`` sampling grid in reverse.

    ``method``: ``"fixed_point"`` inverts each sampler step exactly (up to ``tolerance``, at most ``iterations``
    velocity evaluations a step); ``"naive"`` is explicit Euler upward, one evaluation a step, O(1/num_steps) off.
    ``start_t`` / ``stop_t`` must be grid times (partial inversion: stop_t = s < 1; then ``reconstruct(from_t=s)``).
    ``cache``: the prefix of ``obs`` from ``encode`` (encoded here if None) — it must be ``obs``'s, unedited, to invert
    the plan that ``obs`` produced.
    """
    return invert_with_trace(
        model,
        obs,
        actions,
        num_steps=num_steps,
        method=method,
        iterations=iterations,
        tolerance=tolerance,
        start_t=start_t,
        stop_t=stop_t,
        cache=cache,
        layer_weights=layer_weights,
    ).noise


def reconstruct(
    model: Pi0,
    obs: Observation,
    noise: jax.Array,
    *,
    num_steps: int = 10,
    cache: PrefixCache | None = None,
    edit: ResidualEdit | None = None,
    from_t: float = 1.0,
    layer_weights: ModelLayerWeights | None = None,
) -> jax.Array:
    """``Pi0.sample_actions`` from a given latent ``noise`` [B, H, D] at time ``from_t`` (a grid time; 1 = noise) to the
    actions [B, H, D], on the matching tail of the sampling grid. From t = 1 it is ``sample_actions(None, obs,
    noise=noise, edit=edit, layer_weights=layer_weights)`` bit for bit (the same loop, ``Pi0.integrate``).

    ``cache``: a prefix from ``encode(model, obs, edit=edit)``; encoded here if None. A cache already holds its edit, so
    passing both is refused (it would be ambiguous which one applies)."""
    if cache is not None and edit is not None:
        raise ValueError("pass either a prefix cache or an edit to encode; a cache already carries its edit")
    first = grid_index(from_t, num_steps)
    obs = model.preprocess(obs)
    _check_chunk(model, obs, noise, "noise")
    if cache is None:
        cache = encode(model, obs, edit=edit, layer_weights=layer_weights)
    # The sampler's loop, started at a grid time given as a Python float (as its 1.0): the float32 accumulation from
    # there visits the same times it does, the grid's remaining steps.
    grid = time_grid(num_steps)
    return model.integrate(
        obs,
        cache,
        noise,
        start_time=float(grid[first]),
        steps=len(grid) - 1 - first,
        dt=-1.0 / num_steps,
        layer_weights=layer_weights,
    )


@struct.dataclass
class InversionResult:
    """One request inverted, reconstructed and edited. Arrays are normalized model space, [B, H, D]."""

    original_actions: jax.Array  # the plan that was inverted (sampled from source_noise, or given)
    source_noise: jax.Array | None  # the noise original_actions were sampled from (None when actions were given)
    noise: jax.Array  # the inverted latent at time invert_to (the noise when invert_to = 1)
    reconstructed_actions: jax.Array  # noise integrated back under the original prompt
    edited_actions: jax.Array | None  # noise integrated back under the edit (None when none was asked for)
    iterations: jax.Array  # int32 [S'] velocity evaluations per inversion step
    step_change: jax.Array  # float32 [S'] last fixed-point change per inversion step
    prefix_encodings: int = struct.field(pytree_node=False, default=0)
    """Prefix passes this request ran: 1 (the original prompt: sampling, inversion and reconstruction share it) plus 1
    for the edit."""


def invert_and_edit(
    model: Pi0,
    obs: Observation,
    *,
    noise: jax.Array | None = None,
    actions: jax.Array | None = None,
    edit_obs: Observation | None = None,
    edit: ResidualEdit | None = None,
    num_steps: int = 10,
    method: Method = "fixed_point",
    iterations: int = DEFAULT_ITERATIONS,
    tolerance: float | jax.Array = DEFAULT_TOLERANCE,
    invert_to: float = 1.0,
    layer_weights: ModelLayerWeights | None = None,
) -> InversionResult:
    """Sample the plan of ``obs`` from ``noise`` (or take ``actions``, [B, H, D]), invert it to ``invert_to``,
    reconstruct it under the same prompt and, if ``edit_obs`` (another prompt's observation) and/or ``edit`` (a
    ``ResidualEdit``, e.g. TLI) is given, under the edit. The original prefix is encoded once and shared by sampling,
    inversion and reconstruction; the edit costs one more prefix pass. ``layer_weights``: see the module docstring."""
    if (noise is None) == (actions is None):
        raise ValueError("give exactly one of noise (to sample the original plan) or actions (to invert them)")
    obs = model.preprocess(obs)
    cache = encode(model, obs, layer_weights=layer_weights)
    encodings = 1
    if actions is None:
        actions = reconstruct(model, obs, noise, num_steps=num_steps, cache=cache, layer_weights=layer_weights)
    trace = invert_with_trace(
        model,
        obs,
        actions,
        num_steps=num_steps,
        method=method,
        iterations=iterations,
        tolerance=tolerance,
        stop_t=invert_to,
        cache=cache,
        layer_weights=layer_weights,
    )
    reconstructed = reconstruct(
        model, obs, trace.noise, num_steps=num_steps, cache=cache, from_t=invert_to, layer_weights=layer_weights
    )
    edited = None
    if edit_obs is not None or edit is not None:
        target = model.preprocess(obs if edit_obs is None else edit_obs)
        edit_cache = encode(model, target, edit=edit, layer_weights=layer_weights)
        encodings += 1
        edited = reconstruct(
            model,
            target,
            trace.noise,
            num_steps=num_steps,
            cache=edit_cache,
            from_t=invert_to,
            layer_weights=layer_weights,
        )
    return InversionResult(
        original_actions=actions,
        source_noise=noise,
        noise=trace.noise,
        reconstructed_actions=reconstructed,
        edited_actions=edited,
        iterations=trace.iterations,
        step_change=trace.step_change,
        prefix_encodings=encodings,
    )


def _check_chunk(model: Pi0, obs: Observation, chunk: jax.Array, name: str) -> None:
    expected = (obs.state.shape[0], model.config.action_horizon, model.config.action_dim)
    if tuple(chunk.shape) != expected:
        raise ValueError(f"{name} must have shape [B, H, D] = {list(expected)}, got {list(chunk.shape)}")


# ------------------------------------------------------------------------ jitted forms: model as (graphdef, state)
_STEPS = ("num_steps", "method", "iterations")


@functools.partial(jax.jit, static_argnums=0)
def encode_split(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    obs: Observation,
    edit: ResidualEdit | None = None,
    layer_weights: ModelLayerWeights | None = None,
):
    """``encode`` compiled: the prefix cache of ``obs``."""
    return encode(nnx.merge(graphdef, state), obs, edit=edit, layer_weights=layer_weights)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(*_STEPS, "start_t", "stop_t"))
def invert_split(graphdef: nnx.GraphDef, state: nnx.State, obs: Observation, actions: jax.Array, **kwargs):
    """``invert_with_trace`` compiled (``tolerance``, ``cache`` and ``layer_weights`` traced, everything else
    static)."""
    return invert_with_trace(nnx.merge(graphdef, state), obs, actions, **kwargs)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num_steps", "from_t"))
def reconstruct_split(graphdef: nnx.GraphDef, state: nnx.State, obs: Observation, noise: jax.Array, **kwargs):
    """``reconstruct`` compiled (``cache``, ``edit`` and ``layer_weights`` traced)."""
    return reconstruct(nnx.merge(graphdef, state), obs, noise, **kwargs)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(*_STEPS, "invert_to"))
def invert_and_edit_split(graphdef: nnx.GraphDef, state: nnx.State, obs: Observation, **kwargs) -> InversionResult:
    """``invert_and_edit`` compiled: one program per request shape (edit or not, noise or actions)."""
    return invert_and_edit(nnx.merge(graphdef, state), obs, **kwargs)
