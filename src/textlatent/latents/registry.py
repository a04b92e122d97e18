"""Registries of TLI tasks: which two base-task latents (A → B) and how many policy calls (N) drive a new prompt.

The bundled ``libero_ood.json`` holds the paper's 20 LIBERO-OOD tasks (goal and spatial suites). Latents are named
by their base task's prompt, as ``capture`` writes them (``put_the_bowl_on_the_plate.safetensors``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import pathlib

from textlatent.latents.capture import latent_file_name

FORMAT = "textlatent.tli_registry/1"
LIBERO_OOD = pathlib.Path(__file__).with_name("libero_ood.json")


@dataclasses.dataclass(frozen=True)
class TliTask:
    suite: str
    prompt: str
    a: str
    """Base task whose latent leads (α = 0)."""
    b: str
    """Base task whose latent takes over (α = 1 from policy call N+1 on)."""
    steps: int
    """N of the linear schedule."""

    @property
    def latent_names(self) -> tuple[str, str]:
        """The server-side names of A's and B's latents (file stems)."""
        return tuple(latent_file_name(p).removesuffix(".safetensors") for p in (self.a, self.b))

    def steering(self, mode: str = "tli", **extra) -> dict:
        """The request's ``steering`` field for this task (add ``episode_id`` and/or ``step``)."""
        return {
            "mode": mode,
            "latents": list(self.latent_names),
            "schedule": {"kind": "linear", "steps": self.steps},
            **extra,
        }


def load_registry(path: str | pathlib.Path | None = None) -> dict[str, TliTask]:
    """Tasks by prompt from a registry file (default: the paper's LIBERO-OOD tasks)."""
    path = pathlib.Path(path) if path is not None else LIBERO_OOD
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read TLI registry {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("tasks"), list):
        raise ValueError(f"{path} is not a TLI registry: expected {{'format': {FORMAT!r}, 'tasks': [...]}}")
    tasks = {}
    for i, row in enumerate(data["tasks"]):
        try:
            task = TliTask(str(row["suite"]), str(row["prompt"]), str(row["a"]), str(row["b"]), int(row["steps"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: task {i} needs suite, prompt, a, b and an integer steps ({exc})") from exc
        if task.steps < 0:
            raise ValueError(f"{path}: task {task.prompt!r} has negative steps {task.steps}")
        if task.prompt in tasks:
            raise ValueError(f"{path}: task {task.prompt!r} is listed twice")
        tasks[task.prompt] = task
    return tasks


def lookup(prompt: str, registry: dict[str, TliTask] | None = None) -> TliTask:
    registry = load_registry() if registry is None else registry
    key = prompt.strip().replace("_", " ")
    if key not in registry:
        close = difflib.get_close_matches(key, list(registry), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"no TLI task for prompt {prompt!r} in the registry ({len(registry)} tasks){hint}")
    return registry[key]
