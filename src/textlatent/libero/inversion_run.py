"""Action inversion on LIBERO (`textlatent invert`): every policy call of an episode also inverts its plan to noise,
reconstructs it and (optionally) regenerates it under an edited prompt or steering, through the server's `inversion`
request option.

* open loop: the original plans are executed; per chunk the reconstruction (and edit) error is recorded.
* closed loop: from the same scene seed and the same sampling noise per policy call, one episode executes the original
  plans, one the reconstructed plans, and one the edited plans (if an edit is given); the videos are put side by side.

Outputs in the run directory: `chunks.csv` (one row per policy call), `episodes.csv`, `results.json`,
`mse_per_chunk.png` and, per trial, `videos/trialNN.mp4`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textlatent.libero.client import PolicyClient
from textlatent.libero.evaluation import episode_seed
from textlatent.libero.protocol import NUM_STEPS_WAIT, REPLAN_STEPS, EpisodeLoop, max_steps_for, policy_request
from textlatent.libero.sim import SimTask, suite_tasks

VARIANTS = ("original", "reconstructed", "edited")
MODES = ("open-loop", "closed-loop")
METRIC_NAMES = ("mse_model", "mse_model_real", "mse_robot")


@dataclass(frozen=True)
class InversionSettings:
    suite: str = "libero_goal_ood"
    task: int = 7
    mode: str = "closed-loop"
    method: str = "fixed_point"
    invert_to: float = 1.0
    edit_prompt: str | None = None
    edit_steering: str | None = None  # tli | tei | tei_tli: the paper's triple for the task
    window: tuple[int, int] | None = None  # policy calls [first, end) in which the edit applies
    trials: int = 1
    seed: int = 7
    max_steps: int | None = None
    success_check: str = "paper"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be open-loop or closed-loop, got {self.mode!r}")
        if self.method not in ("fixed_point", "naive"):
            raise ValueError(f"method must be fixed_point or naive, got {self.method!r}")
        if self.edit_steering not in (None, "tli", "tei", "tei_tli"):
            raise ValueError(f"edit steering must be tli, tei or tei_tli, got {self.edit_steering!r}")
        if self.window is not None and not 0 <= self.window[0] < self.window[1]:
            raise ValueError(f"window must be FIRST END with 0 ≤ FIRST < END, got {self.window}")
        if self.trials < 1:
            raise ValueError(f"trials must be ≥ 1, got {self.trials}")

    @property
    def has_edit(self) -> bool:
        return self.edit_prompt is not None or self.edit_steering is not None

    def variants(self) -> tuple[str, ...]:
        if self.mode == "open-loop":
            return ("original",)
        return ("original", "reconstructed", "edited") if self.has_edit else ("original", "reconstructed")


def inversion_field(settings: InversionSettings, task: SimTask, call: int) -> dict[str, Any]:
    field: dict[str, Any] = {"method": settings.method, "step": call, "invert_to": settings.invert_to}
    if settings.edit_prompt is not None:
        field["edit_prompt"] = settings.edit_prompt
    if settings.edit_steering is not None:
        from textlatent.latents.registry import lookup

        field["steering"] = {**lookup(task.prompt).steering(settings.edit_steering), "step": call}
    if settings.window is not None:
        field["window"] = list(settings.window)
    return field


def call_noise(seed: int, trial: int, call: int, horizon: int, width: int) -> np.ndarray:
    """The sampling noise of one policy call: the same in every variant, so they differ only by what they execute."""
    return np.random.default_rng([seed, trial, call]).standard_normal((horizon, width), dtype=np.float32)


def run_variant(
    env: Any,
    client: PolicyClient,
    task: SimTask,
    settings: InversionSettings,
    variant: str,
    trial: int,
    max_steps: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """One episode executing `variant`'s plans. Returns (episode row, chunk rows, agent-view frames)."""
    from textlatent.libero.video import upright

    horizon = int(client.metadata.get("action_horizon", 50))
    width = int(client.metadata.get("model_action_dim", 32))
    seed = episode_seed(settings.seed, task.task_id, trial)
    started = time.monotonic()
    obs = env.reset(trial, seed)
    frames = [upright(obs["agentview_image"])]
    loop = EpisodeLoop(max_steps=max_steps, num_steps_wait=NUM_STEPS_WAIT, replan_steps=REPLAN_STEPS)
    chunks = []
    while not loop.finished:
        if loop.wants_policy():
            call = loop.queries
            request = policy_request(obs, task.prompt)
            request["noise"] = call_noise(settings.seed, trial, call, horizon, width)
            request["inversion"] = inversion_field(settings, task, call)
            reply = client.infer(request)
            inversion = reply["inversion"]
            plans = {
                "original": np.asarray(reply["actions"]),
                "reconstructed": np.asarray(inversion["reconstructed_actions"]),
                "edited": np.asarray(inversion.get("edited_actions", reply["actions"])),
            }
            executed = plans[variant]
            row = {"variant": variant, "trial": trial, "call": call, "env_step": loop.t}
            for kind in ("reconstruction", "edit"):
                metrics = (inversion.get("metrics") or {}).get(kind) or {}
                for name in METRIC_NAMES:
                    row[f"{kind}_{name}"] = metrics.get(name, "")
            row["edit_applied"] = bool(inversion.get("edit_applied", False))
            steps = loop.replan_steps
            row["executed_vs_original_max_abs"] = float(np.max(np.abs(executed[:steps] - plans["original"][:steps])))
            chunks.append(row)
            loop.load(executed)
        action = loop.next_action()
        obs, _reward, done, _info = env.step(np.asarray(action).tolist())
        frames.append(upright(obs["agentview_image"]))
        loop.record_step(bool(done))
    episode = {
        "variant": variant,
        "trial": trial,
        "seed": seed,
        "success": int(loop.success),
        "steps": loop.t,
        "policy_calls": loop.queries,
        "wall_seconds": round(time.monotonic() - started, 3),
    }
    return episode, chunks, frames


def side_by_side(path: Path, videos: Mapping[str, list[np.ndarray]], fps: int = 20) -> Path:
    """One mp4 with each variant's agent view in a column (a finished episode holds its last frame), labelled."""
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    length = max(len(frames) for frames in videos.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7, macro_block_size=16
    )
    try:
        for i in range(length):
            tiles = []
            for name, frames in videos.items():
                tile = Image.fromarray(frames[min(i, len(frames) - 1)])
                ImageDraw.Draw(tile).text((6, 4), name, fill=(255, 255, 255))
                tiles.append(np.asarray(tile))
            writer.append_data(np.concatenate(tiles, axis=1))
    finally:
        writer.close()
    return path


def plot_chunks(path: Path, chunks: Sequence[Mapping[str, Any]]) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for row in chunks:
        for kind in ("reconstruction", "edit"):
            value = row.get(f"{kind}_mse_robot")
            if value not in ("", None):
                series.setdefault((kind, row["variant"], row["trial"]), []).append((row["call"], float(value)))
    for (kind, variant, trial), points in sorted(series.items()):
        calls, values = zip(*points, strict=True)
        ax.plot(calls, np.maximum(values, 1e-16), marker=".", label=f"{kind} ({variant} run, trial {trial})")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("policy call in the episode")
    ax.set_ylabel("MSE in robot action space (7-D)")
    ax.set_title("per-chunk error of reconstructed / edited plans vs the original")
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_inversion(
    settings: InversionSettings,
    *,
    address: str,
    out: str | os.PathLike[str],
    api_key: str | None = None,
    render: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    from textlatent.libero.sim import LiberoEnv, prepare

    out = Path(out)
    if (out / "results.json").exists():
        raise FileExistsError(f"{out} already holds an inversion run; choose a new --out")
    tasks = suite_tasks(settings.suite, settings.success_check)
    if not 0 <= settings.task < len(tasks):
        raise ValueError(f"{settings.suite} has tasks 0..{len(tasks) - 1}, not {settings.task}")
    task = tasks[settings.task]
    if settings.edit_steering is not None:
        inversion_field(settings, task, 0)  # the task must have a registered triple: fail before the simulator
    max_steps = settings.max_steps or max_steps_for(settings.suite)
    prepare(render, settings.success_check)
    out.mkdir(parents=True, exist_ok=True)
    episodes, chunks = [], []
    env = LiberoEnv(task, workdir=out / "bddl", initial_states="seeded")
    runs = [(trial, variant) for trial in range(settings.trials) for variant in settings.variants()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runs), unit="episode", desc="inversion")
    try:
        with PolicyClient(address, api_key=api_key) as client:
            for trial in range(settings.trials):
                videos = {}
                for variant in settings.variants():
                    episode, rows, frames = run_variant(env, client, task, settings, variant, trial, max_steps)
                    episodes.append(episode)
                    chunks += rows
                    videos[variant] = frames
                    if bar is not None:
                        bar.update(1)
                side_by_side(out / "videos" / f"trial{trial:02d}.mp4", videos)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    _write_csv(out / "chunks.csv", chunks)
    _write_csv(out / "episodes.csv", episodes)
    plot_chunks(out / "mse_per_chunk.png", chunks)
    results = {
        "settings": dataclasses.asdict(settings),
        "task": task.prompt,
        "success": {
            variant: float(np.mean([e["success"] for e in episodes if e["variant"] == variant]))
            for variant in settings.variants()
        },
        "reconstruction_mse_robot": _summary([r["reconstruction_mse_robot"] for r in chunks]),
        "reconstruction_mse_model_real": _summary([r["reconstruction_mse_model_real"] for r in chunks]),
        "edit_mse_robot": _summary([r["edit_mse_robot"] for r in chunks if r["edit_applied"]]),
        "policy_calls": len(chunks),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _summary(values: Sequence[Any]) -> dict[str, float] | None:
    numbers = np.array([float(v) for v in values if v not in ("", None)], np.float64)
    if numbers.size == 0:
        return None
    return {"mean": float(numbers.mean()), "max": float(numbers.max()), "count": int(numbers.size)}


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
