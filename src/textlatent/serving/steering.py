"""The optional ``steering`` field of a request: which registered latents, which intervention, which policy call.

A request without ``steering`` is plain π0. With it, e.g.::

    {"steering": {"mode": "tli", "latents": ["put_the_bowl_on_the_plate", "put_the_bowl_on_the_stove"],
                  "schedule": {"kind": "linear", "steps": 24}, "episode_id": "ep-17", "step": 3}}

``step`` is the policy-call index within the episode (0 on the first call), so α is a function of the request alone
and any number of clients and episodes can share a server. When a client cannot count, it may send only
``episode_id``: the server then numbers that episode's calls in arrival order (0, 1, 2, …).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

from textlatent.latents.interventions import LATENT_COUNT, MODES, SCHEDULES, Intervention, InterventionError, Schedule
from textlatent.latents.latent import TextLatent

STEERING_KEY = "steering"
FIELDS = {
    "mode": "one of " + ", ".join(MODES),
    "latents": "list of latent names registered on the server",
    "schedule": "{'kind': " + "|".join(SCHEDULES) + ", 'steps': N, 'value': α for constant}",
    "layer": "block index for mode single_layer",
    "slots": "use only the first slots of the latents (the paper used 9)",
    "token_ids": "prompt token ids for mode obscure",
    "interpolation": "lerp (the paper's) or slerp",
    "episode_id": "string or integer naming the episode",
    "step": "policy-call index within the episode, from 0",
}


class SteeringError(ValueError):
    """A steering field the server cannot honour; the message says what to send instead."""


@dataclasses.dataclass(frozen=True)
class Steering:
    intervention: Intervention
    episode_id: str | None
    step: int | None


def integer(field: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` as an integer in [minimum, maximum]; ``field`` names it in the error (e.g. ``steering.step``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SteeringError(f"{field} must be an integer {bound}, got {value!r:.60}")
    return value


def check_fields(raw: Any, section: str, fields: dict[str, str]) -> None:
    """A request section must be a map of known fields; the error lists them with what each takes."""
    if not isinstance(raw, dict):
        raise SteeringError(f"{section} must be a map, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise SteeringError(
            f"unknown {section} fields {unknown}; allowed: " + "; ".join(f"{k} ({v})" for k, v in fields.items())
        )


def _int(name: str, value: Any, minimum: int = 0) -> int:
    return integer(f"steering.{name}", value, minimum)


def parse_steering(raw: Any, latents: dict[str, TextLatent]) -> Steering:
    """Validate a request's steering field against the latents registered on the server."""
    check_fields(raw, "steering", FIELDS)
    mode = raw.get("mode")
    if mode not in MODES:
        raise SteeringError(f"steering.mode must be one of {list(MODES)}, got {mode!r:.60}")

    names = raw.get("latents", [])
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise SteeringError(f"steering.latents must be a list of names, got {names!r:.80}")
    if len(names) != LATENT_COUNT[mode]:
        raise SteeringError(f"mode {mode!r} takes {LATENT_COUNT[mode]} latent name(s), got {len(names)}")
    missing = [n for n in names if n not in latents]
    if missing:
        known = sorted(latents)
        hint = (
            f"registered: {known[:20]}{' …' if len(known) > 20 else ''}"
            if known
            else "none are registered (start the server with --latents)"
        )
        raise SteeringError(f"unknown latent(s) {missing}; {hint}")

    schedule_raw = raw.get("schedule", {})
    if not isinstance(schedule_raw, dict) or not set(schedule_raw) <= {"kind", "steps", "value"}:
        raise SteeringError(f"steering.schedule must be a map with kind, steps and/or value, got {schedule_raw!r:.80}")
    value = schedule_raw.get("value", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SteeringError(f"steering.schedule.value must be a number in [0, 1], got {value!r:.40}")
    token_ids = raw.get("token_ids")
    if token_ids is not None:
        if not isinstance(token_ids, list | tuple) or not token_ids:
            raise SteeringError(f"steering.token_ids must be a non-empty list of integers, got {token_ids!r:.80}")
        token_ids = tuple(_int("token_ids[]", t) for t in token_ids)
    try:
        schedule = Schedule(
            kind=schedule_raw.get("kind", "linear"),
            steps=_int("schedule.steps", schedule_raw.get("steps", 0)),
            value=float(value),
        )
        intervention = Intervention(
            mode=mode,
            latents=tuple(latents[n] for n in names),
            schedule=schedule,
            layer=None if raw.get("layer") is None else _int("layer", raw["layer"]),
            slots=None if raw.get("slots") is None else _int("slots", raw["slots"], 1),
            token_ids=token_ids,
            interpolation=raw.get("interpolation", "lerp"),
        )
    except InterventionError as exc:
        raise SteeringError(str(exc)) from exc

    episode = raw.get("episode_id")
    if episode is not None and (
        isinstance(episode, bool) or not isinstance(episode, str | int) or len(str(episode)) > 256
    ):
        raise SteeringError(f"steering.episode_id must be a string or integer (≤ 256 characters), got {episode!r:.60}")
    step = None if raw.get("step") is None else _int("step", raw["step"])
    if intervention.uses_schedule and step is None and episode is None:
        raise SteeringError(
            f"mode {mode!r} follows a schedule: send steering.step (policy call in the episode) or episode_id"
        )
    return Steering(intervention, None if episode is None else str(episode), step)


class EpisodeCounter:
    """Policy-call numbers for episodes whose clients send only an episode id (bounded: oldest episodes forgotten)."""

    def __init__(self, capacity: int = 4096):
        self._next: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def take(self, episode_id: str) -> int:
        with self._lock:
            step = self._next.pop(episode_id, 0)
            self._next[episode_id] = step + 1
            while len(self._next) > self._capacity:
                self._next.popitem(last=False)
            return step
