"""The optional ``inversion`` field of a request: invert the request's plan to noise, reconstruct it, and regenerate
it under an edit — answered by the same server, on the same accelerator thread as sampling.

    {"inversion": {"method": "fixed_point", "edit_prompt": "put the bowl on the stove",
                   "window": [3, 8], "step": 5}}

``edit_prompt`` and/or ``steering`` (the same schema as the top-level field, e.g. TLI with registered latents) define
the edit. ``window`` = [first, end) limits the edit to those policy calls of an episode (``step``, or the steering's
``step``/``episode_id``), so edits are scoped per episode, never by a server-wide counter. The reply carries
``actions`` (the original plan, as plain π0 would answer) and ``inversion``: reconstructed and edited actions, the
inverted noise, the noise the plan came from, metrics (MSE in model space over all and the 7 real dims, and in robot
action space) and the number of prefix encodings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from textlatent.inversion.flow import METHODS
from textlatent.latents.latent import TextLatent
from textlatent.serving.steering import Steering, SteeringError, check_fields, integer, parse_steering

INVERSION_KEY = "inversion"
FIELDS = {
    "method": "fixed_point (exact) or naive (the reference implementation's Euler inversion)",
    "iterations": "most fixed-point iterations per flow step (1..200)",
    "tolerance": "fixed-point stop, > 0",
    "invert_to": "invert up to this flow time (a grid time in (0, 1]; 1 = all the way to noise)",
    "edit_prompt": "regenerate under this prompt",
    "steering": "regenerate under this intervention (same schema as the top-level steering field)",
    "window": "[first, end): policy calls of the episode in which the edit applies",
    "step": "this request's policy-call index within its episode",
}


@dataclasses.dataclass(frozen=True)
class InversionRequest:
    method: str = "fixed_point"
    iterations: int = 50
    tolerance: float = 1e-6
    invert_to: float = 1.0
    edit_prompt: str | None = None
    steering: Steering | None = None
    window: tuple[int, int] | None = None
    step: int | None = None

    @property
    def settings(self) -> tuple:
        """What a compiled inverter depends on."""
        return (self.method, self.iterations, self.tolerance, self.invert_to)


def _int(name: str, value: Any, low: int, high: int) -> int:
    return integer(f"inversion.{name}", value, low, high)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SteeringError(f"inversion.{name} must be a finite number, got {value!r:.60}")
    return float(value)


def parse_inversion(raw: Any, latents: dict[str, TextLatent]) -> InversionRequest:
    """Validate a request's inversion field; errors say what to send instead."""
    check_fields(raw, "inversion", FIELDS)
    method = raw.get("method", "fixed_point")
    if method not in METHODS:
        raise SteeringError(f"inversion.method must be one of {list(METHODS)}, got {method!r:.60}")
    iterations = _int("iterations", raw.get("iterations", 50), 1, 200)
    tolerance = _float("tolerance", raw.get("tolerance", 1e-6))
    if tolerance <= 0:
        raise SteeringError(f"inversion.tolerance must be > 0, got {tolerance}")
    invert_to = _float("invert_to", raw.get("invert_to", 1.0))
    if not 0 < invert_to <= 1:
        raise SteeringError(f"inversion.invert_to must be in (0, 1], got {invert_to}")
    edit_prompt = raw.get("edit_prompt")
    if edit_prompt is not None and (not isinstance(edit_prompt, str) or not edit_prompt.strip()):
        raise SteeringError("inversion.edit_prompt must be a non-empty string")
    steering = None if raw.get("steering") is None else parse_steering(raw["steering"], latents)
    window = raw.get("window")
    if window is not None:
        if not isinstance(window, list | tuple) or len(window) != 2:
            raise SteeringError(f"inversion.window must be [first, end) policy calls, got {window!r:.60}")
        window = (_int("window[0]", window[0], 0, 10**9), _int("window[1]", window[1], 0, 10**9))
        if window[1] <= window[0]:
            raise SteeringError(f"inversion.window [first, end) is empty: {list(window)}")
    step = None if raw.get("step") is None else _int("step", raw["step"], 0, 10**9)
    has_call = step is not None or (steering is not None and (steering.step is not None or steering.episode_id))
    if window is not None and not has_call:
        raise SteeringError("inversion.window needs the policy-call index: send inversion.step (or steering.step)")
    return InversionRequest(method, iterations, tolerance, invert_to, edit_prompt, steering, window, step)


def inversion_reply(record, batched: bool) -> dict:
    """The ``inversion`` part of a reply (arrays without the batch axis for single requests)."""

    def rows(x):
        return None if x is None else (x if batched else x[0])

    def metrics(m):
        if m is None:
            return None
        values = {f.name: np.asarray(getattr(m, f.name), np.float64) for f in dataclasses.fields(m)}
        return {k: (v if batched else float(v[0])) for k, v in values.items()}

    reply = {
        "reconstructed_actions": rows(record.reconstructed_actions),
        "edited_actions": rows(record.edited_actions),
        "noise": rows(record.noise),
        "source_noise": rows(record.source_noise),
        "metrics": {"reconstruction": metrics(record.reconstruction), "edit": metrics(record.edit)},
        "iterations": np.asarray(record.iterations),
        "prefix_encodings": int(record.prefix_encodings),
    }
    return {k: v for k, v in reply.items() if v is not None}
