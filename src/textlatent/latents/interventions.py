"""Interventions and schedules as plain values, resolved per policy call into prompt changes and a residual edit.

The formulas are the text-latent paper's (as its code computes them); "layer l" is the residual stream entering Gemma
block l, and a latent's slot k is prompt-token slot k. With ``T_A``, ``T_B`` the two base-task latents, α the schedule
value at this policy call and all arithmetic in the model's activation dtype (bf16 for openpi's serving mode):

* ``tli``: add ``(1-α)(T_A-T_B) + α(T_B-T_A)`` (= (1-2α)(T_A-T_B)) before blocks 1…L-1; the real prompt is kept.
* ``tei``: replace the prompt embeddings by ``(1-α)T_A[0] + αT_B[0]`` on the latents' slots and by zeros on the other
  prompt slots (the prompt's attention mask is kept).
* ``tei_tli``: both of the above.
* ``single_layer``: the TLI term at one layer only.
* ``reconstruction``: blank prompt (every real token but the last becomes BOS) plus the task's own latent before
  blocks 1…L-1.
* ``blank`` / ``mask``: the prompt baselines (blank tokens; or every prompt token masked out).
* ``obscure``: the prompt's token ids replaced by given ids (e.g. a decoded latent).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from textlatent.latents.latent import TextLatent
from textlatent.model import ResidualEdit

MODES = ("tli", "tei", "tei_tli", "single_layer", "reconstruction", "blank", "mask", "obscure")
Mode = Literal["tli", "tei", "tei_tli", "single_layer", "reconstruction", "blank", "mask", "obscure"]
SCHEDULES = ("linear", "cosine", "switch", "constant")
INTERPOLATIONS = ("lerp", "slerp")
LATENT_COUNT = {
    "tli": 2,
    "tei": 2,
    "tei_tli": 2,
    "single_layer": 2,
    "reconstruction": 1,
    "blank": 0,
    "mask": 0,
    "obscure": 0,
}
BOS_ID = 2


class InterventionError(ValueError):
    """An intervention that cannot be applied (wrong latents, layer, window, …)."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """α as a function of the policy-call index ``s`` within an episode.

    ``linear`` is the paper's: ``linspace(0, 1, N+2)`` in the activation dtype, indexed at ``min(s, N+1)`` (α reaches 1
    at call N+1 and stays). ``cosine`` eases the same ramp: ``(1 - cos(π·r))/2`` with ``r = min(s, N+1)/(N+1)``.
    ``switch`` jumps from 0 to 1 where the linear ramp reaches 0.5. ``constant`` is ``value`` at every call.
    """

    kind: Literal["linear", "cosine", "switch", "constant"] = "linear"
    steps: int = 0
    """N: the ramp lasts N+1 policy calls."""
    value: float = 0.0
    """α of the ``constant`` schedule."""

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise InterventionError(f"unknown schedule {self.kind!r}; choose one of {list(SCHEDULES)}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise InterventionError(f"schedule steps must be a non-negative integer, got {self.steps!r}")
        if not (math.isfinite(self.value) and 0.0 <= self.value <= 1.0):
            raise InterventionError(f"a constant schedule's value must be in [0, 1], got {self.value!r}")

    def alpha(self, call: int, dtype=np.float32) -> float:
        if call < 0:
            raise InterventionError(f"the policy-call index must be >= 0, got {call}")
        n = self.steps + 1
        index = min(call, n)
        if self.kind == "constant":
            value = self.value
        elif self.kind == "linear":
            # The paper builds the ramp with jnp.linspace in the activation dtype; so does this (same rounding).
            return float(np.asarray(jnp.linspace(0, 1, n + 1, dtype=dtype))[index].astype(np.float32))
        elif self.kind == "cosine":
            value = (1 - math.cos(math.pi * index / n)) / 2
        else:
            value = float(index / n >= 0.5)  # the paper's switch_interp takes B from α = 0.5 on
        return float(np.asarray(value, np.float32).astype(dtype).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Intervention:
    """What to do to π0's prompt and residual stream. Latents are (A, B) for the interpolating modes, (task,) for
    reconstruction. ``slots`` limits the latents to their first slots (the paper used 9); default: all of them."""

    mode: Mode
    latents: tuple[TextLatent, ...] = ()
    schedule: Schedule = Schedule()
    layer: int | None = None
    slots: int | None = None
    token_ids: tuple[int, ...] | None = None
    interpolation: Literal["lerp", "slerp"] = "lerp"
    """How the two endpoints mix at α: the paper's linear ``(1-α)H₁ + αH₂``, or spherical per (layer, slot) vector
    (magnitude and angle interpolated; equal to lerp where the endpoints are parallel)."""

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise InterventionError(
                f"unknown interpolation {self.interpolation!r}; choose one of {list(INTERPOLATIONS)}"
            )
        if self.mode not in MODES:
            raise InterventionError(f"unknown intervention mode {self.mode!r}; choose one of {list(MODES)}")
        need = LATENT_COUNT[self.mode]
        if len(self.latents) != need:
            raise InterventionError(f"mode {self.mode!r} takes {need} latent(s), got {len(self.latents)}")
        if self.latents:
            first = self.latents[0]
            for latent in self.latents[1:]:
                if latent.states.shape[0] != first.states.shape[0] or latent.width != first.width:
                    raise InterventionError(
                        f"latents have different layer/width shapes: {first.states.shape} vs {latent.states.shape}"
                    )
        if (self.mode == "single_layer") != (self.layer is not None):
            raise InterventionError("'layer' is required by mode 'single_layer' and only allowed there")
        if (self.mode == "obscure") != (self.token_ids is not None):
            raise InterventionError("'token_ids' is required by mode 'obscure' and only allowed there")
        if self.mode == "obscure" and len(self.token_ids) == 0:
            raise InterventionError("'token_ids' of mode 'obscure' must not be empty")
        if self.slots is not None and (not isinstance(self.slots, int) or self.slots < 1):
            raise InterventionError(f"'slots' must be a positive integer, got {self.slots!r}")

    @property
    def uses_schedule(self) -> bool:
        return self.mode in ("tli", "tei", "tei_tli", "single_layer")

    def num_slots(self) -> int:
        available = min(latent.num_slots for latent in self.latents)
        if self.slots is None:
            return available
        if self.slots > available:
            raise InterventionError(f"'slots' = {self.slots} but the latents have only {available} slots")
        return self.slots


@dataclasses.dataclass(frozen=True)
class ResolvedEdit:
    """One request's residual edit (numpy, batch axis 1): prompt-token ``slots`` [K], ``delta`` [L, 1, K, D] or None,
    ``replace`` [1, K, D] or None. float32 arrays holding values already rounded to the activation dtype."""

    slots: np.ndarray
    delta: np.ndarray | None
    replace: np.ndarray | None

    @property
    def signature(self) -> tuple:
        """Requests whose edits share a signature can run in one batched call."""
        return (tuple(self.slots.tolist()), self.delta is not None, self.replace is not None)


def stack_edits(edits: list[ResolvedEdit], text_start: int) -> ResidualEdit:
    """Rows' resolved edits of one signature as one batched ``ResidualEdit`` at prefix positions ``text_start + slot``
    (every row shares slots and which parts exist)."""
    first = edits[0]
    return ResidualEdit(
        positions=jnp.asarray(first.slots + text_start, jnp.int32),
        delta=None if first.delta is None else jnp.asarray(np.concatenate([e.delta for e in edits], axis=1)),
        replace_embeddings=None if first.replace is None else jnp.asarray(np.concatenate([e.replace for e in edits])),
    )


def _dtype(name: str):
    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def resolve(
    intervention: Intervention,
    call: int,
    tokens: np.ndarray,
    mask: np.ndarray,
    *,
    depth: int,
    width: int,
    dtype: str = "bfloat16",
) -> tuple[np.ndarray, np.ndarray, ResolvedEdit | None, float | None]:
    """Apply an intervention at policy call ``call`` to one tokenized prompt ([max_len] ids and mask).

    Returns (tokens, mask, edit or None, α or None)."""
    tokens, mask = np.array(tokens, np.int32), np.array(mask, bool)
    max_len = tokens.shape[0]
    valid = int(mask.sum())
    mode = intervention.mode
    act = _dtype(dtype)
    for latent in intervention.latents:
        if latent.num_layers != depth or latent.width != width:
            raise InterventionError(
                f"latent of shape {latent.states.shape} does not fit this model (layers {depth}, width {width})"
            )

    if mode == "mask":
        return tokens, np.zeros_like(mask), None, None
    if mode in ("blank", "reconstruction"):
        tokens[: max(valid - 1, 0)] = BOS_ID  # same length as the real prompt; its last token ("\n") stays
    if mode == "obscure":
        ids = np.asarray(intervention.token_ids, np.int64)
        if len(ids) > max_len:
            raise InterventionError(f"{len(ids)} token ids do not fit the {max_len} prompt slots")
        tokens = np.zeros(max_len, np.int32)
        tokens[: len(ids)] = ids
        mask = np.arange(max_len) < len(ids)
        return tokens, mask, None, None
    if mode == "blank":
        return tokens, mask, None, None

    k = intervention.num_slots()
    if k > max_len:
        raise InterventionError(f"the latents cover {k} slots but the prompt has only {max_len}")
    if mode == "reconstruction":
        delta = intervention.latents[0].states[:, :k].astype(act)
        delta[0] = 0  # layer 0 would leak the task's prompt embeddings: only blocks 1… get the latent
        edit = ResolvedEdit(np.arange(k), delta.astype(np.float32)[:, None], None)
        return tokens, mask, edit, None

    alpha = intervention.schedule.alpha(call, act)
    a = np.asarray(alpha, act)
    one_minus = np.asarray(1, act) - a
    t_a = intervention.latents[0].states[:, :k].astype(act)
    t_b = intervention.latents[1].states[:, :k].astype(act)
    # The paper's two endpoints: layer 0 holds the base prompts' embeddings, layers ≥ 1 the differences.
    h1, h2 = t_a.copy(), t_b.copy()
    h1[1:] = t_a[1:] - t_b[1:]
    h2[1:] = t_b[1:] - t_a[1:]
    mixed = (one_minus * h1 + a * h2).astype(act)
    if intervention.interpolation == "slerp":
        # Where the endpoints have no great circle (TLI's H2 = -H1 at layers >= 1) the mix stays the lerp above,
        # bit for bit in the activation dtype, not a float32 lerp rounded once.
        spherical, turns = _spherical(h1.astype(np.float32), h2.astype(np.float32), alpha)
        mixed = np.where(turns, spherical.astype(act), mixed)

    delta = replace = None
    slots = np.arange(k)
    if mode in ("tli", "tei_tli", "single_layer"):
        delta = mixed.copy()
        delta[0] = 0
        if mode == "single_layer":
            if not 1 <= intervention.layer < depth:
                raise InterventionError(
                    f"single-layer intervention needs layer in 1..{depth - 1} (layer 0 is mode 'tei'), got {intervention.layer}"
                )
            keep = np.zeros(depth, bool)
            keep[intervention.layer] = True
            delta[~keep] = 0
    if mode in ("tei", "tei_tli"):
        # Replacement covers every prompt slot: the latents' slots get the mixed embeddings, the rest zeros.
        slots = np.arange(max_len)
        replace = np.zeros((max_len, width), act)
        replace[:k] = mixed[0]
        replace = replace.astype(np.float32)[None]
        if delta is not None:
            padded = np.zeros((depth, max_len, width), act)
            padded[:, :k] = delta
            delta = padded
    edit = ResolvedEdit(slots, None if delta is None else delta.astype(np.float32)[:, None], replace)
    return tokens, mask, edit, alpha


def slerp(h1: np.ndarray, h2: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation of each vector along the last axis: the direction turns through the angle Ω between
    the endpoints (sin((1-α)Ω)·û₁ + sin(αΩ)·û₂)/sin Ω while the norm goes linearly from |h1| to |h2|. Falls back to the
    linear mix where Ω is ~0 or ~π (no unique great circle)."""
    spherical, turns = _spherical(h1, h2, alpha)
    return np.where(turns, spherical, (1 - alpha) * h1 + alpha * h2)


def _spherical(h1: np.ndarray, h2: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The spherical mix (in the inputs' dtype) and where it is defined. Computed in float64: in float32, cos Ω of
    exactly antiparallel vectors comes out up to ~1e-7 above -1, i.e. Ω ~5e-4 short of π, which passed the sin Ω
    test and turned the mix of h and -h into cos(απ)·h instead of the lerp (1-2α)·h."""
    dtype = np.result_type(h1, h2)
    h1, h2 = np.asarray(h1, np.float64), np.asarray(h2, np.float64)
    n1 = np.linalg.norm(h1, axis=-1, keepdims=True)
    n2 = np.linalg.norm(h2, axis=-1, keepdims=True)
    u1 = np.divide(h1, n1, out=np.zeros_like(h1), where=n1 > 0)
    u2 = np.divide(h2, n2, out=np.zeros_like(h2), where=n2 > 0)
    cos = np.clip(np.sum(u1 * u2, axis=-1, keepdims=True), -1.0, 1.0)
    omega = np.arccos(cos)
    sin = np.sin(omega)
    turns = (sin > 1e-4) & (n1 > 0) & (n2 > 0)
    sin_safe = np.where(turns, sin, 1.0)
    direction = (np.sin((1 - alpha) * omega) * u1 + np.sin(alpha * omega) * u2) / sin_safe
    spherical = direction * ((1 - alpha) * n1 + alpha * n2)
    return spherical.astype(dtype), turns
