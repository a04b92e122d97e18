"""openpi's ``norm_stats.json``: per-key mean/std (and optional 1%/99% quantiles) of state and actions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self):
        for name in ("mean", "std", "q01", "q99"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float64))
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"norm stats mean {self.mean.shape} and std {self.std.shape} must be equal 1-D shapes")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise ValueError("norm stats contain NaN or inf")

    def to_json(self) -> dict:
        return {k: None if v is None else v.tolist() for k, v in dataclasses.asdict(self).items()}


def load(path: str | pathlib.Path) -> dict[str, NormStats]:
    """Read ``norm_stats.json`` (a file, or the asset directory holding it)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "norm_stats.json"
    if not path.exists():
        raise FileNotFoundError(f"norm stats not found at {path}")
    try:
        raw = json.loads(path.read_text())["norm_stats"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an openpi norm_stats.json (expected {{'norm_stats': {{key: stats}}}})") from e
    stats = {}
    for key, value in raw.items():
        try:
            stats[key] = NormStats(value["mean"], value["std"], value.get("q01"), value.get("q99"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: entry {key!r} is malformed: {e}") from e
    return stats


def save(path: str | pathlib.Path, stats: dict[str, NormStats]) -> pathlib.Path:
    """Write ``norm_stats.json`` in openpi's format (indent 2) into the directory ``path``."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "norm_stats.json"
    out.write_text(json.dumps({"norm_stats": {k: v.to_json() for k, v in stats.items()}}, indent=2))
    return out


def fingerprint(stats: dict[str, NormStats]) -> str:
    """A short hash of the numbers, to record which statistics a result was computed with."""
    digest = hashlib.sha256()
    for key in sorted(stats):
        for name, value in sorted(dataclasses.asdict(stats[key]).items()):
            digest.update(f"{key}/{name}".encode())
            if value is not None:
                digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]
