"""Capture text latents: the residual stream entering each Gemma block at the prompt-token slots, averaged over a
task's frames (the paper's definition: bf16 activations summed in float32, divided by the frame count).

Only the prefix runs (SigLIP + the VLM stream; no action expert, no loss), batched, with the running sums kept on the
device. Frames are grouped by prompt, so one pass can capture many tasks; rows beyond a batch's real frames carry
weight 0, so a short last batch reuses the compiled program.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import textlatent
from textlatent.latents.latent import LatentFileError, TextLatent
from textlatent.model import Observation
from textlatent.model.pi0 import lookup_pixel_values, uint8_pixel_values
from textlatent.policy import Policy
from textlatent.policy.policy import observation_from_inputs

logger = logging.getLogger(__name__)


def _prompt_sums(
    graphdef, state, observation: Observation, weights: jax.Array, layer_weights=None, pixel_values=None
) -> jax.Array:
    """Σ_b weights[b] · h[l, b, slot] in float32: [layers, prompt slots, width]. ``layer_weights``: the policy's
    weights cut per layer at load time (faster on accelerators), or None. ``pixel_values``: ``uint8_pixel_values()``
    when ``observation`` holds uint8 images (converted here by table lookup: the eager conversion's bits)."""
    if pixel_values is not None:
        observation = lookup_pixel_values(observation, pixel_values)
    model = nnx.merge(graphdef, state)
    slots = jnp.arange(model.config.max_token_len)
    positions = model.text_positions(slots)
    states = model.prefix_residuals(observation, positions, layer_weights=layer_weights)  # [L, B, S, D]
    return jnp.einsum("lbsd,b->lsd", states.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass
class _Running:
    sums: jax.Array  # float32 [L, S, D] on the device
    frames: int
    token_ids: np.ndarray  # int32 [S] (padded to max_token_len)
    num_tokens: int  # real prompt tokens (BOS … "\n")


class LatentCapture:
    """Running per-prompt sums of prompt-token residuals. ``add`` takes LIBERO requests (the policy's input format,
    batched or not); ``latents`` returns the averages as ``TextLatent`` values."""

    def __init__(self, policy: Policy, *, batch_size: int = 32, exact_padding: bool = False):
        """``exact_padding``: run the full prefix layout, so that states of padding slots (read by a fixed window
        longer than a prompt, like the paper's 9 slots) are the paper's. Otherwise the masked camera and trailing
        padding are left out (``compact_observation``): real prompt tokens are unchanged, and much faster."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.policy = policy
        self.batch_size = batch_size
        self.exact_padding = exact_padding
        self._state = policy.model_split[1]
        # The policy's XLA options for this batch size (on a GPU, cuBLAS for large batches); the model's graphdef
        # bound in, not hashed as a static argument in every call.
        self._sums = policy.jitted(policy.bound(_prompt_sums), batch_size)
        self._pixel_values = uint8_pixel_values()
        self.running: dict[str, _Running] = {}

    def add(self, request: dict) -> int:
        """Add the frames of one request; returns how many were added."""
        # Images stay at the size they came in (a dataset's 256×256 frames): they are resized on the accelerator,
        # batch by batch, with PIL's bytes.
        inputs = self.policy.transforms.inputs(request, resize_images=False)
        inputs.pop("batched")
        prompts = _request_prompts(request, inputs["state"].shape[0])
        for prompt in dict.fromkeys(prompts):
            rows = np.flatnonzero(np.asarray([p == prompt for p in prompts]))
            for start in range(0, len(rows), self.batch_size):
                self._add_rows(prompt, inputs, rows[start : start + self.batch_size])
        return len(prompts)

    def _add_rows(self, prompt: str, inputs: dict, rows: np.ndarray) -> None:
        # Pad to the batch size with copies of the first row at weight 0: one compiled program for every batch.
        padded = np.concatenate([rows, np.full(self.batch_size - len(rows), rows[0])])
        weights = (np.arange(self.batch_size) < len(rows)).astype(np.float32)
        batch = self.policy.resize_images(jax.tree.map(lambda x: x[padded], inputs))
        max_token_len = self.policy.model.config.max_token_len
        observation = observation_from_inputs(batch, max_token_len, compact=not self.exact_padding, convert_uint8=False)
        sums = self._sums(self._state, observation, jnp.asarray(weights), self.policy.layer_weights, self._pixel_values)
        entry = self.running.get(prompt)
        if entry is None:
            mask = batch["tokenized_prompt_mask"][0]
            self.running[prompt] = _Running(sums, len(rows), batch["tokenized_prompt"][0], int(mask.sum()))
        else:
            entry.sums = entry.sums + sums
            entry.frames += len(rows)

    def latents(self, slots: int | None = None, metadata: dict | None = None) -> dict[str, TextLatent]:
        """Per prompt: mean states over the frames added, at the real prompt tokens (default) or the first ``slots``
        slots (the paper used 9; slots past the prompt hold its padding tokens' states, as in the paper)."""
        return {prompt: self.latent(prompt, slots, metadata) for prompt in self.running}

    def latent(self, prompt: str, slots: int | None = None, metadata: dict | None = None) -> TextLatent:
        entry = self.running[prompt]
        width = entry.sums.shape[1]
        count = entry.num_tokens if slots is None else slots
        if not 1 <= count <= width:
            raise ValueError(f"slots must be between 1 and the model's {width} prompt slots, got {slots}")
        if count > entry.num_tokens and not self.exact_padding:
            raise ValueError(
                f"slots={count} reaches past the {entry.num_tokens} real tokens of {prompt!r}: padding states depend "
                "on the prefix layout; capture with LatentCapture(..., exact_padding=True) to read them as the paper"
            )
        mean = np.asarray(entry.sums)[:, :count] / entry.frames
        meta = {**(metadata or {}), "frames": entry.frames, "num_prompt_tokens": entry.num_tokens, "slots": count}
        return TextLatent(mean.astype(np.float32), entry.token_ids[:count], prompt, meta)


def _request_prompts(request: dict, batch: int) -> list[str]:
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return [prompt] * batch
    return [str(p) for p in prompt]


# ------------------------------------------------------------------------------------------- provenance
def checkpoint_fingerprint(checkpoint_dir: str | pathlib.Path) -> str:
    """sha256 over the names and sizes of every file under ``params/`` plus the bytes of its small (< 1 MiB) files
    (orbax metadata and manifests): identifies a checkpoint without reading gigabytes of weights."""
    params = pathlib.Path(checkpoint_dir) / "params"
    digest = hashlib.sha256()
    for path in sorted(p for p in params.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(params)}\0{size}\0".encode())
        if size < 1 << 20:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def provenance(policy: Policy) -> dict[str, Any]:
    """What a latent depends on besides its frames: checkpoint, config, norm stats, arithmetic, version."""
    from textlatent.checkpoint import norm_stats, resolve_checkpoint

    checkpoint = policy.metadata.get("checkpoint")
    fingerprint = checkpoint_fingerprint(resolve_checkpoint(checkpoint)) if checkpoint else None
    model = policy.model.config
    return {
        "checkpoint": checkpoint,
        "checkpoint_fingerprint": fingerprint,
        "config": policy.config.name,
        "paligemma_variant": model.paligemma_variant,
        "norm_stats_fingerprint": norm_stats.fingerprint(policy.transforms.norm_stats),
        "dtype": model.dtype,
        "layers": "residual stream entering Gemma blocks 0..L-1 (layer 0 = embeddings)",
        "textlatent_version": textlatent.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def latent_file_name(prompt: str) -> str:
    """``put the bowl on the plate`` → ``put_the_bowl_on_the_plate.safetensors`` (the paper's task keys)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", prompt.strip().replace(" ", "_")).strip("_.")
    return (name[:200] or "task") + ".safetensors"


# ------------------------------------------------------------------------------------------- from live frames
def capture_observations(
    policy: Policy, observations: Iterable[dict], *, batch_size: int = 32, slots: int | None = None
) -> dict[str, TextLatent]:
    """Latents from live observations (requests as sent to the policy, e.g. recorded during rollouts), per prompt."""
    capture = LatentCapture(policy, batch_size=batch_size, exact_padding=slots is not None)
    pending: list[dict] = []
    for obs in observations:
        pending.append(obs)
        if len(pending) == batch_size:
            capture.add(_stack_requests(pending))
            pending = []
    if pending:
        capture.add(_stack_requests(pending))
    if not capture.running:
        raise ValueError("no observations were given")
    return capture.latents(slots, {**provenance(policy), "source": "observations"})


def _stack_requests(requests: Sequence[dict]) -> dict:
    keys = [k for k in requests[0] if k != "prompt"]
    out = {k: np.stack([np.asarray(r[k]) for r in requests]) for k in keys}
    out["prompt"] = [r["prompt"] for r in requests]
    return out


# ------------------------------------------------------------------------------------------- from a dataset
@dataclasses.dataclass
class CaptureResult:
    written: dict[str, pathlib.Path]
    skipped: dict[str, pathlib.Path]
    frames: int
    seconds: float


def capture_dataset(
    policy: Policy,
    dataset,
    out_dir: str | pathlib.Path,
    *,
    tasks: Sequence[str | int] | None = None,
    episodes_per_task: int | None = 20,
    frames: str | slice | range | None = "0:120",
    batch_size: int = 32,
    slots: int | None = None,
    key_map: dict | None = None,
    resume: bool = True,
    progress: bool = True,
) -> CaptureResult:
    """Capture one latent per task of a LeRobot dataset into ``out_dir/<prompt>.safetensors``.

    Defaults are the paper's: the first 20 episodes of each task, frames 0–119. Resumable at episode granularity:
    after each episode the running sums go to ``<name>.partial.safetensors``; a rerun continues from there, and
    tasks whose latent already exists (for this checkpoint and settings) are skipped.
    """
    import time

    from tqdm.auto import tqdm

    from textlatent.data import libero_observation

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_names = [_task_name(dataset, t) for t in tasks] if tasks else list(dataset.tasks.values())
    base_meta = {
        **provenance(policy),
        "dataset": str(getattr(dataset, "source", dataset.root)),
        "episodes_per_task": episodes_per_task,
        "frame_range": None if frames is None else str(frames),
    }
    settings = {k: base_meta[k] for k in ("checkpoint_fingerprint", "norm_stats_fingerprint", "dtype", "frame_range")}
    settings["episodes_per_task"] = episodes_per_task
    plan = {
        task: dataset.select(tasks=[task], episodes_per_task=episodes_per_task, frames=frames) for task in task_names
    }
    written, skipped = {}, {}
    total = sum(len(sel.frame_indices) for selection in plan.values() for sel in selection)
    bar = tqdm(total=total, unit="frame", desc="capture", disable=not progress)
    start, counted = time.perf_counter(), 0
    for task, selection in plan.items():
        path = out_dir / latent_file_name(task)
        partial = path.with_name(path.name.replace(".safetensors", ".partial.safetensors"))
        if path.exists() and resume:
            _check_settings(path, TextLatent.load(path).metadata, settings)
            skipped[task] = path
            bar.update(sum(len(s.frame_indices) for s in selection))
            continue
        capture = LatentCapture(policy, batch_size=batch_size, exact_padding=slots is not None)
        done: list[int] = []
        if partial.exists() and resume:
            done = _restore_partial(capture, partial, task, settings)
        for sel in selection:
            if sel.episode_index in done:
                bar.update(len(sel.frame_indices))
                continue
            for batch in dataset.iter_frames([sel], batch_size=batch_size):
                n = capture.add(libero_observation(batch, key_map))
                bar.update(n)
                counted += n
            done.append(sel.episode_index)
            _save_partial(capture, partial, task, done, settings)
        meta = {**base_meta, "episodes": done}
        capture.latent(task, slots, meta).save(path)
        partial.unlink(missing_ok=True)
        written[task] = path
    bar.close()
    return CaptureResult(written, skipped, counted, time.perf_counter() - start)


def _task_name(dataset, task: str | int) -> str:
    if isinstance(task, str):
        return task  # unknown strings are reported (with close matches) by dataset.select
    if task not in dataset.tasks:
        raise ValueError(f"task index {task} does not exist; this dataset has task indices {sorted(dataset.tasks)}")
    return dataset.tasks[task]


def _check_settings(path: pathlib.Path, metadata: dict, settings: dict) -> None:
    differing = {k: (metadata.get(k), v) for k, v in settings.items() if metadata.get(k) != v}
    if differing:
        details = "; ".join(f"{k}: file {old!r} vs now {new!r}" for k, (old, new) in differing.items())
        raise LatentFileError(
            f"{path} was captured with other settings ({details}); use another --out directory, or --no-resume "
            "to capture it again"
        )


def _save_partial(capture: LatentCapture, path: pathlib.Path, task: str, done: list[int], settings: dict) -> None:
    from safetensors.numpy import save_file

    entry = capture.running.get(task)
    if entry is None:  # an episode contributed no frame
        return
    header = {"task": task, "episodes_done": done, "frames": entry.frames, "num_tokens": entry.num_tokens, **settings}
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {"sums": np.asarray(entry.sums), "token_ids": np.asarray(entry.token_ids)},
        str(tmp),
        metadata={"textlatent_partial": json.dumps(header)},
    )
    tmp.replace(path)


def _restore_partial(capture: LatentCapture, path: pathlib.Path, task: str, settings: dict) -> list[int]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        header = json.loads((f.metadata() or {}).get("textlatent_partial", "{}"))
        sums, token_ids = f.get_tensor("sums"), f.get_tensor("token_ids")
    if header.get("task") != task:
        raise LatentFileError(f"{path} holds a partial capture of {header.get('task')!r}, not {task!r}")
    _check_settings(path, header, settings)
    capture.running[task] = _Running(jnp.asarray(sums), int(header["frames"]), token_ids, int(header["num_tokens"]))
    logger.info("resuming %r after %d episodes (%d frames)", task, len(header["episodes_done"]), header["frames"])
    return [int(e) for e in header["episodes_done"]]
