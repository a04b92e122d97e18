"""``TextLatent``: one task's averaged prompt-token residual stream, stored as safetensors with JSON metadata.

``states[l, k]`` is the residual stream entering Gemma block ``l`` at prompt-token slot ``k`` (slot 0 = BOS), averaged
over a task's frames. Slots, not absolute prefix positions, index it, so a latent does not depend on how many image
slots precede the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

FORMAT = "textlatent.text_latent/1"


class LatentFileError(ValueError):
    """A latent file that cannot be read as a text latent."""


@dataclasses.dataclass(frozen=True)
class TextLatent:
    states: np.ndarray
    """float32 [layers, slots, width]."""
    token_ids: np.ndarray
    """int32 [slots]: the prompt tokens at those slots."""
    prompt: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """JSON-serializable provenance (checkpoint fingerprint, frames counted, …)."""

    def __post_init__(self):
        states = np.asarray(self.states)
        token_ids = np.asarray(self.token_ids)
        if states.ndim != 3:
            raise ValueError(f"TextLatent.states must be [layers, slots, width], got shape {states.shape}")
        if token_ids.shape != (states.shape[1],):
            raise ValueError(
                f"TextLatent.token_ids must have one id per slot ({states.shape[1]}), got {token_ids.shape}"
            )
        if not np.all(np.isfinite(states)):
            raise ValueError("TextLatent.states contains NaN or inf")
        object.__setattr__(self, "states", states.astype(np.float32, copy=False))
        object.__setattr__(self, "token_ids", token_ids.astype(np.int32, copy=False))

    @property
    def num_layers(self) -> int:
        return self.states.shape[0]

    @property
    def num_slots(self) -> int:
        return self.states.shape[1]

    @property
    def width(self) -> int:
        return self.states.shape[2]

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        from safetensors.numpy import save_file

        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "prompt": self.prompt, "metadata": self.metadata}
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {"states": self.states, "token_ids": self.token_ids}, str(tmp), metadata={"textlatent": json.dumps(header)}
        )
        tmp.replace(path)  # never leave a half-written latent under the real name
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextLatent:
        from safetensors import SafetensorError, safe_open

        path = pathlib.Path(path)
        if not path.is_file():
            raise LatentFileError(f"no latent file at {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = json.loads((f.metadata() or {}).get("textlatent", "null"))
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise LatentFileError(f"{path} is a safetensors file but not a textlatent text latent ({FORMAT})")
                missing = {"states", "token_ids"} - set(f.keys())
                if missing:
                    raise LatentFileError(f"{path} lacks tensors {sorted(missing)}")
                states, token_ids = f.get_tensor("states"), f.get_tensor("token_ids")
        except (SafetensorError, json.JSONDecodeError, OSError) as exc:
            raise LatentFileError(f"cannot read latent {path}: {exc}") from exc
        try:
            return cls(states, token_ids, str(header.get("prompt", "")), dict(header.get("metadata") or {}))
        except ValueError as exc:
            raise LatentFileError(f"{path}: {exc}") from exc


def load_latents(paths) -> dict[str, TextLatent]:
    """Latents by name (file stem) from files and directories of ``*.safetensors``."""
    found: dict[str, TextLatent] = {}
    for entry in paths:
        entry = pathlib.Path(entry)
        files = sorted(entry.glob("*.safetensors")) if entry.is_dir() else [entry]
        if entry.is_dir() and not files:
            raise LatentFileError(f"{entry} holds no *.safetensors latents")
        for file in files:
            if file.stem in found:
                raise LatentFileError(f"two latents are named {file.stem!r}; rename one of the files")
            found[file.stem] = TextLatent.load(file)
    return found
