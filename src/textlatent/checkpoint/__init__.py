"""openpi checkpoints: ``<dir>/params`` (orbax) and ``<dir>/assets/<asset_id>/norm_stats.json``; local, gs:// or hf://."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from textlatent._lazy import lazy_attributes
from textlatent.checkpoint import norm_stats
from textlatent.checkpoint.download import cache_dir, resolve
from textlatent.checkpoint.norm_stats import NormStats

if TYPE_CHECKING:
    from textlatent.checkpoint.params import (
        CheckpointMismatchError,
        load_model,
        model_from_params,
        model_params,
        read_param_shapes,
        restore_params,
        save_params,
    )

# The parameter functions need JAX and orbax; they load on first use, so that norm stats (which the simulator
# processes of an evaluation read through the policy transforms) do not import them.
_LAZY = {
    name: "textlatent.checkpoint.params"
    for name in (
        "CheckpointMismatchError",
        "load_model",
        "model_from_params",
        "model_params",
        "read_param_shapes",
        "restore_params",
        "save_params",
    )
}


__getattr__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = [
    "CheckpointMismatchError",
    "NormStats",
    "cache_dir",
    "load_model",
    "load_norm_stats",
    "model_from_params",
    "model_params",
    "norm_stats",
    "read_param_shapes",
    "resolve",
    "resolve_checkpoint",
    "restore_params",
    "save_params",
    "write_checkpoint",
]


def resolve_checkpoint(location: str | pathlib.Path) -> pathlib.Path:
    """Local checkpoint directory for ``location`` (downloaded once if remote); must contain ``params/``."""
    path = resolve(location)
    if not (path / "params").is_dir():
        if path.name == "params" and path.is_dir():
            raise ValueError(f"{location} points at the params folder itself; pass its parent checkpoint directory")
        raise FileNotFoundError(f"{location} is not an openpi checkpoint: {path / 'params'} is missing")
    return path


def load_norm_stats(checkpoint_dir: str | pathlib.Path, asset_id: str) -> dict[str, NormStats]:
    path = pathlib.Path(checkpoint_dir) / "assets" / asset_id / "norm_stats.json"
    if not path.exists():
        assets = pathlib.Path(checkpoint_dir) / "assets"
        found = (
            sorted(str(p.parent.relative_to(assets)) for p in assets.rglob("norm_stats.json"))
            if assets.exists()
            else []
        )
        raise FileNotFoundError(
            f"norm stats for asset_id {asset_id!r} not found at {path}"
            + (f"; the checkpoint has them for {found} (pass asset_id=...)" if found else "")
        )
    return norm_stats.load(path)


def write_checkpoint(
    directory: str | pathlib.Path,
    params: dict,
    *,
    stats: dict[str, NormStats] | None = None,
    asset_id: str | None = None,
) -> pathlib.Path:
    """Write ``params`` (a pure dict, e.g. ``model_params(model)``) and optional norm stats in openpi's layout."""
    from textlatent.checkpoint.params import save_params

    directory = pathlib.Path(directory)
    save_params(directory / "params", params)
    if stats is not None:
        if not asset_id:
            raise ValueError("asset_id is required with norm stats (e.g. 'physical-intelligence/libero')")
        norm_stats.save(directory / "assets" / asset_id, stats)
    return directory
